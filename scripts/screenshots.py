"""Start the app with `streamlit run` on a free localhost port and save a screenshot of every page.

Usage: python scripts/screenshots.py [--out docs/screenshots] [--store DIR]
Needs Debian's Chromium at /usr/bin/chromium and the Python playwright package
(never `playwright install`: the browser comes from the system).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAGES = {"train": "", "compare": "compare", "draw": "draw"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(port: int, store: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `streamlit run app/main.py` on 127.0.0.1:port and wait until its health check returns 200."""
    environment = {**os.environ, "MNIST_LAB_STORE": store, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"streamlit did not respond on port {port} within 60 s; see its output above")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def draw_seven(page) -> None:
    """Draw a 7 with mouse strokes on the Draw page's 280x280 canvas."""
    canvas = page.locator("canvas").last
    box = canvas.bounding_box()
    left, top = box["x"], box["y"]
    page.mouse.move(left + 70, top + 60)
    page.mouse.down()
    for step in range(21):
        page.mouse.move(left + 70 + step * 7, top + 60, steps=2)
    for step in range(21):
        page.mouse.move(left + 210 - step * 4, top + 60 + step * 9, steps=2)
    page.mouse.up()


def main() -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNG files")
    parser.add_argument("--store", default=None, help="run store to show (default: a new, empty one)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    store = args.store or tempfile.mkdtemp(prefix="mnist-lab-store-")
    port = free_port()
    app = start_app(port, store)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            for name, path in PAGES.items():
                page.goto(f"http://127.0.0.1:{port}/{path}")
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
