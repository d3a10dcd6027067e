"""Start the app under `streamlit run` and drive it with Debian's Chromium through playwright.

Shared by scripts/screenshots.py and the browser tests. The browser is the
system's Chromium (`apt-get install chromium`), never one from `playwright install`.
Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Chromium rejects root without --no-sandbox, and CI runs as root. Headless servers have no GPU.
# Background networking would contact update and metrics servers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START_TIMEOUT_S = 60.0


def missing_browser_reason() -> str | None:
    """Return why the browser cannot run here (no Chromium, no playwright package), or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM}; install it with `apt-get install chromium` or set CHROMIUM"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f"the playwright package is missing ({error}); install requirements.txt"
    return None


def launch_chromium(playwright):
    """Launch headless Chromium from CHROMIUM with CHROMIUM_ARGS; works with the sync and the async API."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def end_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when the thread that started it exits (a preexec_fn).

    A test process that is killed then cannot leave its server or training process behind.
    Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """A running `streamlit run app/main.py` server: its process, URL, run store and log file."""

    def __init__(self, process: subprocess.Popen, port: int, store: Path, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.store = store
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError as error:
            return f"(log {self.log_path} unreadable: {error})"


def start_app(port: int, store: str | os.PathLike, env: dict[str, str] | None = None) -> App:
    """Start `streamlit run app/main.py` on 127.0.0.1:port and wait until its health check returns 200.

    The server gets its own process group, so stop_app also ends the worker and
    training processes it spawned, and it gets SIGTERM when the calling thread exits.
    Its output goes to a log file, not a pipe that could fill up and block the server.
    """
    environment = {**os.environ, "MNIST_LAB_STORE": str(store), **(env or {})}
    log_path = Path(tempfile.mkstemp(prefix="mnist-lab-streamlit-", suffix=".log")[1])
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=end_with_parent,
        )
    app = App(process, port, Path(store), log_path)

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}:\n{app.log_tail()}")
        try:
            with urllib.request.urlopen(f"{app.url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return app
        except OSError:
            time.sleep(0.5)
    stop_app(app)
    raise RuntimeError(f"streamlit did not respond on port {port} within {START_TIMEOUT_S:.0f} s:\n{app.log_tail()}")


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Send SIGTERM, wait up to ``timeout_s`` seconds, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_app(app: App, timeout_s: float = 20.0) -> None:
    """Stop the server with SIGTERM, kill what is left of its process group and delete its log.

    On SIGTERM the worker marks a running run interrupted.
    """
    process = app.process
    stop_process(process, timeout_s)

    # The worker and training processes stop with the server; SIGKILL catches any that hang.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    app.log_path.unlink(missing_ok=True)


def draw_seven(page) -> None:
    """Draw a 7 with mouse strokes on the Draw page's 280x280 canvas (sync playwright page)."""
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

