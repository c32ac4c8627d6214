"""Debian's Chromium, driven by Playwright, for tests that look at pages as a person would.

Playwright never downloads a browser here: it starts the system's `/usr/bin/chromium` (installed by
`apt-get install chromium`; `.ci/run` installs it). Without one, browser tests skip with the reason,
unless BLIP2_REQUIRE_BROWSER=1 (CI sets it), where a missing browser fails them instead.

Every page is confined to this machine: a request to any host but 127.0.0.1/localhost is aborted
and recorded, so a page that works only with a CDN fails here as it would on an air-gapped cluster.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
# The flags this machine's Chromium needs: no sandbox as root, and no calls home on a closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# How long a page may take to show what a test waits for, on a loaded 2-core machine: a limit, not a pace.
WAIT_MS = 60_000


def require_chromium() -> Path:
    """The system Chromium; skips the test without one, or fails it where CI demands browser tests."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM}: install it with `apt-get install chromium` to run the browser tests"
    if os.environ.get("BLIP2_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (BLIP2_REQUIRE_BROWSER=1: browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    """A headless Chromium for one test module. Not for the session: Playwright's sync API keeps its
    event loop running in the main thread while it is open, and `asyncio.run` in any later test fails."""
    executable = require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@dataclass
class OfflinePage:
    """A page that may reach only this machine; `blocked` lists what it tried to fetch elsewhere."""

    page: "Page"
    blocked: list[str] = field(default_factory=list)


@contextmanager
def offline_page(browser: "Browser", credentials: tuple[str, str] | None = None) -> Iterator[OfflinePage]:
    """A fresh page (own cookies, storage) whose requests to other hosts are aborted and recorded."""
    http_credentials = {"username": credentials[0], "password": credentials[1]} if credentials else None
    context = browser.new_context(http_credentials=http_credentials, viewport={"width": 2000, "height": 700})
    context.set_default_timeout(WAIT_MS)
    opened = OfflinePage(context.new_page())

    def only_local(route: "Route") -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS or url.startswith(("data:", "blob:")):
            route.continue_()
            return
        opened.blocked.append(url)
        route.abort("internetdisconnected")

    context.route("**/*", only_local)
    try:
        yield opened
    finally:
        context.close()
