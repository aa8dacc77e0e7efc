"""argparse types the commands share: comma-separated lists of names and of whole numbers, checkpoint paths."""

from __future__ import annotations

import argparse
from pathlib import Path

BUNDLED = ("default", "base")  # checkpoints shipped in the repository's checkpoints/ directory


def checkpoint_dir(text: str) -> str:
    """A checkpoint path as given where it exists; else a bundled one's name (`default`, `checkpoints/base`) taken
    from the checkpoints/ beside the rfm package, so the guides' `--init checkpoints/default` works from any
    directory. Anything else passes unchanged (the command names it when it is missing)."""
    path = Path(text)
    if path.exists() or path.name not in BUNDLED or str(path.parent) not in (".", "checkpoints"):
        return text
    import rfm

    bundled = Path(rfm.__file__).resolve().parents[1] / "checkpoints" / path.name
    return str(bundled) if bundled.is_dir() else text


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def ints(text: str) -> list[int]:
    """'4,8' -> [4, 8]; anything else is an argparse error naming the text."""
    try:
        return [int(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers, comma-separated (e.g. 4,8)") from None


def positive_int(text: str) -> int:
    """A whole number >= 1 (threads, workers, robots, steps); anything else is an argparse error naming the text."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value
