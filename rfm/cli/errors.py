"""The command line's user error: printed as 'rfm COMMAND: error: ...' with exit code 2, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class CLIError(Exception):
    """A user error: printed as 'rfm: error: ...' with exit code 2, never as a traceback."""


def require_checkpoint(path: str | Path, flag: str = "") -> None:
    """CLIError naming the path (and the flag it came from) unless it is a checkpoint directory (has config.json)."""
    if not (Path(path) / "config.json").is_file():
        raise CLIError(f"{f'{flag} ' if flag else ''}{path}: not a checkpoint directory (no config.json)")
