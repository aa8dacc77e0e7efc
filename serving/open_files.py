"""Open files for a fleet: raise the process's soft limit to its hard one, and keep --max-connections under it.

Each robot's connection is a file descriptor; while recording, three: its WebSocket, the HTTP connection its
TickRecorder posts ticks on, and the file its open episode may spill to. Under the
soft limit many hosts still default to (1024: systemd services, containerd 2), 1,005 WebSockets ran the server out of
descriptors before --max-connections (1024) refused any: new connections were dropped without an answer and
/healthz failed with them, so a liveness probe would restart the server and cut every robot.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from serving.config import ServerConfig

log = logging.getLogger("rfm.serving")

RESERVE = 64  # descriptors for everything but robots: the model's files, logs, the audit log, a dataset being written


def raise_open_file_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now (None where there is none, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    # an unlimited hard limit still has a ceiling the kernel enforces (macOS: OPEN_MAX, 10240): try downwards
    wanted = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 65536, 10240]
    for target in (t for t in wanted if t > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            continue
    return soft


def fit_connections(config: ServerConfig) -> ServerConfig:
    """`config` with max_connections lowered to what the open-file limit holds (after raising it), with a warning
    saying how to raise the limit; unchanged where it fits."""
    limit = raise_open_file_limit()
    if limit is None:
        return config
    per_robot = 3 if config.record_dir else 1
    fits = max(1, (limit - RESERVE) // per_robot)
    if config.max_connections <= fits:
        return config
    log.warning("--max-connections %d does not fit this process's open-file limit (%d%s): at most %d WebSockets "
                "are accepted, the next get 503. Raise the limit (ulimit -n, systemd LimitNOFILE=, docker --ulimit "
                "nofile=N:N) to serve more robots", config.max_connections, limit,
                ", three per robot while recording" if per_robot == 3 else "", fits)
    return replace(config, max_connections=fits)


__all__ = ["fit_connections", "raise_open_file_limit"]
