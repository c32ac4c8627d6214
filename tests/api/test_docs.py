"""/docs and /redoc render the API's operations with no network beyond this machine.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and show nothing on an air-gapped cluster;
ours serve them from the fastapi-offline wheel. Chromium opens each page on a real uvicorn with every
request to another host aborted, and must find every operation's summary in what the page rendered.
"""

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from api.main import create_app
from jobs.settings import Settings
from tests.support.browser import offline_page
from tests.support.live_server import serving_app

# ReDoc's "API docs by Redocly" link shows a logo from Redocly's CDN; no option turns it off. Blocked,
# the <img> removes itself (its onError), so an air-gapped page loses a 16-pixel logo, nothing else.
REDOC_ATTRIBUTION_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[tuple[str, list[str]]]:
    """The API on a real socket, and the summaries of the operations its OpenAPI schema documents."""
    app = create_app(settings)
    summaries = [op["summary"] for path in app.openapi()["paths"].values() for op in path.values()]
    with serving_app(app) as (host, port):
        yield f"http://{host}:{port}", summaries


@pytest.mark.parametrize(
    ("page", "operation"), [("/docs", ".opblock-summary-description"), ("/redoc", "[role=menuitem]")]
)
def test_docs_render_every_operation_offline(
    browser: Browser, served: tuple[str, list[str]], page: str, operation: str
) -> None:
    url, summaries = served
    assert len(summaries) >= 8, summaries
    with offline_page(browser) as opened:
        opened.page.goto(f"{url}{page}")
        rendered = opened.page.locator(operation)
        for summary in summaries:
            expect(rendered.filter(has_text=summary).first, f"{page} shows {summary!r}").to_be_visible()
        beyond = [url for url in opened.blocked if url != REDOC_ATTRIBUTION_LOGO]
        assert beyond == [], f"{page} asked for files beyond this machine: {beyond}"


def test_docs_assets_are_served_by_the_api(served: tuple[str, list[str]], browser: Browser) -> None:
    """The scripts the pages name are the API's own (a CDN address here would fail air-gapped)."""
    url, _ = served
    with offline_page(browser) as opened:
        for page in ("/docs", "/redoc"):
            opened.page.goto(f"{url}{page}")
            sources = opened.page.locator("script[src]").evaluate_all("nodes => nodes.map(n => n.src)")
            assert sources and all(src.startswith(url) for src in sources), sources
