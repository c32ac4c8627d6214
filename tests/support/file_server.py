"""A real HTTP file server on 127.0.0.1 for the download and fetch tests, with misbehaving modes.

Each served file says how the server treats it: honour Range requests or ignore them, drop the
connection halfway through the first response, answer the first requests with an error status,
leave out Content-Length, or pause before each piece of the body (a slow server). The server
records every request (path and Range header) so tests can check that a resume was used, and how
many body bytes it managed to send, so tests can check that a client stopped reading early.
Given an SSL context, it serves https (`serving_files(tls=...)`).
"""

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    """One file and how to misbehave while serving it."""

    body: bytes
    honour_range: bool = True
    drop_first: bool = False  # cut the first response off halfway
    always_drop: bool = False
    fail_first: list[int] = field(default_factory=list)  # statuses answered before serving
    send_length: bool = True  # False: no Content-Length; the body ends when the connection closes
    pause_s: float = 0.0  # before each 16 KiB piece of the body
    bytes_sent: int = 0  # body bytes written before the client went away (or all of them)


@dataclass
class FileServer:
    base_url: str
    files: dict[str, Served] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    hosts: list[str | None] = field(default_factory=list)  # each request's Host header

    def serve(
        self,
        path: str,
        body: bytes,
        *,
        honour_range: bool = True,
        drop_first: bool = False,
        always_drop: bool = False,
        fail_first: tuple[int, ...] = (),
        send_length: bool = True,
        pause_s: float = 0.0,
    ) -> str:
        """Serve `body` at `path` (e.g. "/data.zip"); returns its URL."""
        self.files[path] = Served(body, honour_range, drop_first, always_drop, list(fail_first), send_length, pause_s)
        return self.base_url + path

    def redirect(self, path: str, location: str) -> str:
        """Answer `path` with a 302 to `location`; returns the URL of `path`."""
        self.redirects[path] = location
        return self.base_url + path

    def ranges(self, path: str) -> list[str | None]:
        return [header for requested, header in self.requests if requested == path]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        state.hosts.append(self.headers.get("Host"))
        served = state.files.get(self.path)
        if self.path in state.redirects:
            self.send_response(302)
            self.send_header("Location", state.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif served is None:
            self.send_error(404)
        elif served.fail_first:
            self.send_error(served.fail_first.pop(0))
        elif served.always_drop or served.drop_first:
            served.drop_first = False
            self._send(200, served.body, len(served.body), cut=len(served.body) // 2)
        elif not served.send_length or served.pause_s:
            self._stream(served)
        else:
            self._serve(served)

    def _stream(self, served: Served) -> None:
        """The whole body, with or without Content-Length, pausing before each piece; counts what got out."""
        self.send_response(200)
        if served.send_length:
            self.send_header("Content-Length", str(len(served.body)))
        self.end_headers()
        self.close_connection = True
        try:
            for i in range(0, len(served.body), 16384):
                time.sleep(served.pause_s)
                self.wfile.write(served.body[i : i + 16384])
                self.wfile.flush()
                served.bytes_sent += len(served.body[i : i + 16384])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading and went away

    def _serve(self, served: Served) -> None:
        header = self.headers.get("Range")
        size = len(served.body)
        if not (header and served.honour_range):
            self._send(200, served.body, size)
            return
        start = int(header.removeprefix("bytes=").split("-")[0])
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(206, served.body[start:], size - start, content_range=f"bytes {start}-{size - 1}/{size}")

    def _send(self, status: int, body: bytes, length: int, *, cut: int | None = None, content_range: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        sent = body[:cut] if cut is not None else body
        self.close_connection = True
        try:
            for i in range(0, len(sent), 16384):  # in pieces, so the client sees several chunks
                self.wfile.write(sent[i : i + 16384])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client refused the body (too large) and went away

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FileServer


@contextmanager
def serving_files(tls: ssl.SSLContext | None = None) -> Iterator[FileServer]:
    """A file server on a free port of 127.0.0.1 (https with `tls`), shut down afterwards."""
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    server.state = FileServer(f"{scheme}://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.state
    server.shutdown()
    server.server_close()
    thread.join()
