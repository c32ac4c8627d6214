"""A real HTTP server on 127.0.0.1 that receives webhooks, records them, and can be slow or down.

    with receiving_webhooks() as receiver:
        url = receiver.url("/hook")
        ...
        receiver.received   # every request: headers and body, in arrival order

`hold_first` makes the first request wait (unanswered) until `release()` is called, as a receiver
slower than the sender's timeout; `port` lets a test start a receiver where one was down before.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOLD_LIMIT_S = 60.0


@dataclass(frozen=True)
class Received:
    """One webhook request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base_url: str
    hold_first: bool = False
    received: list[Received] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return self.base_url + path

    def release(self) -> None:
        """Let a held first request be answered (late: its sender has given up on it)."""
        self._released.set()

    def ids(self) -> list[str]:
        """The webhook-id of each request, in arrival order."""
        return [r.headers["webhook-id"] for r in self.snapshot()]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def _record(self, received: Received) -> int:
        with self._lock:
            self.received.append(received)
            return len(self.received)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        number = receiver._record(Received(self.path, headers, body))
        if number == 1 and receiver.hold_first:
            receiver._released.wait(_HOLD_LIMIT_S)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


@contextmanager
def receiving_webhooks(port: int = 0, hold_first: bool = False) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (`port`, or a free one), shut down afterwards."""
    server = _Server(("127.0.0.1", port), _Handler)
    server.receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}", hold_first=hold_first)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.receiver
    finally:
        server.receiver.release()
        server.shutdown()
        server.server_close()
        thread.join()
