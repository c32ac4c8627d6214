"""Fetching an image_url against a real local HTTP server: the SSRF guard, redirects, size and time limits.

The tests' settings allow the host 127.0.0.1 (FETCH_ALLOWED_HOSTS), so the file server is reachable;
`localhost` and every other spelling of a loopback or internal address stay forbidden.
"""

from collections.abc import Iterator

import pytest

from blip2.errors import ForbiddenUrl
from jobs.errors import FetchFailed, UploadTooLarge
from jobs.fetch import MAX_REDIRECTS, fetch_image, with_fetched_image
from jobs.inputs import CaptionInput, EmbedInput
from jobs.settings import Settings
from tests.support.dns import ScriptedName
from tests.support.file_server import FileServer, serving_files
from tests.support.images import png_bytes

PNG = png_bytes()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serving_files() as server:
        yield server


@pytest.fixture
def fetch_settings(settings: Settings) -> Settings:
    assert settings.fetch_allowed_hosts == ["127.0.0.1"]
    return settings.model_copy(update={"FETCH_TIMEOUT_S": 2.0, "MAX_UPLOAD_BYTES": 100_000})


def test_fetches_the_body(file_server: FileServer, fetch_settings: Settings) -> None:
    assert fetch_image(file_server.serve("/cat.png", PNG), fetch_settings) == PNG


def test_follows_a_redirect_between_allowed_hosts(file_server: FileServer, fetch_settings: Settings) -> None:
    target = file_server.serve("/cat.png", PNG)
    assert fetch_image(file_server.redirect("/moved", target), fetch_settings) == PNG


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # 127.0.0.1 in decimal
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "ftp://127.0.0.1/cat.png",
    ],
)
def test_internal_addresses_and_other_schemes_are_forbidden(fetch_settings: Settings, url: str) -> None:
    with pytest.raises(ForbiddenUrl) as caught:
        fetch_image(url, fetch_settings)
    assert caught.value.code == "forbidden_url"


def test_localhost_stays_forbidden_beside_127_0_0_1(file_server: FileServer, fetch_settings: Settings) -> None:
    url = file_server.serve("/cat.png", PNG).replace("127.0.0.1", "localhost")
    with pytest.raises(ForbiddenUrl, match="localhost resolves to"):
        fetch_image(url, fetch_settings)
    assert file_server.requests == []


@pytest.mark.parametrize("where", ["localhost", "169.254.169.254"])
def test_a_redirect_to_a_forbidden_address_is_refused(
    file_server: FileServer, fetch_settings: Settings, where: str
) -> None:
    target = file_server.serve("/secret", b"internal").replace("127.0.0.1", where)
    with pytest.raises(ForbiddenUrl, match=where):
        fetch_image(file_server.redirect("/innocent.png", target), fetch_settings)
    assert [path for path, _ in file_server.requests] == ["/innocent.png"]  # the target was never asked


@pytest.mark.parametrize("via_redirect", [False, True], ids=["direct", "after-a-redirect"])
def test_a_name_that_rebinds_to_loopback_is_never_connected_to(
    file_server: FileServer, fetch_settings: Settings, monkeypatch: pytest.MonkeyPatch, via_redirect: bool
) -> None:
    # The check's lookup sees a public address, any later lookup 127.0.0.1 (DNS rebinding). The
    # connection must go to the address that was checked, which refuses it, never to the server.
    name = ScriptedName.install(monkeypatch, "rebind.test", ["8.8.8.8", "127.0.0.1"])
    url = file_server.serve("/secret", b"internal").replace("127.0.0.1", "rebind.test")
    if via_redirect:
        url = file_server.redirect("/innocent.png", url)
    with pytest.raises(FetchFailed) as caught:
        fetch_image(url, fetch_settings)
    assert caught.value.code == "fetch_failed"
    assert "8.8.8.8" in name.connections and "/secret" not in [path for path, _ in file_server.requests]


def test_a_slow_resolver_counts_against_the_time_limit(
    file_server: FileServer, fetch_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name resolves to the (allowed) server, but only once the test lets it: a fetch that
    # waited for the lookup instead of giving up at FETCH_TIMEOUT_S would succeed.
    name = ScriptedName.install(monkeypatch, "slow.test", ["127.0.0.1"], blocked=True)
    url = file_server.serve("/cat.png", PNG).replace("127.0.0.1", "slow.test")
    settings = fetch_settings.model_copy(update={"FETCH_ALLOWED_HOSTS": "slow.test"})
    with pytest.raises(FetchFailed, match=r"no answer within 2 s") as caught:
        fetch_image(url, settings)
    assert caught.value.code == "fetch_failed"
    assert name.lookups == 0 and file_server.requests == []  # the lookup had not answered yet
    name.release()


def test_redirects_are_bounded(file_server: FileServer, fetch_settings: Settings) -> None:
    loop = file_server.redirect("/loop", file_server.base_url + "/loop")
    with pytest.raises(FetchFailed, match=f"more than {MAX_REDIRECTS} redirects") as caught:
        fetch_image(loop, fetch_settings)
    assert caught.value.code == "fetch_failed"
    assert len(file_server.requests) == MAX_REDIRECTS + 1


@pytest.mark.parametrize("status", [404, 500])
def test_an_error_status_fails(file_server: FileServer, fetch_settings: Settings, status: int) -> None:
    url = file_server.serve("/cat.png", PNG, fail_first=(status,))
    with pytest.raises(FetchFailed, match=f"HTTP {status}"):
        fetch_image(url, fetch_settings)


def test_an_unreachable_server_fails(fetch_settings: Settings) -> None:
    with pytest.raises(FetchFailed, match=r"127\.0\.0\.1:9"):
        fetch_image("http://127.0.0.1:9/cat.png", fetch_settings)  # the discard port: nobody listens


def test_a_server_that_trickles_past_the_deadline_is_cut_off(file_server: FileServer, fetch_settings: Settings) -> None:
    # Each 16 KiB piece comes well within the time any one read may take (all of the 2 s); all 60
    # of them (15 s) do not.
    url = file_server.serve("/slow.png", bytes(60 * 16384), pause_s=0.25)
    with pytest.raises(FetchFailed, match="took too long"):
        fetch_image(url, fetch_settings.model_copy(update={"MAX_UPLOAD_BYTES": 1 << 20, "FETCH_TIMEOUT_S": 2.0}))
    assert file_server.files["/slow.png"].bytes_sent < 60 * 16384


def test_a_server_that_stalls_times_out(file_server: FileServer, fetch_settings: Settings) -> None:
    url = file_server.serve("/stalled.png", PNG, pause_s=60.0)  # for as long as the fetch could wait
    with pytest.raises(FetchFailed, match=r"no answer within 2 s"):
        fetch_image(url, fetch_settings)


def test_a_declared_size_over_the_limit_is_refused_before_the_body(
    file_server: FileServer, fetch_settings: Settings
) -> None:
    url = file_server.serve("/big.png", bytes(200_000))
    with pytest.raises(UploadTooLarge, match="is 200000 bytes, over the limit of 100000") as caught:
        fetch_image(url, fetch_settings)
    assert caught.value.code == "upload_too_large"


def test_a_body_without_a_size_is_cut_off_at_the_limit(file_server: FileServer, fetch_settings: Settings) -> None:
    body = bytes(32 << 20)
    url = file_server.serve("/endless.png", body, send_length=False)
    with pytest.raises(UploadTooLarge, match="over the limit of 100000 bytes"):
        fetch_image(url, fetch_settings)
    # The server could write no more than the client read plus what the sockets buffer.
    assert file_server.files["/endless.png"].bytes_sent < len(body) // 2


def test_with_fetched_image_carries_the_bytes_inline(file_server: FileServer, fetch_settings: Settings) -> None:
    job_input = CaptionInput.model_validate({"image_url": file_server.serve("/cat.png", PNG), "style": "detailed"})

    fetched = with_fetched_image(job_input, fetch_settings)

    assert isinstance(fetched, CaptionInput)
    assert (fetched.image, fetched.image_url, fetched.style) == (PNG, None, "detailed")
    assert job_input.image_url is not None  # the original is left as it was


def test_with_fetched_image_leaves_other_inputs_alone(fetch_settings: Settings) -> None:
    text_only = EmbedInput.model_validate({"mode": "text", "text": "a cat"})
    assert with_fetched_image(text_only, fetch_settings) is text_only


def test_with_fetched_image_names_the_field(file_server: FileServer, fetch_settings: Settings) -> None:
    missing = CaptionInput.model_validate({"image_url": file_server.base_url + "/missing.png"})
    with pytest.raises(FetchFailed) as failed:
        with_fetched_image(missing, fetch_settings)
    assert failed.value.field == "input.image_url"

    internal = CaptionInput.model_validate({"image_url": "http://169.254.169.254/latest/meta-data"})
    with pytest.raises(ForbiddenUrl) as forbidden:
        with_fetched_image(internal, fetch_settings)
    assert forbidden.value.field == "input.image_url" and "not a public address" in str(forbidden.value)


@pytest.mark.parametrize("url", ["http://[::1", "http://example.org:99999/", "http://example.org:xyz/", "http://\x00/"])
def test_a_malformed_url_fails_cleanly(fetch_settings: Settings, url: str) -> None:
    with pytest.raises(FetchFailed, match="is not a valid URL"):
        fetch_image(url, fetch_settings)
