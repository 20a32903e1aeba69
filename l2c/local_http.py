"""The small HTTP servers the project runs itself (sandbox gateway, webhook and intake endpoints):
JSON responses, no access log, served from a background thread on 127.0.0.1."""

import asyncio
import json
import threading
from collections.abc import Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

T = TypeVar("T")


class BadRequest(Exception):
    """The request cannot be read; the message is the reason sent back with `status`."""

    status = 400


class LengthRequired(BadRequest):
    status = 411


class BodyTooLarge(BadRequest):
    status = 413


class JsonHandler(BaseHTTPRequestHandler):
    timeout = 30  # seconds a client may take to send its request before the connection closes

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: callers report what happened, not an access log

    def send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self, limit: int = 1_000_000, require_length: bool = False) -> bytes:
        """The body, refused from its Content-Length before a byte of it is read when too large.
        Without `require_length`, no Content-Length means an empty body."""
        declared = self.headers.get("Content-Length")
        if declared is None and require_length:
            raise LengthRequired("send a Content-Length header (chunked bodies are not read)")
        declared = (declared or "0").strip()
        if not declared.isascii() or not declared.isdigit():
            raise BadRequest("Content-Length must be a whole number of bytes")
        if int(declared) > limit:
            raise BodyTooLarge(f"the body may be at most {limit} bytes")
        return self.rfile.read(int(declared))


class BackgroundServer(ThreadingHTTPServer):
    """A threading HTTP server on `host`:`port` (0: any free port), run by `start()`. Loopback
    unless told otherwise: in a container, `0.0.0.0` lets the other containers reach it."""

    daemon_threads = True

    def __init__(self, port: int, handler: type[JsonHandler], host: str = "127.0.0.1") -> None:
        super().__init__((host, port), handler)
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def run_on_loop(
    loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T], timeout: float = 30
) -> T:
    """Run `work` on `loop` (where the caller's Temporal client lives) from a handler thread and
    wait for its result: TimeoutError when it takes longer than `timeout` seconds, RuntimeError
    when the loop has closed (the endpoint is stopping)."""
    try:
        future = asyncio.run_coroutine_threadsafe(work, loop)
    except RuntimeError:
        work.close()  # never scheduled: close it rather than leave a never-awaited warning
        raise
    try:
        return future.result(timeout=timeout)
    finally:
        future.cancel()  # a no-op once done; else the sender is told to send again
