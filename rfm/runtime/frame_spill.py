"""Camera frames of an open episode kept on disk instead of in memory (the recorder past its memory budget).

A fleet of field robots (three 128 x 128 cameras at 50 Hz: 7 MB a second each) fills a recorder's 1 GB of open
episodes in under a minute; cutting episodes there split every long one. Frames of the sessions holding the most
memory move to one append-only file per session, raw (a frame is written once and read back once, when its
episode is saved), and are read back through a memory map.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SPILL_DIR = ".rfm-open-episodes"  # in the recording; removed at start (open episodes do not outlive their server)


class FrameSpill:
    """One session's frames ({camera: (H, W, 3) uint8}, cameras in one order) appended to one file."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
        self.path, self.shapes = Path(path), dict(shapes)
        self.sizes = [int(np.prod(s)) for s in self.shapes.values()]
        self.frame_bytes = sum(self.sizes)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 (held open while the episode is)

    def append(self, images: dict[str, np.ndarray]) -> int:
        """Write one frame; its slot. On an OSError (a full disk) nothing of the frame is kept and it is raised."""
        try:
            for cam in self.shapes:
                self._file.write(memoryview(np.ascontiguousarray(images[cam], np.uint8)).cast("B"))
            self._file.flush()
        except OSError:
            self._file.seek(self.count * self.frame_bytes)
            self._file.truncate()
            raise
        self.count += 1
        return self.count - 1

    def frames(self) -> list[dict[str, np.ndarray]]:
        """Every frame written, in order, as read-only views of the file (valid until remove())."""
        if self.count == 0:
            return []
        data = np.memmap(self.path, np.uint8, "r", shape=(self.count, self.frame_bytes))
        out, start = [], 0
        views: dict[str, np.ndarray] = {}
        for (cam, shape), size in zip(self.shapes.items(), self.sizes):
            views[cam] = data[:, start:start + size].reshape(self.count, *shape)
            start += size
        for i in range(self.count):
            out.append({cam: v[i] for cam, v in views.items()})
        return out

    def remove(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def clear_spill(root: Path) -> None:
    """Remove what a server that stopped without closing its episodes left (they ended with it)."""
    shutil.rmtree(Path(root) / SPILL_DIR, ignore_errors=True)
