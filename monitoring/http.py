"""The monitor's read-only HTTP server: its page, its metrics, its snapshot, its reports.

Routes (GET and HEAD only; any other method gets 405):

* ``/`` — the page (`monitoring.page.render_page` of a fresh snapshot);
* ``/metrics`` — the monitor's registry in Prometheus' text format;
* ``/api/snapshot`` — the snapshot the page is drawn from, as JSON (NaN as null);
* ``/reports/<name>.html`` — an Evidently report saved by the monitor, from ``reports_dir``
  only: a name is a single file name (`monitoring.page.REPORT_NAME`), never a path;
* ``/healthz`` — ``ok``.

Why the standard library's ``ThreadingHTTPServer`` and not FastAPI: the monitor is a Kafka
consumer loop, not a web service; a few pages a minute need no event loop, and a daemon
thread beside the loop keeps ``fraudctl monitor`` one process with no ASGI server to run.
The consumer loop never waits on the server: ``snapshot`` is called on the server's thread,
so it must return a consistent copy (build it under the monitor's lock, or swap a finished
dict in) and not block. No auth: nothing on the page is secret, and nothing on it can act.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitoring.page import REPORT_NAME, jsonable, render_page

log = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
# The page loads nothing, runs nothing and frames nothing: inline styles and inline SVG only.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


class MonitorHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that holds what the handler serves."""

    daemon_threads = True  # a slow client never keeps the monitor from exiting

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        snapshot: Callable[[], dict[str, Any]],
        reports_dir: Path,
    ) -> None:
        self.registry = registry
        self.snapshot = snapshot
        self.reports_dir = Path(reports_dir)
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{self.port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("monitor http: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: MonitorHTTPServer

    def version_string(self) -> str:
        return "fraud-monitor"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD\n", headers={"Allow": "GET, HEAD"}
        )

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse

    def _serve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                page = render_page(self.server.snapshot()).encode()
                self._send(HTTPStatus.OK, page, HTML, body, {"Content-Security-Policy": PAGE_POLICY})
            elif path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST, body)
            elif path == "/api/snapshot":
                text = json.dumps(jsonable(self.server.snapshot()), allow_nan=False, indent=1)
                self._send(HTTPStatus.OK, text.encode(), "application/json", body)
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", send_body=body)
            elif path.startswith("/reports/"):
                self._report(unquote(path.removeprefix("/reports/")), body)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", send_body=body)
        except Exception as error:  # the monitor's snapshot or its registry failed: say so, stay up
            log.exception("monitor http: %s failed", path)
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"{type(error).__name__}: {error}\n".encode(),
                send_body=body,
            )

    def _report(self, name: str, body: bool) -> None:
        """A file of ``reports_dir`` by its bare name; a path, a dot-name or a symlink out is refused."""
        if not REPORT_NAME.fullmatch(name):
            self._send(HTTPStatus.BAD_REQUEST, b"not a report name\n", send_body=body)
            return
        folder = self.server.reports_dir.resolve()
        target = (folder / name).resolve()
        if target.parent != folder or not target.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"no such report\n", send_body=body)
            return
        with target.open("rb") as stream:
            self._send(HTTPStatus.OK, stream, HTML, body, length=target.stat().st_size)

    def _send(
        self,
        status: HTTPStatus,
        content: bytes | BinaryIO,
        content_type: str = "text/plain; charset=utf-8",
        send_body: bool = True,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content) if isinstance(content, bytes) else length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not send_body:
            return
        if isinstance(content, bytes):
            self.wfile.write(content)
        else:
            while chunk := content.read(1 << 16):
                self.wfile.write(chunk)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class' name)
        log.debug("monitor http %s: " + format, self.address_string(), *args)


def start_monitor_server(
    port: int,
    registry: CollectorRegistry,
    snapshot: Callable[[], dict[str, Any]],
    reports_dir: Path,
    host: str = "127.0.0.1",
) -> tuple[MonitorHTTPServer, threading.Thread]:
    """Serve the monitor's page, ``/metrics``, ``/api/snapshot`` and its reports from a daemon thread.

    ``port`` 0 takes any free port: read the real one from ``server.port`` (or
    ``server.server_address[1]``). Stop with `stop_monitor_server` (``server.shutdown()``
    then ``server.server_close()``). ``snapshot`` is called on the server's threads, once a
    request for ``/`` or ``/api/snapshot``.
    """
    server = MonitorHTTPServer((host, port), registry, snapshot, reports_dir)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.25},
        name=f"monitor-http-{server.port}",
        daemon=True,
    )
    thread.start()
    log.info("monitor page on %s", server.url)
    return server, thread


def stop_monitor_server(server: MonitorHTTPServer, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop serving, close the socket, and wait for the serving thread."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
