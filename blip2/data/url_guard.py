"""Which URLs the service may fetch for its users: a guard against server-side request forgery.

A worker that downloads whatever URL a job names could be pointed at the machine's own services,
the cloud metadata endpoint or the private network. Every request — the first and each redirect —
is checked: the scheme must be http(s), and every address the host resolves to must be a global
one (no loopback, private, link-local, shared, reserved or multicast address, in IPv4 or IPv6,
IPv4-mapped IPv6 included). Decimal and octal spellings (`http://2130706433/`, `0177.0.0.1`) are
caught because the check looks at the resolved addresses, not the spelling. Hosts named in
`allowed_hosts` (FETCH_ALLOWED_HOSTS: tests, a private mirror) skip the address check.

The check happens where the connection is made (`GuardedTransport`): the host is resolved once,
its addresses are checked, and the socket connects to one of those very addresses. Checking first
and letting the HTTP library resolve the name again would leave a DNS rebinding window (a name that
answers a public address to the check and 127.0.0.1 to the connection). The Host header, TLS SNI
and certificate verification still use the URL's host name. The lookup runs in a thread bounded by
the request's connect timeout, so a slow resolver counts against the fetch's time limit like a
slow server.

    with guarded_client(settings.fetch_allowed_hosts) as client:
        download_file(url, dest, client=client)
"""

import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Collection, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import httpcore
import httpx

from blip2.errors import DownloadFailed, ForbiddenUrl

ALLOWED_SCHEMES = frozenset({"http", "https"})


def check_url(url: str, allowed_hosts: Collection[str] = (), timeout_s: float | None = None) -> list[str]:
    """Raise ForbiddenUrl unless `url` may be fetched; the addresses a connection to it may use."""
    parsed = urllib.parse.urlsplit(url)
    _check_scheme(url, parsed.scheme)
    host = (parsed.hostname or "").lower()
    if not host:
        raise ForbiddenUrl(f"{url}: the URL names no host")
    port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
    if port == 0:
        raise ValueError("port 0 is not one a connection can be made to")
    try:
        return checked_addresses(host, port, _normalised(allowed_hosts), timeout_s)
    except ForbiddenUrl as exc:
        raise ForbiddenUrl(f"{url}: {exc}") from exc


def checked_addresses(host: str, port: int, allowed_hosts: frozenset[str], timeout_s: float | None) -> list[str]:
    """The addresses `host` resolves to, all of them public unless `host` is allowed; else ForbiddenUrl."""
    addresses = resolve(host, port, timeout_s)
    if host.lower() not in allowed_hosts:
        for address in addresses:
            if not is_public(address):
                raise ForbiddenUrl(f"{host} resolves to {address}, which is not a public address")
    return addresses


def resolve(host: str, port: int, timeout_s: float | None = None) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (a literal address resolves to itself).

    Raises TimeoutError when the lookup takes longer than `timeout_s`: getaddrinfo itself cannot be
    interrupted, so it runs in a daemon thread that is left to finish on its own.
    """
    answer: Future[list[tuple[object, ...]]] = Future()

    def lookup() -> None:
        try:
            answer.set_result(socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP))  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the waiting caller
            answer.set_exception(exc)

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    try:
        infos = answer.result(timeout_s)
    except FutureTimeout:
        raise TimeoutError(f"resolving {host!r} took longer than {timeout_s:g} s") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadFailed(f"cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # type: ignore[index]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip.is_global and not ip.is_multicast


class _CheckedBackend(httpcore.SyncBackend):
    """Opens TCP connections only to addresses it has just resolved and checked itself."""

    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        self.allowed_hosts = allowed_hosts

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        started = time.monotonic()
        try:
            addresses = checked_addresses(host, port, self.allowed_hosts, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        failure: httpcore.ConnectError | None = None
        for address in addresses:  # as socket.create_connection does: the first that answers
            try:
                return super().connect_tcp(address, port, _time_left(started, timeout), local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} resolves to no address")


def _time_left(started: float, timeout: float | None) -> float | None:
    """What is left of `timeout` (None: no limit) since `started`; ConnectTimeout once none is."""
    if timeout is None:
        return None
    left = timeout - (time.monotonic() - started)
    if left <= 0:
        raise httpcore.ConnectTimeout(f"no connection within {timeout:g} s")
    return left


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport, connecting only to checked addresses, and refusing schemes other than http(s).

    Proxies are never used: a proxy would make the connection on our behalf, to an address it
    resolves itself.
    """

    def __init__(self, allowed_hosts: Collection[str] = (), verify: ssl.SSLContext | bool = True) -> None:
        super().__init__()
        # HTTPTransport takes no network backend, so its connection pool is replaced by an equal
        # one that has ours (with httpx's default limits).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_CheckedBackend(_normalised(allowed_hosts)),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _check_scheme(str(request.url), request.url.scheme)
        try:
            return super().handle_request(request)
        except ForbiddenUrl as exc:
            raise ForbiddenUrl(f"{request.url}: {exc}") from exc


def guarded_client(
    allowed_hosts: Collection[str] = (), verify: ssl.SSLContext | bool = True, **kwargs: object
) -> httpx.Client:
    """An httpx client whose every request, redirects included, goes only to checked addresses.

    `verify` is httpx's: the certificates to trust for https (True: the system's).
    """
    return httpx.Client(transport=GuardedTransport(allowed_hosts, verify), **kwargs)  # type: ignore[arg-type]


def _check_scheme(url: str, scheme: str) -> None:
    if scheme.lower() not in ALLOWED_SCHEMES:
        raise ForbiddenUrl(f"{url}: only http and https URLs may be fetched")


def _normalised(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in hosts)
