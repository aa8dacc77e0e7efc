"""Client SDK for the rfm inference server: all that rfm without extras brings (on numpy, httpx,
websockets and msgpack). Imports neither torch nor the server; the wire codec is rfm.client.wire. The model,
server, trainer and simulator come with the extras: rfm[serve], rfm[train], rfm[sim], rfm[export], rfm[edge],
rfm[server] (with rfm[edge]: serving an export without torch), rfm[all].
"""

from rfm.client.client import AsyncRFMClient, RFMClient, RFMError
from rfm.client.executor import ChunkExecutor
from rfm.client.ticks import TickRecorder

__all__ = ["AsyncRFMClient", "ChunkExecutor", "RFMClient", "RFMError", "TickRecorder"]
