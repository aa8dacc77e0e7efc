"""Run a function as a user without privileges, so a test of a permission error means something when the suite
runs as root (to whom file permissions do not apply)."""

from __future__ import annotations

import json
import os
import traceback

NOBODY = 65534


def run_unprivileged(fn, *args) -> dict:
    """{"value": repr of fn(*args)} or {"error": type name, "message": str}. As root: in a forked child that has
    dropped to uid/gid 65534 (it may not enter root's 0700 directories, pytest's tmp_path among them). As anyone
    else: here, since their own permissions already apply. Import what fn needs first: the child may not be allowed
    to read the Python it runs on (under /root)."""
    if os.geteuid() != 0:
        return _outcome(fn, args)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run, report, leave without running the parent's exit handlers
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = _outcome(fn, args)
        except BaseException:  # noqa: BLE001 - whatever happens, the parent gets an answer
            out = {"error": "ChildFailed", "message": traceback.format_exc()}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _outcome(fn, args) -> dict:
    try:
        return {"value": repr(fn(*args))}
    except Exception as e:  # noqa: BLE001 - the test asserts on which
        return {"error": type(e).__name__, "message": str(e)}
