"""Fixtures for the browser tests: Debian's Chromium driven by playwright against `streamlit run`.

Without Chromium or the playwright package these tests skip. When the CI
variable is set they fail instead, because .ci/run installs both.
"""

from __future__ import annotations

import os

import pytest

from scripts.browser import missing_browser_reason


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    """Skip (or fail under CI) when Chromium or playwright is missing."""
    reason = missing_browser_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; the CI variable is set, so the browser tests must run")
    pytest.skip(reason)


VIEWPORT = {"width": 1400, "height": 2000}
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def app(tmp_path_factory, data_dir, chromium_ready):
    """One `streamlit run` server per test module, on a free port with an empty run store."""
    from scripts.browser import free_port, start_app, stop_app

    store = tmp_path_factory.mktemp("browser-store")
    server = start_app(free_port(), store, {"MNIST_DATA_DIR": str(data_dir)})
    yield server
    stop_app(server)


@pytest.fixture(scope="module")
def browser(chromium_ready):
    """One headless Chromium per test module."""
    from playwright.sync_api import sync_playwright

    from scripts.browser import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page in a fresh browser context, so a new Streamlit session with its own state."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    yield context.new_page()
    context.close()
