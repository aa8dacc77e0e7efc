"""A TCP proxy in front of a server on loopback, standing where nginx or a load balancer stands in a deployment:
it forwards bytes both ways, can drop every open connection (a proxy's idle timeout), answer the next connections
with a page of its own (a 502 while the server restarts, a 413 over its body limit), and terminate TLS."""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import threading
from pathlib import Path


class TcpProxy:
    def __init__(self, target_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.target_port, self.tls = target_port, tls
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._pages: list[bytes] = []
        self.connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def answer_next(self, n: int, status: int, reason: str) -> None:
        """The next n connections get this status and an HTML page, as nginx's own error pages, then are closed."""
        html = (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}"
                f"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()
        page = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nContent-Length: {len(html)}\r\n"
                f"Connection: close\r\n\r\n").encode() + html
        with self._lock:
            self._pages += [page] * n

    def drop_connections(self) -> None:
        """Close every open connection at once, both sides, as a proxy does to one idle past its timeout."""
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.drop_connections()

    def __enter__(self) -> TcpProxy:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self.tls:
                client = self.tls.wrap_socket(client, server_side=True)
            with self._lock:
                self.connections += 1
                page = self._pages.pop(0) if self._pages else None
            if page is not None:
                _read_request(client)
                client.sendall(page)
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except (OSError, ssl.SSLError):
            client.close()
            return
        with self._lock:
            self._open += [client, upstream]
        try:
            self._pump(client, upstream)
        except (OSError, ValueError):  # (ValueError: select on a socket drop_connections closed)
            pass
        finally:
            client.close()
            upstream.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        while not self._closed:
            ready, _, _ = select.select([a, b], [], [], 0.5)
            for src in ready:
                dst = b if src is a else a
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
                while isinstance(src, ssl.SSLSocket) and src.pending():  # decrypted bytes select cannot see
                    dst.sendall(src.recv(65536))


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request (head and Content-Length body) so the client sees the answer, not a reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def self_signed(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 and localhost made with the openssl command, and a server context holding it."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True, timeout=60)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return cert, ctx
