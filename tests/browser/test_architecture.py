"""A new user's path through kernel shapes in a real browser: Train page costs, a tiny run, its feature maps.

One `streamlit run` server with a fresh run store and its real worker serves the
module. The test sets every CNN stage to a (1, 7) kernel and a (1, 2) pool with
the stage presets and checks the cost metrics against `core.analysis.model_cost`.
It then trains on 2,000 images for one epoch and opens the run on the Architecture page.
"""

from __future__ import annotations

import pytest

from core.store import RunStore
from tests.browser.streamlit_dom import LIVE_LOSS_POINTS_JS
from tests.browser.test_pages import fill_tiny_run, open_page, wait_until_settled
from tests.helpers import wait_for

pytestmark = pytest.mark.browser

RUN_NAME = "kernel 1x7 run"

# Plotly trace types of each drawn chart on the page, keyed by the chart's displayed title.
CHART_TRACES_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'),
    plot => [(plot.querySelector('.gtitle') || {}).textContent || '', (plot.data || []).map(trace => trace.type)]))"""


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label`` and wait for the rerun it causes."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_until_settled(page)


def metric_values(page) -> dict[str, str]:
    """Map each st.metric's label to its displayed value."""
    values = {}
    for metric in page.locator('[data-testid="stMetric"]').all():
        label = metric.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        values[label] = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return values


def expected_metrics(model_config: dict) -> dict[str, str]:
    """The three cost metrics as the pages format them, computed by core for ``model_config``."""
    from core.analysis import model_cost

    cost = model_cost(model_config)
    return {
        "Parameters": f"{cost.params:,}",
        "FLOPs (multiply-adds)": f"{cost.flops:,}",
        "Receptive field (h x w)": "{} x {}".format(*cost.receptive_field),
    }


def expected_stage_titles(model_config: dict) -> list[str]:
    """Feature-map chart titles, "stages.I: CHANNELS x HEIGHT x WIDTH", from core's stage sizes."""
    from core.analysis import model_cost

    stages = model_cost(model_config).stages
    return [f"stages.{index}: {stage['channels']} x {stage['out_hw'][0]} x {stage['out_hw'][1]}" for index, stage in enumerate(stages)]


def cnn_config_1x7() -> dict:
    from core.models import default_model_config

    config = default_model_config("cnn")
    for stage in config["stages"]:
        stage["kernel_size"] = [1, 7]
        stage["pool"] = [1, 2]
    return config


def test_kernel_shape_run_shows_feature_maps(app, page):
    open_page(page, app, "", "Train")
    choose(page, "Architecture", "Simple CNN (cnn)")
    default_metrics = metric_values(page)

    choose(page, "Kernel for every stage", "(1, 7)")
    page.get_by_role("button", name="Apply kernel").click()
    wait_until_settled(page)
    choose(page, "Pool for every stage", "(1, 2)")
    page.get_by_role("button", name="Apply pool").click()
    wait_until_settled(page)
    shaped_metrics = metric_values(page)

    expected = expected_metrics(cnn_config_1x7())
    assert shaped_metrics == expected
    for label, value in default_metrics.items():
        assert shaped_metrics[label] != value, f"{label} stayed {value} after the kernel and pool change"

    fill_tiny_run(page, name=RUN_NAME, epochs=1, batch_size=128, train_subset=2_000)
    wait_until_settled(page)
    page.get_by_role("button", name="Start training").click()
    run = wait_for(
        lambda: (runs := [r for r in RunStore(app.store).list_runs() if r["name"] == RUN_NAME]) and runs[0]["status"] not in ("queued", "running") and runs[0],
        timeout=120, interval=0.5, description="the run to finish",
    )
    assert run["status"] == "completed", f"run ended {run['status']}: {run['error']}"
    assert run["model_config"]["stages"][0]["kernel_size"] == [1, 7]
    assert run["model_config"]["stages"][0]["pool"] == [1, 2]
    assert run["train_config"]["train_subset"] == 2_000
    page.get_by_text(f"Run #{run['id']} completed").wait_for()
    assert wait_for(lambda: page.evaluate(LIVE_LOSS_POINTS_JS), timeout=30, description="loss curve points"), "no loss curve"

    open_page(page, app, "architecture", "Architecture")
    page.get_by_text("Trained run", exact=True).click()
    page.get_by_text(f"#{run['id']} {RUN_NAME} predicts").wait_for()
    wait_until_settled(page)
    expected_titles = expected_stage_titles(run["model_config"])
    stage_charts = wait_for(
        lambda: (charts := {title: traces for title, traces in page.evaluate(CHART_TRACES_JS).items() if title.startswith("stages.")})
        and len(charts) >= len(expected_titles) and charts,
        timeout=30, description="a feature-map chart per stage",
    )

    assert metric_values(page) == expected_metrics(run["model_config"])
    assert sorted(stage_charts) == expected_titles
    for title, traces in stage_charts.items():
        assert traces and set(traces) == {"heatmap"}, f"chart {title!r} shows {traces}, not feature-map images"
