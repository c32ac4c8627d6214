"""An ASGI app served by a real uvicorn on 127.0.0.1, and a raw HTTP client that streams a body.

The TestClient hands an app the whole request body at once, so whether a server stops reading an
oversized upload early can only be seen over a real socket: `post_streaming` sends a chunked body
piece by piece and stops as soon as the server answers, reporting how much it managed to send.
"""

import json
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp


@dataclass(frozen=True)
class StreamedReply:
    """What came back for a streamed request, and how many body bytes were sent before it did."""

    status: int
    body: dict[str, Any]
    bytes_sent: int


@contextmanager
def serving_app(app: ASGIApp) -> Iterator[tuple[str, int]]:
    """Serve `app` (its lifespan already run by whoever built it) on a free port; yields (host, port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def post_streaming(
    address: tuple[str, int], path: str, headers: Mapping[str, str], first: bytes, filler: int, total: int
) -> StreamedReply:
    """POST `first`, then zero bytes `filler` at a time up to `total`, chunked; stop once answered."""
    with socket.create_connection(address, timeout=30) as conn:
        head = [f"POST {path} HTTP/1.1", f"Host: {address[0]}", "Transfer-Encoding: chunked"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = _send_until_answered(conn, first, filler, total)
        return StreamedReply(*_read_reply(conn), bytes_sent=sent)


def _send_until_answered(conn: socket.socket, first: bytes, filler: int, total: int) -> int:
    sent, piece = 0, first
    try:
        while sent < total and not select.select([conn], [], [], 0)[0]:
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            piece = bytes(filler)
        if sent >= total:
            conn.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while we were still sending
    return sent


def _read_reply(conn: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and _complete(data):
                break
    except ConnectionResetError:
        pass  # the server closed with our unread body still in its buffer: what it said arrived first
    if not data:
        raise AssertionError("the server closed the connection without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False
