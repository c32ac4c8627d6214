"""The SSRF guard: what a download may reach, checked on resolved addresses and on every redirect,
and connected to at exactly the address that was checked."""

from pathlib import Path

import pytest

from blip2.data.download import download_file
from blip2.data.url_guard import check_url, guarded_client, is_public
from blip2.errors import DownloadFailed, ForbiddenUrl
from tests.support.dns import ScriptedName
from tests.support.file_server import FileServer, serving_files
from tests.support.tls import self_signed


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


def test_a_download_connects_to_the_address_that_was_checked(
    tmp_path: Path, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: public to the first lookup, 127.0.0.1 to any later one, on every attempt.
    name = ScriptedName.install(monkeypatch, "rebind.test", ["8.8.8.8", "127.0.0.1"])
    url = file_server.serve("/secret", b"internal").replace("127.0.0.1", "rebind.test")
    with guarded_client() as client, pytest.raises(DownloadFailed):
        download_file(url, tmp_path / "secret", retries=0, client=client)
    assert name.connections == ["8.8.8.8"], "connected somewhere other than the checked address"
    assert file_server.requests == []


def test_an_allowed_name_keeps_its_host_header(
    tmp_path: Path, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ScriptedName.install(monkeypatch, "mirror.test", ["127.0.0.1"])
    url = file_server.serve("/data.bin", b"data").replace("127.0.0.1", "mirror.test")
    with guarded_client(["mirror.test"]) as client:
        assert download_file(url, tmp_path / "data.bin", client=client).read_bytes() == b"data"
    port = url.split(":")[2].split("/")[0]
    assert file_server.hosts == [f"mirror.test:{port}"], "the request should name the host, not the address"


@pytest.mark.parametrize("certified", ["tls.test", "other.test"])
def test_tls_verifies_the_certificate_for_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certified: str
) -> None:
    # The connection goes to 127.0.0.1, a name no certificate here is for: only a TLS handshake
    # that sends and checks the URL's host name (SNI, verification) accepts tls.test's certificate.
    certificate = self_signed(tmp_path, certified)
    ScriptedName.install(monkeypatch, "tls.test", ["127.0.0.1"])
    with serving_files(tls=certificate.server_context()) as server:
        url = server.serve("/data.bin", b"data").replace("127.0.0.1", "tls.test")
        with guarded_client(["tls.test"], verify=certificate.client_context()) as client:
            if certified == "tls.test":
                assert download_file(url, tmp_path / "data.bin", client=client).read_bytes() == b"data"
            else:
                with pytest.raises(DownloadFailed, match="certificate"):
                    download_file(url, tmp_path / "data.bin", retries=0, client=client)


def test_a_lookup_that_takes_too_long_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    name = ScriptedName.install(monkeypatch, "slow.test", ["8.8.8.8"], blocked=True)
    with pytest.raises(TimeoutError, match=r"resolving 'slow\.test' took longer than 0\.2 s"):
        check_url("http://slow.test/data.zip", timeout_s=0.2)
    assert name.lookups == 0, "the check should not have waited for the lookup"
    name.release()
