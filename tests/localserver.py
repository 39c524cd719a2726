"""The plumbing of the tests' own HTTP servers (tests/faketgi.py, fakeopenai.py,
floodserver.py): a threaded server on 127.0.0.1, on a free port or the one given, whose
subclass answers `get(h)` and `post(h, body)` (body: the request's JSON, None if empty),
started and stopped as a context manager."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from typing_extensions import Self


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)


class LocalServer:
    def __init__(self, port: int = 0) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without this, each answer on a kept-
            # alive connection waits for the client's delayed ACK (about 40 ms)
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.get(self)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                server.post(self, json.loads(self.rfile.read(n) or b"null"))

        self._server = _QuietServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True  # a handler still sleeping never holds up a stop
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def get(self, h: BaseHTTPRequestHandler) -> None:
        self.send_json(h, 404, {})

    def post(self, h: BaseHTTPRequestHandler, body: Any) -> None:
        self.send_json(h, 404, {})

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
             headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    @classmethod
    def send_json(cls, h: BaseHTTPRequestHandler, status: int, body: Any,
                  headers: dict[str, str] | None = None) -> None:
        cls.send(h, status, json.dumps(body).encode(), "application/json", headers)
