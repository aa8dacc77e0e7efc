"""File modes for what rfm writes atomically: temp files and directories are created private (mkstemp 0600, mkdtemp
0700); once renamed into place they get the modes the process's umask gives a plain open or mkdir, so another user
(a non-root serving container mounting a checkpoint, a training job reading a recording) can read them."""

from __future__ import annotations

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
