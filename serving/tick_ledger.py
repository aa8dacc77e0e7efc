"""Which of a robot's ticks the recorder already has, so a batch sent again is recorded once.

A robot cannot tell a batch of ticks the server never got from one whose answer was lost (a read timeout, a
connection cut on the way back), so it sends it again; recorded as it came, its ticks appeared twice. The SDK's
TickRecorder numbers its ticks within each episode and names its stream (one per recorder) and episode; the
ledger keeps, per recorded session, the last tick and whether that episode has ended. Two robots sending ticks
under one session id at once (a copied example's "cell-1") are told apart by their streams: one of them is
recorded under a session of its own (`route`), where each batch would otherwise have ended the other's episode.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from serving.codec import Tick, TicksRequest

MAX_STREAMS = 65536  # sessions remembered (the oldest forgotten first): a bound on the ledger's memory
DISPLACED = 8  # streams remembered per session that a newer stream displaced (a bound per session)


@dataclass(frozen=True)
class _Seen:
    stream: str
    episode: int
    index: int  # of the last tick recorded (-1: none yet)
    ended: bool  # that episode's end is recorded


class TickLedger:
    def __init__(self) -> None:
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._routes: OrderedDict[tuple[str, str], str] = OrderedDict()  # (session, stream) -> where it is recorded
        self._displaced: OrderedDict[str, list[str]] = OrderedDict()  # session -> streams a newer one took it from

    def route(self, key: str, req: TicksRequest) -> tuple[str, bool]:
        """The session to record this batch under, and whether its stream was just found to be a second robot's.
        A new stream for a session is a restarted robot (its old episode ends as "restart"), until the stream it
        displaced posts again: that one is alive, another robot using the same session id, and is recorded from
        then on as `key~stream` (its episode cut once, where the other robot's ticks began)."""
        if req.stream is None:
            return key, False
        routed = self._routes.get((key, req.stream))
        if routed is not None:
            self._routes.move_to_end((key, req.stream))
            return routed, False
        if req.stream not in self._displaced.get(key, ()):
            return key, False
        routed = self._routes[(key, req.stream)] = f"{key}~{req.stream[:8]}"
        while len(self._routes) > MAX_STREAMS:
            self._routes.popitem(last=False)
        return routed, True

    def fresh(self, key: str, req: TicksRequest) -> list[tuple[int, Tick]] | None:
        """The (position, tick) pairs of the batch not recorded yet; None when the batch has nothing new: its ticks,
        and its episode's end with them, are recorded already, or it is an end of an episode already over."""
        ticks = list(enumerate(req.ticks))
        seen = self._seen.get(key)
        if seen is None or req.stream is None or req.stream != seen.stream:
            return ticks
        episode = req.episode or 0
        if not ticks:
            return None if req.episode_end and (episode < seen.episode or (episode == seen.episode and seen.ended)) \
                else ticks
        new = [(i, t) for i, t in ticks if t.index is None or (episode, t.index) > (seen.episode, seen.index)]
        return new or None

    def left_open(self, key: str, req: TicksRequest) -> str | None:
        """Why the session's recorded episode, which the robot never ended, ends before this batch: the robot began
        its next episode ("next_episode": that episode's end was lost) or restarted ("restart": a new stream).
        None where the batch goes on with it. Only for a batch `fresh` returned."""
        seen = self._seen.get(key)
        if seen is None or seen.ended or req.stream is None:
            return None
        if req.stream != seen.stream:
            return "restart"
        return "next_episode" if (req.episode or 0) > seen.episode else None

    def note(self, key: str, req: TicksRequest, recorded: list[Tick]) -> None:
        """The ticks of `req` just recorded (and its episode end, if it had one)."""
        if req.stream is None or not (recorded or req.episode_end):
            return
        seen = self._seen.get(key)
        if seen is not None and seen.stream != req.stream:  # a restart, or another robot: its next batch tells
            shown = self._displaced.setdefault(key, [])
            shown[:] = [*shown, seen.stream][-DISPLACED:]
            self._displaced.move_to_end(key)
            while len(self._displaced) > MAX_STREAMS:
                self._displaced.popitem(last=False)
        last = recorded[-1].index if recorded and recorded[-1].index is not None else (seen.index if seen else -1)
        self._seen[key] = _Seen(req.stream, req.episode or 0, last, req.episode_end)
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_STREAMS:
            self._seen.popitem(last=False)
