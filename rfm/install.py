"""How to install one of rfm's extras, for the errors that name one.

rfm installs from its repository or from a wheel built from it (`make wheel`), not from PyPI: there the name `rfm`
belongs to an unrelated project, and `pip install 'rfm[edge]'` would install that instead. So a hint names the
checkout this rfm runs from, or the wheel it came from.
"""

from __future__ import annotations

from pathlib import Path

from rfm._version import __version__


def source() -> str:
    """The checkout this rfm runs from (an editable install), else the name of the wheel `make wheel` builds."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return str(checkout)
    return f"rfm-{__version__}-py3-none-any.whl"


def pip_install(extras: str) -> str:
    """`pip install '<source>[extras]'`, e.g. pip_install("edge,server")."""
    return f"pip install '{source()}[{extras}]'"
