"""Fetching the image a job names by URL (`image_url`), as carefully as the service fetches anything.

The API fetches at submission and stores the bytes as an upload of the tenant, so the job runs on
an image_id like any other (`with_fetched_image`). The fetch itself (`fetch_image`):

- goes through blip2's SSRF guard on every request, redirects included: http(s) only, and every
  address the host resolves to must be public unless the host is in FETCH_ALLOWED_HOSTS; the
  connection goes to an address that was checked (no second lookup, so no DNS rebinding), and the
  lookup itself counts against FETCH_TIMEOUT_S;
- follows at most MAX_REDIRECTS redirects, without reading their bodies;
- refuses a Content-Length over MAX_UPLOAD_BYTES before reading the body, and stops reading a body
  as soon as it passes MAX_UPLOAD_BYTES (`UploadTooLarge`);
- gives up once the whole fetch has taken FETCH_TIMEOUT_S: each request may wait only for the time
  left, and the deadline is checked as each piece of the body arrives, so a server trickling bytes
  is cut off too;
- asks for no content encoding and counts bytes as they come off the wire, so a gzip bomb is just
  a body that is too large.

Everything that goes wrong is `ForbiddenUrl`, `UploadTooLarge` or `FetchFailed` (unreachable, a
non-2xx status, a timeout, too many redirects).
"""

import time
import urllib.parse

import httpx

from blip2.data.url_guard import guarded_client
from blip2.errors import DownloadFailed, ForbiddenUrl
from jobs.errors import FetchFailed, UploadTooLarge
from jobs.inputs import ImageFields, JobInput
from jobs.settings import Settings

MAX_REDIRECTS = 5
_FIELD = "input.image_url"


def fetch_image(url: str, settings: Settings) -> bytes:
    """The body at `url`, fetched within the size and time limits (see the module docstring)."""
    _check_well_formed(url)
    deadline = time.monotonic() + settings.FETCH_TIMEOUT_S
    try:
        with guarded_client(settings.fetch_allowed_hosts) as client:
            response = _follow_redirects(client, url, deadline)
            try:
                return _read_body(response, url, settings.MAX_UPLOAD_BYTES, deadline)
            finally:
                response.close()
    except httpx.TimeoutException as exc:
        raise FetchFailed(f"{url}: no answer within {settings.FETCH_TIMEOUT_S:g} s") from exc
    except (httpx.HTTPError, DownloadFailed) as exc:  # DownloadFailed: the guard could not resolve the host
        raise FetchFailed(f"{url}: {exc}") from exc


def with_fetched_image(job_input: JobInput, settings: Settings) -> JobInput:
    """The input with its `image_url` fetched and carried inline as `image`, to be stored like one.

    Call it before the job's transaction opens: the fetch may take up to FETCH_TIMEOUT_S or so.
    Errors name the field `input.image_url`.
    """
    if not isinstance(job_input, ImageFields) or job_input.image_url is None:
        return job_input
    try:
        data = fetch_image(job_input.image_url, settings)
    except (ForbiddenUrl, FetchFailed, UploadTooLarge) as exc:
        raise type(exc)(str(exc), field=_FIELD) from exc
    return job_input.model_copy(update={"image": data, "image_url": None})


def _check_well_formed(url: str) -> None:
    """FetchFailed for a string httpx or the guard cannot take apart (a bad port, a control character)."""
    try:
        _ = urllib.parse.urlsplit(url).port  # reading the port is what checks it
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise FetchFailed(f"{url!r} is not a valid URL ({exc})") from exc


def _follow_redirects(client: httpx.Client, url: str, deadline: float) -> httpx.Response:
    """The open (unread) response at the end of at most MAX_REDIRECTS redirects."""
    # Byte counts must be bytes on the wire: a compressed body could expand past any limit.
    request = client.build_request("GET", url, headers={"Accept-Encoding": "identity"})
    for _ in range(MAX_REDIRECTS + 1):
        request.extensions["timeout"] = httpx.Timeout(_time_left(url, deadline)).as_dict()
        response = client.send(request, stream=True)  # the guard checks each request as it is sent
        if response.next_request is None:
            return response
        response.close()  # a redirect's body is never read
        request = response.next_request
    raise FetchFailed(f"{url}: more than {MAX_REDIRECTS} redirects")


def _read_body(response: httpx.Response, url: str, limit: int, deadline: float) -> bytes:
    if not response.is_success:
        raise FetchFailed(f"{url}: HTTP {response.status_code}")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"{url}: the image is {declared} bytes, over the limit of {limit}")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > limit:
            raise UploadTooLarge(f"{url}: the image is over the limit of {limit} bytes")
        _time_left(url, deadline)
    return bytes(body)


def _time_left(url: str, deadline: float) -> float:
    """Seconds until the deadline; FetchFailed once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchFailed(f"{url}: the fetch took too long")
    return left
