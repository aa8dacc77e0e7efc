"""File modes for what rfm writes atomically: temp files and directories are created private (mkstemp 0600, mkdtemp
0700); once renamed into place they get the modes the process's umask gives a plain open or mkdir, so another user
(a non-root serving container mounting a checkpoint, a training job reading a recording) can read them."""

from __future__ import annotations

import getpass
import os
from pathlib import Path


def _process_umask() -> int:
    mask = os.umask(0o022)  # read by setting: put straight back
    os.umask(mask)
    return mask


UMASK = _process_umask()


def as_umask_allows(path: str | Path) -> None:
    """chmod `path` to what the umask gives a new directory (0o777) or file (0o666)."""
    path = Path(path)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~UMASK)


# Replacing a directory (a checkpoint, an export, a dataset) takes two renames: target -> .NAME.old-PID-*, then
# .NAME.tmp-PID-* -> target. A process killed between them (SIGKILL, power loss) leaves no directory at the target,
# the previous one in .old, and a killed writer leaves its half-written .tmp. Both are told apart from a live
# writer's by the PID and host in their name: the process is gone, or it is this process and not writing them now.
# Another host's are left alone: containers sharing a volume each number their processes from 1, so a reader in one
# (a server loading a checkpoint) took a trainer's temp directory in another for its own and deleted it mid-save.
# Runs are also locked (DirectoryLock) against a second writer.
_WRITING: set[Path] = set()  # this process's temp and old directories in use


def _host_tag() -> str:
    """'h' + 8 hex digits of this host's name: which machine or container wrote a temp or old directory."""
    import hashlib
    import socket

    return "h" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def writer_tag() -> str:
    """PID and host tag: names a file or directory this process writes, unique across containers on one volume."""
    return f"{os.getpid()}-{_host_tag()}"


def temp_dir_for(target: Path) -> Path:
    """A new private directory beside `target` to write its replacement into (see replace_dir)."""
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{writer_tag()}-", dir=target.parent))
    as_umask_allows(tmp)  # mkdtemp's 0700 would become the target's mode: unreadable to a server of another user
    _WRITING.add(tmp)
    return tmp


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished `tmp` (from temp_dir_for) in place of `target`; the previous one is removed after."""
    import shutil
    import uuid

    old = None
    try:
        if target.exists():
            old = target.parent / f".{target.name}.old-{writer_tag()}-{uuid.uuid4().hex[:8]}"
            _WRITING.add(old)
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        _WRITING.discard(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        _WRITING.discard(old)


def discard_temp_dir(tmp: Path) -> None:
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    _WRITING.discard(tmp)


def recover_interrupted(target: Path) -> Path | None:
    """Clean up after a writer of `target` that was killed: put back the previous directory if the target is
    missing, delete half-written temp directories and leftover old ones. The directory restored, if any."""
    import shutil

    restored = None
    if not target.parent.is_dir():
        return None
    for old in sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not is_abandoned(old, ".old-"):
            continue
        if restored is None and not target.exists():
            os.replace(old, target)  # the newest previous directory comes back
            restored = target
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        if is_abandoned(tmp, ".tmp-"):
            shutil.rmtree(tmp, ignore_errors=True)
    return restored


def is_abandoned(path: Path, marker: str) -> bool:
    """Left by a writer on this host that is gone: its PID (after `marker` in the name) is not running, or is this
    process, which is not using it."""
    if path in _WRITING:
        return False
    pid, _, rest = path.name.split(marker, 1)[1].partition("-")
    if not pid.isdigit():
        return False  # not ours (an older rfm named them without a PID): left alone
    host = rest.split("-", 1)[0]
    if len(host) == 9 and host[0] == "h" and all(c in "0123456789abcdef" for c in host[1:]) and host != _host_tag():
        return False  # another machine's or container's: its PIDs are not ours to check
    if int(pid) == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


_LOCKED: dict[str, str] = {}  # lock files this process holds -> holder (POSIX record locks do not refuse their own)


class LockHeld(FileExistsError):
    """The lock is held: `holder` says by whom (pid, host, since when)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class DirectoryLock:
    """An exclusive lock on a directory's work (a training run, a recording), held by this process until release()
    or its end, however it ends. A POSIX record lock (lockf): unlike flock, processes forked from the holder (data
    loader workers) do not hold it too, so a run killed with SIGKILL can be resumed at once. On a file system
    without locks, or on Windows, nothing is locked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """LockHeld naming the holder when another process (or this one) holds the lock."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            return
        key = str(self.path.resolve())
        if key in _LOCKED:
            raise LockHeld(_LOCKED[key] + ", in this process")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockHeld(holder) from None
        except OSError:  # no locks on this file system: go ahead unlocked
            os.close(fd)
            return
        import socket
        import time

        holder = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder + "\n").encode(), 0)
        self._fd = fd
        _LOCKED[key] = holder

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        _LOCKED.pop(str(self.path.resolve()), None)
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirectoryLock:  # noqa: PYI034
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def process_user() -> str:
    """Who this process runs as ("uid 10001 (rfm)"), for a permission error: in a container it is often not who owns
    the volume."""
    if not hasattr(os, "getuid"):  # Windows
        return f"user {os.environ.get('USERNAME', '?')}"
    try:
        return f"uid {os.getuid()} ({getpass.getuser()})"
    except (KeyError, OSError):  # a uid with no passwd entry (a container run as an arbitrary uid)
        return f"uid {os.getuid()}"
