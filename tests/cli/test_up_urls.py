"""The URLs `blip2-jobs up` prints and polls, for every kind of address it may be told to listen on."""

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cli.service_commands import answers_ok, http_url, reachable, up_processes


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("", "http://127.0.0.1:8000"),
        ("::", "http://[::1]:8000"),
        ("::1", "http://[::1]:8000"),
        ("fd00::2", "http://[fd00::2]:8000"),
        ("api.internal", "http://api.internal:8000"),
    ],
)
def test_the_ready_url_reaches_the_address_listened_on(host: str, url: str) -> None:
    assert http_url(reachable(host), 8000) == url


def test_the_printed_urls_bracket_an_ipv6_address() -> None:
    labels = [process.label for process in up_processes("::1", 8000, 5555, ["m"], "admin")]
    assert "API      http://[::1]:8000 (docs: /docs)" in labels
    assert "Flower   http://[::1]:5555 (user admin)" in labels


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture
def ipv6_server() -> Iterator[int]:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = _IPv6Server(("::1", 0), _Ready)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_up_sees_an_api_listening_on_ipv6_answer(ipv6_server: int) -> None:
    assert answers_ok(f"{http_url(reachable('::'), ipv6_server)}/readyz")
    assert not answers_ok(f"{http_url(reachable('::'), ipv6_server)}/nowhere")
