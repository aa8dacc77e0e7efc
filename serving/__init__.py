"""rfm inference server: transports (HTTP, WebSocket, openpi) -> one dynamic batcher -> a Runner.

    from serving import ServerConfig, create_app, serve, ServerThread
"""

from serving.config import ServerConfig

__all__ = ["ServerConfig", "ServerThread", "create_app", "serve"]


def __getattr__(name: str):  # lazy: importing serving.config stays cheap
    if name == "create_app":
        from serving.app import create_app

        return create_app
    if name in ("serve", "ServerThread"):
        from serving import server

        return getattr(server, name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
