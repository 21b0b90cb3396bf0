"""Browser tests of the built site: Playwright for Python driving Debian's Chromium.

They need a built book (``replib book``) and ``/usr/bin/chromium``, so ``make test`` skips them;
``.ci/run`` builds the book at smoke scale and runs them with ``REPLIB_SITE_TESTS=1``, where a
missing site or browser is a failure, not a skip. Pages are read at two viewports: a desktop
(1366x900) and a phone (390x844).
"""
import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
VIEWPORTS = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
# Headless and closed off: this machine's network refuses Chromium's background connections.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("REPLIB_SITE_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="site tests run in .ci/run after the book is built "
                                   "(set REPLIB_SITE_TESTS=1)")
    here = Path(__file__).parent
    for item in items:  # the hook sees the whole session's items: skip only this folder's
        if here in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def site():
    """The built site served on a free localhost port; yields its base URL."""
    assert (SITE / "index.html").is_file(), f"no built site at {SITE}: run `replib book` first"
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _page(browser, viewport: str):
    context = browser.new_context(viewport=VIEWPORTS[viewport],
                                  device_scale_factor=2 if viewport == "phone" else 1)
    return context, context.new_page()


@pytest.fixture
def page(browser):
    context, pg = _page(browser, "desktop")
    yield pg
    context.close()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request) -> str:
    """Each viewport's name in turn ("desktop", "phone")."""
    return request.param


@pytest.fixture
def any_page(browser, viewport):
    """A page at each viewport (the test's ``viewport`` argument names it)."""
    context, pg = _page(browser, viewport)
    yield pg
    context.close()


@pytest.fixture
def phone(browser):
    context, pg = _page(browser, "phone")
    yield pg
    context.close()
