"""Which URLs the service may fetch for its users: a guard against server-side request forgery.

A worker that downloads whatever URL a job names could be pointed at the machine's own services,
the cloud metadata endpoint or the private network. Every request — the first and each redirect —
is checked: the scheme must be http(s), and every address the host resolves to must be a global
one (no loopback, private, link-local, shared, reserved or multicast address, in IPv4 or IPv6,
IPv4-mapped IPv6 included). Decimal and octal spellings (`http://2130706433/`, `0177.0.0.1`) are
caught because the check looks at the resolved addresses, not the spelling. Hosts named in
`allowed_hosts` (FETCH_ALLOWED_HOSTS: tests, a private mirror) skip the address check.

    with guarded_client(settings.fetch_allowed_hosts) as client:
        download_file(url, dest, client=client)
"""

import ipaddress
import socket
import urllib.parse
from collections.abc import Collection

import httpx

from blip2.errors import DownloadFailed, ForbiddenUrl

ALLOWED_SCHEMES = frozenset({"http", "https"})


def check_url(url: str, allowed_hosts: Collection[str] = ()) -> None:
    """Raise ForbiddenUrl unless `url` may be fetched."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in ALLOWED_SCHEMES:
        raise ForbiddenUrl(f"{url}: only http and https URLs may be fetched")
    host = (parsed.hostname or "").lower()
    if not host:
        raise ForbiddenUrl(f"{url}: the URL names no host")
    if host in {h.strip().lower() for h in allowed_hosts}:
        return
    for address in resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80)):
        if not is_public(address):
            raise ForbiddenUrl(f"{url}: {host} resolves to {address}, which is not a public address")


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a literal address resolves to itself, in any spelling)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadFailed(f"cannot resolve host {host!r}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip.is_global and not ip.is_multicast


def guarded_client(allowed_hosts: Collection[str] = (), **kwargs: object) -> httpx.Client:
    """An httpx client that checks every request it sends, redirects included."""

    def check(request: httpx.Request) -> None:
        check_url(str(request.url), allowed_hosts)

    return httpx.Client(event_hooks={"request": [check]}, **kwargs)  # type: ignore[arg-type]
