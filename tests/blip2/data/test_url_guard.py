"""The SSRF guard: what a download may reach, checked on resolved addresses and on every redirect."""

from pathlib import Path

import pytest

from blip2.data.download import download_file
from blip2.data.url_guard import check_url, guarded_client, is_public
from blip2.errors import ForbiddenUrl
from tests.support.file_server import FileServer


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8000/x",
        "http://2130706433/x",  # 127.0.0.1 in decimal
        "http://0177.0.0.1/x",  # and in octal
        "http://0x7f000001/x",
        "http://10.0.0.5/x",
        "http://172.16.3.4/x",
        "http://192.168.1.1/x",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata endpoint
        "http://100.64.0.1/x",  # shared address space
        "http://0.0.0.0/x",
        "http://[::1]/x",
        "http://[fc00::1]/x",
        "http://[fe80::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://224.0.0.1/x",
    ],
)
def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenUrl, match="not a public address"):
        check_url(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://8.8.8.8/x", "gopher://8.8.8.8/", "http:///nohost"])
def test_other_schemes_and_hostless_urls_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenUrl):
        check_url(url)


def test_public_addresses_and_allowed_hosts_pass() -> None:
    check_url("https://8.8.8.8/data.zip")
    check_url("http://[2606:4700:4700::1111]/x")
    check_url("http://127.0.0.1:9000/x", allowed_hosts=["127.0.0.1"])
    assert is_public("1.1.1.1") and not is_public("::ffff:10.0.0.1")


def test_a_redirect_to_an_internal_address_is_refused(tmp_path: Path, file_server: FileServer) -> None:
    # The first hop is allowed (a trusted mirror), the redirect it answers with is not.
    target = file_server.serve("/data.bin", b"secret")
    redirect = file_server.redirect("/mirror", target.replace("127.0.0.1", "localhost"))
    with guarded_client(["127.0.0.1"]) as client, pytest.raises(ForbiddenUrl, match="localhost"):
        download_file(redirect, tmp_path / "data.bin", client=client)
    assert not (tmp_path / "data.bin").exists()
    with guarded_client(["127.0.0.1", "localhost"]) as client:
        assert download_file(redirect, tmp_path / "data.bin", client=client).read_bytes() == b"secret"
