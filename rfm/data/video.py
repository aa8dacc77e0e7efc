"""MP4 video for camera streams via PyAV: an encoder that appends many episodes to one file, and a decoder
that returns one episode's frames by timestamp (h264, or AV1 as lerobot writes it)."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from rfm.data.errors import DatasetError

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder at its default level; keep errors only

import av

logging.getLogger("libav").setLevel(logging.ERROR)

# yuv420p with a keyframe every 2 frames (cheap random access), as lerobot writes. h264 first: the SVT-AV1 in
# PyAV's wheels (libSvtAv1Enc 4.1) can deadlock in its end-of-stream flush with several encoders in one process
# (seen here: a notebook hung for 600 s in svt_av1_enc_get_packet). h264 decoded 1.1-5x faster, in files 0.7-1.6x
# AV1's size (bench/data_throughput.py). lerobot reads both; AV1, lerobot's own default, stays one flag away.
ENCODER_PREFERENCE = ("libx264", "libsvtav1", "mpeg4")


def available_encoders() -> list[str]:
    out = []
    for name in ENCODER_PREFERENCE:
        try:
            av.codec.Codec(name, "w")
            out.append(name)
        except Exception:  # noqa: BLE001, S110 - PyAV raises several types for a missing codec
            pass
    return out


def resolve_encoder(vcodec: str | None) -> str:
    """'av1' -> libsvtav1, 'h264' -> libx264, None/'auto' -> the first available of ENCODER_PREFERENCE."""
    alias = {"av1": "libsvtav1", "h264": "libx264", "auto": None}
    name = alias.get(vcodec, vcodec) if vcodec else None
    have = available_encoders()
    if name is None:
        if not have:
            raise RuntimeError(f"PyAV here has none of the video encoders {ENCODER_PREFERENCE}")
        return have[0]
    if name not in have:
        raise ValueError(f"video codec {vcodec!r} is not available in this PyAV build; available: {have}")
    return name


# the codec name an mp4 stream reports (lerobot's `video.codec`) -> the encoder that writes it
ENCODER_FOR_CODEC = {"av1": "libsvtav1", "h264": "libx264", "mpeg4": "mpeg4"}


def encoder_for_dataset(features: dict, vcodec: str | None) -> str:
    """The encoder for episodes appended to a dataset: `vcodec` if given, else the codec its videos are in, so
    one dataset keeps one codec (and `info.json`'s `video.codec` stays true); the default if that one is missing."""
    if vcodec:
        return resolve_encoder(vcodec)
    codecs = sorted({(ft.get("info") or {}).get("video.codec") for ft in features.values()
                     if ft.get("dtype") == "video"} - {None})
    want = ENCODER_FOR_CODEC.get(codecs[0]) if len(codecs) == 1 else None
    if want and want in available_encoders():
        return want
    enc = resolve_encoder(None)
    if codecs:
        logging.getLogger(__name__).warning(
            "the dataset's videos are in %s, which this PyAV cannot encode; appended episodes are written in %s "
            "(readers decode per file)", "/".join(codecs), enc)
    return enc


def codec_options(encoder: str) -> dict[str, str]:
    if encoder == "libsvtav1":
        return {"g": "2", "crf": "30", "preset": "12"}
    if encoder == "libx264":
        return {"g": "2", "crf": "23", "preset": "veryfast"}
    return {"g": "2", "qscale": "3"}


class VideoFileWriter:
    """Appends (T, H, W, 3) uint8 frame blocks to one mp4; frame n has timestamp n / fps."""

    def __init__(self, path: str | Path, fps: int, height: int, width: int, encoder: str) -> None:
        self.path = Path(path)
        self.fps = int(fps)
        self.height, self.width = int(height), int(width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream(encoder, rate=self.fps, options=codec_options(encoder))
        self._stream.pix_fmt = "yuv420p"
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.time_base = Fraction(1, self.fps)
        self.num_frames = 0
        self.bytes_written = 0  # muxed packet bytes (the file on disk lags behind the muxer's buffers)

    def write(self, frames: np.ndarray) -> tuple[float, float]:
        """Encode frames; returns (from_timestamp, to_timestamp) of this block in the file, in seconds."""
        start = self.num_frames
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = Fraction(1, self.fps)
            for packet in self._stream.encode(frame):
                self.bytes_written += packet.size
                self._container.mux(packet)
            self.num_frames += 1
        return start / self.fps, self.num_frames / self.fps

    def size_bytes(self) -> int:
        return max(self.bytes_written, self.path.stat().st_size if self.path.exists() else 0)

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def abort(self) -> None:
        """Close without flushing (the file is about to be thrown away)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001, S110 - a half-written file may fail to close; it is deleted next
                pass
            self._container = None


def probe(path: str | Path, field: str | None = None) -> dict:
    """Stream facts of an mp4 (lerobot's `info` keys plus frame count and duration); clear error if unreadable."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DatasetError(path, field, "the file has no video stream")
            s = c.streams.video[0]
            duration = float(s.duration * s.time_base) if s.duration is not None else (
                float(c.duration / av.time_base) if c.duration else 0.0)
            return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec.canonical_name,
                    "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False,
                    "video.fps": round(float(s.base_rate or s.average_rate or 0)), "video.channels": 3,
                    "has_audio": bool(c.streams.audio), "frames": int(s.frames), "duration": duration}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(path, field, "video file is missing") from None
    except (av.error.FFmpegError, OSError) as e:
        raise DatasetError(path, field, f"cannot open the video (truncated or corrupt mp4?): {e}") from None


def decode_segment(path: str | Path, start_ts: float, n_frames: int, fps: float, field: str | None = None,
                   timestamps: np.ndarray | None = None) -> np.ndarray:
    """Frames at start_ts + timestamps[i] (default i / fps) for i < n_frames -> (n_frames, H, W, 3) uint8.

    Each query takes the decoded frame nearest in time; a query with no frame within half a frame period
    (missing or truncated video) raises DatasetError naming the file and field.
    """
    rel = np.arange(n_frames) / fps if timestamps is None else np.asarray(timestamps, np.float64)
    query = start_ts + rel
    tol = 0.5 / fps
    times: list[float] = []
    images: list[np.ndarray] = []
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            if start_ts > tol:
                c.seek(int(max(0.0, start_ts - tol) / s.time_base), stream=s, backward=True, any_frame=False)
            end = query[-1] + tol if n_frames else start_ts
            for i, frame in enumerate(c.decode(s)):
                t = frame.time if frame.time is not None else i / fps
                if t < query[0] - tol:
                    continue
                if t > end:
                    break
                times.append(t)
                images.append(frame.to_ndarray(format="rgb24"))
    except FileNotFoundError:
        raise DatasetError(path, field, "video file is missing") from None
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise DatasetError(path, field, f"cannot decode the video (truncated or corrupt mp4?): {e}") from None
    if n_frames == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    if not times:
        raise DatasetError(path, field, f"no frames decoded in [{query[0]:.3f}, {query[-1]:.3f}] s "
                                        f"(video truncated or timestamps wrong)")
    t_arr = np.asarray(times)
    nearest = np.abs(query[:, None] - t_arr[None, :]).argmin(1)
    gap = np.abs(t_arr[nearest] - query)
    if (gap > tol).any():
        bad = int(np.argmax(gap > tol))
        raise DatasetError(path, field, f"frame {bad} at t={query[bad]:.4f} s is missing: {len(times)} frames decoded "
                                        f"between {t_arr.min():.3f} and {t_arr.max():.3f} s, {n_frames} expected "
                                        f"(video truncated or timestamps wrong)")
    return np.stack([images[j] for j in nearest])
