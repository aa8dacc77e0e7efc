"""Progress bars: tqdm's notebook widget where Jupyter can draw it, else its text bar (no IProgress warning)."""

from __future__ import annotations

import importlib.util


def progress_bar():
    """The tqdm class to use: `tqdm.auto`'s widget needs ipywidgets in the kernel; without it `tqdm.auto` warns on
    every bar and falls back to text anyway, so text it is."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm
