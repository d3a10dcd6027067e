"""Start the app with `streamlit run` on a free localhost port and save a screenshot of every page.

Usage: python scripts/screenshots.py [--out docs/screenshots] [--store DIR]
Needs Debian's Chromium at /usr/bin/chromium and the Python playwright package
(never `playwright install`: the browser comes from the system).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python scripts/screenshots.py` puts scripts/ on the path, not the repository root

from scripts.browser import draw_seven, free_port, launch_chromium, missing_browser_reason, start_app, stop_app  # noqa: E402

PAGES = {"train": "", "compare": "compare", "draw": "draw"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNG files")
    parser.add_argument("--store", default=None, help="run store to show (default: a new, empty one)")
    args = parser.parse_args()

    reason = missing_browser_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = args.store or tempfile.mkdtemp(prefix="mnist-lab-store-")
    app = start_app(free_port(), store)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            for name, path in PAGES.items():
                page.goto(f"{app.url}/{path}")
                page.wait_for_selector("h1", timeout=60_000)
                time.sleep(3)  # let charts and components finish drawing
                if name == "draw" and page.locator("canvas").count():
                    draw_seven(page)
                    page.get_by_text("Answers").wait_for(timeout=30_000)
                    time.sleep(2)
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                print(f"saved {out / f'{name}.png'}")
            browser.close()
    finally:
        stop_app(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
