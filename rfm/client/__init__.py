"""Client SDK for the rfm inference server (httpx + msgpack; imports neither torch nor the server)."""

from rfm.client.client import AsyncRFMClient, RFMClient, RFMError
from rfm.client.executor import ChunkExecutor

__all__ = ["AsyncRFMClient", "ChunkExecutor", "RFMClient", "RFMError"]
