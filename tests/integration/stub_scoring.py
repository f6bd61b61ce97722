"""A stub of `POST /v1/score` whose latency and failures a test controls.

It stands in for the scoring service only so the load tests can dictate latency (a stall
window, a single-server queue, error statuses); the real service is tested elsewhere.
It runs in a thread of the test process, or on its own with
``python -m tests.integration.stub_scoring --port 8099`` to measure the client's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time

from aiohttp import web

OK_BODY = b'{"score": 0.01, "decision": "approve"}'
ERROR_BODY = b'{"detail": "stub"}'


class StubScoring:
    """An aiohttp app on 127.0.0.1 (port 0: any free one) in a background thread.

    Attributes a test may change while it runs (plain reads on the server's loop):
        stall: (start, end, seconds): a request arriving in [start, end) on the
            ``time.monotonic()`` clock answers after `seconds`.
        service_s: > 0 makes it one server with a queue: each request takes this long
            after the previous one finished, so beyond 1/service_s req/s latency grows.
        fail_every: {status: n}: every n-th request answers with that status.
    """

    def __init__(self) -> None:
        self.stall: tuple[float, float, float] | None = None
        self.service_s = 0.0
        self.fail_every: dict[int, int] = {}
        self.requests = 0
        self.stalled = 0  # requests that arrived in the stall window
        self._busy_until = 0.0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    async def _score(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        await request.read()
        self.requests += 1
        n = self.requests
        for status, every in self.fail_every.items():
            if n % every == 0:
                return web.Response(status=status, body=ERROR_BODY, content_type="application/json")
        delay = 0.0
        if self.stall is not None and self.stall[0] <= arrived < self.stall[1]:
            delay = self.stall[2]
            self.stalled += 1
        if self.service_s > 0:  # virtual clock: sleep overshoot does not add up over requests
            self._busy_until = max(arrived, self._busy_until) + self.service_s
            delay = max(delay, self._busy_until - arrived)
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(body=OK_BODY, content_type="application/json")

    def app(self) -> web.Application:
        """The aiohttp application: `POST /v1/score` only."""
        app = web.Application()
        app.router.add_post("/v1/score", self._score)
        return app

    async def _start(self, port: int) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        await web.SockSite(self._runner, sock, backlog=1024).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def __enter__(self) -> StubScoring:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(0), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _Fixed(asyncio.Protocol):
    """The cheapest possible server, the same 200 reply to every request: it measures the
    client's own ceiling (`fraudctl loadtest` against it), not the client's correctness."""

    REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(OK_BODY),
        OK_BODY,
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # A request per end of headers (the bodies are one-line JSON); good enough here.
        self.transport.write(self.REPLY * data.count(b"\r\n\r\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--fixed", action="store_true", help="Raw asyncio (uvloop) server, fixed reply.")
    options = parser.parse_args()
    if not options.fixed:
        web.run_app(StubScoring().app(), host="127.0.0.1", port=options.port, access_log=None)
        return
    import uvloop

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Fixed, "127.0.0.1", options.port, backlog=1024
        )
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
