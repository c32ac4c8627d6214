"""A scripted DNS name for the SSRF guard's tests, installed in-process over `socket.getaddrinfo`.

`ScriptedName.install(monkeypatch, "rebind.test", ["8.8.8.8", "127.0.0.1"])` makes the name answer
8.8.8.8 to its first lookup and 127.0.0.1 to every later one: the DNS rebinding attack, where the
check sees a public address and a second lookup for the connection gets a local one. Connections to
`unreachable` addresses (the public ones; the tests have no network) are refused at once, and every
connection `socket.create_connection` opens is recorded. With `blocked=True` each lookup of the name
waits until the test calls `release()`: a resolver that takes as long as the test wants.
"""

import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

# How long a blocked lookup waits at most, so that a test that never releases it still ends.
_BLOCKED_AT_MOST_S = 120.0


@dataclass
class ScriptedName:
    host: str
    answers: Sequence[str]  # one per lookup, in turn; the last one repeats
    unreachable: frozenset[str]
    blocked: bool = False
    lookups: int = 0
    connections: list[str] = field(default_factory=list)  # the address of each connection attempt
    _released: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def install(
        cls, monkeypatch: pytest.MonkeyPatch, host: str, answers: Sequence[str], *, blocked: bool = False
    ) -> "ScriptedName":
        unreachable = frozenset(a for a in answers if a not in {"127.0.0.1", "::1"})
        name = cls(host, answers, unreachable, blocked)
        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != name.host:
                return real_getaddrinfo(host, port, *args, **kwargs)
            return real_getaddrinfo(name._answer(), port, *args, **kwargs)

        def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            name.connections.append(address[0])
            if address[0] in name.unreachable:
                raise ConnectionRefusedError(f"{address[0]} is a public address; the tests have no network")
            return real_connect(address, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        return name

    def release(self) -> None:
        """Let blocked lookups answer."""
        self._released.set()

    def _answer(self) -> str:
        if self.blocked:
            self._released.wait(_BLOCKED_AT_MOST_S)
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return answer
