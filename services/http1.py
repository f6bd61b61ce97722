"""A minimal HTTP/1.1 client for the load generator: keep-alive POSTs of JSON, nothing else.

Why not aiohttp's ``ClientSession`` (measured on the 2-core machine, same open-loop
engine, a trivial server in another process, both on uvloop): at 2,000 req/s aiohttp's
client took ~48 % of a core (~240 µs a request) and fell behind near 4,000 req/s; this
one took ~22 % (~110 µs) and still kept 5,000 req/s with the aiohttp stub server as the
limit. Without uvloop this client takes ~34 % at 2,000 req/s. The load generator shares
the machine with the service it measures, so every core-percent it spends is taken from
the server and would show up as the server's latency.

It speaks just enough HTTP for that: one request at a time per connection, replies
framed by Content-Length or chunked encoding, `Connection: close` honoured. A reply's body
is handed back when Content-Length frames it (the scoring service's replies); a chunked
body is skipped.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class ConnectFailed(OSError):
    """The TCP connection could not be opened (nothing listening, unknown host)."""


class Disconnected(ConnectionError):
    """The server closed the connection before a whole reply arrived."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(Disconnected(str(exc or "closed by the server")))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        try:
            reply = self._parse()
        except (ValueError, Disconnected) as error:  # not HTTP as we know it: drop the connection
            self._waiter.set_exception(Disconnected(f"unreadable reply: {error}"))
            self.close()
            return
        if reply is not None:
            self._waiter.set_result(reply)

    def _parse(self) -> tuple[int, bytes] | None:
        """Status and body once the whole reply is in the buffer (then emptied), else None."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buffer[:end]).lower()
        body_start, status, body = end + 4, int(head[9:12]), b""
        marker = head.find(b"\r\ncontent-length:")
        if status in (204, 304):  # never a body
            pass
        elif marker >= 0:
            line_end = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
            if len(buffer) < body_start + length:
                return None
            body = bytes(buffer[body_start : body_start + length])
        elif b"\r\ntransfer-encoding: chunked" in head:
            if not buffer.endswith(b"0\r\n\r\n"):  # the last chunk (no trailers)
                return None
        else:
            raise Disconnected("reply with neither Content-Length nor chunked encoding")
        self.reusable = b"\r\nconnection: close" not in head
        del buffer[:]
        return status, body

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send one request and return the reply's status code and body."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Persistent connections to one host, opened on demand, the most recently used first."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://HOST[:PORT][/PATH], got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = parts.path if parts.path not in ("", "/") else "/v1/score"
        self._head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._idle: list[_Connection] = []
        self.opened = 0

    async def _connect(self) -> _Connection:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        except OSError as error:
            raise ConnectFailed(str(error)) from error
        self.opened += 1
        return conn

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """POST a JSON body and return the status code and body; a failed connection is dropped."""
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            conn = None if conn.closed else conn
        if conn is None:
            conn = await self._connect()
        try:
            reply = await conn.request(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        except BaseException:  # a timeout cancels mid-reply: the connection is unusable
            conn.close()
            raise
        if conn.reusable and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
        return reply

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def error_kind(error: BaseException) -> str:
    """A short name for a failed request: timeout, connect, disconnect, or the exception type."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectFailed):
        return "connect"
    if isinstance(error, ConnectionError | Disconnected):
        return "disconnect"
    return type(error).__name__
