"""Optional API keys: loaded from a file (one per line), compared in constant time, identified by a hash."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

SCHEMES = ("bearer", "api-key")  # `Authorization: Bearer <key>` and openpi's `Authorization: Api-Key <key>`


class AuthError(Exception):
    """Missing or wrong API key (401)."""


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (for logs and the audit trail): 'key-' + 12 hex of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    """A set of accepted keys. `check(header)` returns the key id or raises AuthError."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("API key list is empty: expected at least one key")
        # Compare fixed-length digests, so neither timing nor length reveals anything about the keys.
        self._digests = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """One key per line; blank lines and lines starting with '#' are ignored."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: API key file not found")
        keys = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        short = [i for i, k in enumerate(keys) if len(k) < 16]
        if short:
            raise ValueError(f"{path}: key on non-comment line {short[0] + 1} is shorter than 16 characters")
        if not keys:
            raise ValueError(f"{path}: no API keys (expected one key per line)")
        return cls(keys)

    def check(self, authorization: str | None) -> str:
        if not authorization:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() not in SCHEMES or not key.strip():
            raise AuthError("malformed Authorization header: expected 'Bearer <key>' or 'Api-Key <key>'")
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = None
        for d, kid in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(d, digest):
                found = kid
        if found is None:
            raise AuthError("invalid API key")
        return found
