"""How the SDK checks a server's TLS certificate (https:// and wss:// URLs): the system's trust store by default,
a CA bundle of one's own (a fleet's private CA), or an ssl.SSLContext; the same for HTTP and the WebSocket."""

from __future__ import annotations

import ssl
from pathlib import Path

Verify = bool | str | Path | ssl.SSLContext


def ssl_context(verify: Verify) -> ssl.SSLContext | None:
    """The context to hand httpx and websockets; None for their defaults (verify=True). `verify` a path: that CA
    bundle (a file, or a directory of hashed certificates); False: no check at all (a test bench only)."""
    if verify is True:
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if isinstance(verify, (str, Path)):
        path = Path(verify)
        if not path.exists():
            raise FileNotFoundError(f"verify={str(verify)!r}: no CA bundle there (expected a PEM file or a directory)")
        return ssl.create_default_context(**({"capath": str(path)} if path.is_dir() else {"cafile": str(path)}))
    raise TypeError(f"verify={verify!r}: expected True, False, a CA bundle path or an ssl.SSLContext")
