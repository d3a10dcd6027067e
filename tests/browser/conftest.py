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
