"""The live refresh interval read from $MNIST_LAB_REFRESH_S: valid values, rejected values, and the app's message."""

from __future__ import annotations

import sys

import pytest
from streamlit.testing.v1 import AppTest

from app.services import DEFAULT_REFRESH_S, REFRESH_ENV, read_refresh_s
from core.errors import ConfigError
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize("raw, expected", [("", DEFAULT_REFRESH_S), ("0.5", 0.5), (" 3 ", 3.0), ("0.1", 0.1), ("3600", 3600.0)])
def test_refresh_accepts_valid_seconds(raw, expected):
    assert read_refresh_s({REFRESH_ENV: raw}) == expected


def test_refresh_default_when_unset():
    assert read_refresh_s({}) == DEFAULT_REFRESH_S


@pytest.mark.parametrize("raw", ["abc", "2s", "1,5"])
def test_refresh_rejects_non_number(raw):
    with pytest.raises(ConfigError, match=f"{REFRESH_ENV}='{raw}' is not a number"):
        read_refresh_s({REFRESH_ENV: raw})


@pytest.mark.parametrize("raw", ["0", "-1", "0.05", "nan", "inf", "3601"])
def test_refresh_rejects_out_of_range(raw):
    with pytest.raises(ConfigError, match=r"out of range; use 0\.1 to 3600 seconds"):
        read_refresh_s({REFRESH_ENV: raw})


def test_app_shows_bad_refresh_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    monkeypatch.setenv(REFRESH_ENV, "fast")
    # app.services reads the variable at import, so the page must import a fresh copy.
    monkeypatch.delitem(sys.modules, "app.services", raising=False)

    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=60).run()

    assert at.exception
    assert f"{REFRESH_ENV}='fast' is not a number" in at.exception[0].message
