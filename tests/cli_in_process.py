"""`rfm ARGS` run in the test's own process: the same `main` a shell runs, its exit code and printed output, without
paying a Python and torch start-up per call (tests of the process itself start real subprocesses)."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

from rfm.cli.main import main


def rfm(*argv: str) -> SimpleNamespace:
    """returncode, stdout, stderr of `rfm *argv`; an uncaught exception fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
