"""Every page in a real browser: live training curves, drawing on the canvas, Compare, and the Start guard.

One `streamlit run` server, with a fresh run store and its real worker, serves
the module. Each test opens its own browser context and so gets a new Streamlit session.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from core.store import RunStore
from core.worker import TRAINING_NICE
from scripts.browser import draw_seven
from tests.browser.streamlit_dom import LIVE_LOSS_POINTS_JS, SCRIPT_STATE_SELECTOR
from tests.helpers import REPO_ROOT, wait_for

pytestmark = pytest.mark.browser

SHIPPED_LABELS = sorted(f"{path.stem} (shipped)" for path in (REPO_ROOT / "checkpoints").glob("*.safetensors"))


def open_page(page, app, path: str, title: str) -> None:
    page.goto(f"{app.url}/{path}")
    page.get_by_role("heading", name=title, level=1).wait_for()


def set_number(page, label: str, value: int) -> None:
    """Type a value into a number input and press Enter, which sends it to the server."""
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def fill_tiny_run(page, *, name: str, epochs: int, batch_size: int, train_subset: int) -> None:
    set_number(page, "Epochs", epochs)
    set_number(page, "Batch size", batch_size)
    set_number(page, "Training images (0 = all 55,000)", train_subset)
    name_field = page.get_by_label("Run name (optional)", exact=True)
    name_field.fill(name)
    name_field.press("Enter")


def wait_until_settled(page, quiet_s: float = 0.5, timeout_s: float = 30.0) -> None:
    """Wait until no script run has been in progress for quiet_s, as a user waits for the page to settle."""
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        state = page.locator(SCRIPT_STATE_SELECTOR).get_attribute("data-test-script-state")
        if state != "notRunning":
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)
    raise AssertionError(f"the page kept running scripts for {timeout_s} s")


def live_loss_points(page) -> int:
    return page.evaluate(LIVE_LOSS_POINTS_JS)


def process_nice(pid: int) -> int:
    """Nice value of a running process, the 19th field of /proc/PID/stat (Linux)."""
    fields_after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields_after_name[16])


def runs_named(store: Path, name: str) -> list[dict]:
    return [run for run in RunStore(store).list_runs() if run["name"] == name]


def test_train_live_chart_grows_without_click(app, page):
    open_page(page, app, "", "Train")
    # Dense on 10,000 images in batches of 32: about 6,000 steps, ten seconds or more of training. A run of a
    # few seconds could finish its loss points before a loaded machine rendered the first ones. It is cancelled below.
    fill_tiny_run(page, name="browser live run", epochs=20, batch_size=32, train_subset=10_000)
    page.get_by_role("button", name="Start training").click()

    run = wait_for(lambda: runs_named(app.store, "browser live run"), timeout=30, description="the run in the store")[0]
    first = wait_for(lambda: live_loss_points(page), timeout=120, interval=0.1, description="the first loss points")
    training_pid = RunStore(app.store).get_run(run["id"])["pid"]
    training_nice = process_nice(training_pid)  # read while it trains; it exits when the run ends
    wait_for(lambda: live_loss_points(page) > first, timeout=60, interval=0.1, description="more loss points without a click")
    second = live_loss_points(page)
    RunStore(app.store).request_cancel(run["id"])  # the other tests need no training in the background

    assert run["train_config"]["train_subset"] == 10_000
    assert run["train_config"]["epochs"] == 20
    assert second > first > 0
    assert training_nice == os.nice(0) + TRAINING_NICE


def test_draw_predicts_with_every_model(app, page):
    if not SHIPPED_LABELS:
        pytest.skip("checkpoints/ has no shipped models")
    open_page(page, app, "draw", "Draw")
    tags = page.locator('[data-testid="stMultiSelect"] [data-tag]')
    tags.first.wait_for()
    selected = sorted(tags.evaluate_all("elements => elements.map(tag => tag.getAttribute('aria-label'))"))
    assert selected == SHIPPED_LABELS

    page.locator("canvas").last.wait_for()
    draw_seven(page)
    page.get_by_role("heading", name="Answers", exact=True).wait_for()
    answers = wait_for(
        lambda: (texts := page.locator('[data-testid="stMarkdownContainer"]').filter(has_text=" says ").all_inner_texts()) and len(texts) >= len(selected) and texts,
        timeout=60,
        description="one answer per selected model",
    )

    predictions = {}
    for text in answers:
        match = re.match(r"(.+) says (\d) \(([\d.]+)%\)", text)
        assert match, f"answer {text!r} does not read 'MODEL says DIGIT (PROBABILITY%)'"
        predictions[match.group(1)] = int(match.group(2))
    assert sorted(predictions) == selected
    for label, digit in predictions.items():
        assert digit == 7, f"{label} read the drawn 7 as {digit}"


def test_draw_without_models_prompts(app, page):
    open_page(page, app, "draw", "Draw")
    page.locator("canvas").last.wait_for()
    draw_seven(page)
    page.get_by_role("heading", name="Answers", exact=True).wait_for()

    # Remove every selected model with the multiselect's clear button.
    page.locator('[data-testid="stMultiSelect"]').get_by_role("button", name="Clear all").click()

    page.get_by_text("Select at least one model above to see its prediction.").wait_for()
    assert page.get_by_role("heading", name="Answers", exact=True).count() == 0


def test_compare_lists_run_beside_shipped(app, page):
    store = RunStore(app.store)
    if not store.list_runs():  # this test alone: give Compare a finished run to list
        run_id = store.create_run({"arch": "dense"}, {"epochs": 1}, name="compare check", status="running")
        store.finish(run_id, "completed", test_accuracy=0.5)
    expected = SHIPPED_LABELS + [f"#{run['id']} {run['name']}" for run in store.list_runs()]

    open_page(page, app, "compare", "Compare")
    # The data grid draws on a canvas, but its accessible table contains the same cells as text.
    table = page.locator('[data-testid="stDataFrame"] table')
    table.wait_for(state="attached")
    names = wait_for(
        lambda: (cells := table.locator("tbody tr td:first-child").all_text_contents()) and len(cells) >= len(expected) and cells,
        timeout=60,
        description="a table row per run and shipped model",
    )

    assert sorted(names) == sorted(expected)


@pytest.mark.parametrize("gap_s", [0.0, 0.1], ids=["dblclick", "clicks-100ms-apart"])
def test_start_double_click_queues_one_run(app, page, gap_s):
    name = f"double click {gap_s}"
    open_page(page, app, "", "Train")
    fill_tiny_run(page, name=name, epochs=1, batch_size=128, train_subset=1_000)
    wait_until_settled(page)
    start = page.get_by_role("button", name="Start training")

    # A dblclick's two clicks are milliseconds apart, so the second interrupts the first
    # script run before it queues anything. With 100 ms between them, both script runs reach
    # the Start button's handler, so only a guard keeps the second from queueing a run.
    if gap_s:
        start.click()
        time.sleep(gap_s)
        start.click()
    else:
        start.dblclick()

    wait_for(lambda: runs_named(app.store, name), timeout=30, description="the queued run")
    time.sleep(3)  # a second run from the second click would be in the store by now
    runs = runs_named(app.store, name)

    for run in runs:
        RunStore(app.store).request_cancel(run["id"])  # keep the CPU for the other tests
    assert len(runs) == 1, f"a double click queued {len(runs)} runs: {[run['id'] for run in runs]}"
