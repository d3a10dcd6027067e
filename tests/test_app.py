"""Streamlit pages under AppTest: they render, react to settings, and show a run's live curve.

The Train test starts a real worker process (spawned from this test process)
and waits for the queued run's loss curve to appear on the page.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.models import ARCHITECTURES, default_model_config

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ROOT / "app" / "views"


def open_page(name: str) -> AppTest:
    return AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60).run()


def metric_value(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def plotly_point_count(at: AppTest, key: str) -> int:
    """Count the data points of every trace in the plotly chart with widget key ``key``."""
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if chart.proto.id and key in chart.proto.id or spec.get("layout", {}).get("title", {}).get("text") == key:
            return sum(len(trace.get("y") or []) for trace in spec["data"])
    return 0


@pytest.mark.parametrize("page", ["train", "architecture", "compare", "draw"])
def test_page_renders_without_errors(app_store, page):
    at = open_page(page)

    assert not at.exception
    assert at.title[0].value == page.capitalize()


def test_main_navigation_renders(app_store):
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()

    assert not at.exception
    assert at.title[0].value == "Train"


def test_train_shows_parameter_count(app_store):
    at = open_page("train")

    assert metric_value(at, "Parameters") == "67,978"

    at.selectbox(key="arch").set_value("cnn").run()

    assert metric_value(at, "Parameters") == "65,962"


def test_train_kernel_preset_changes_params(app_store):
    at = open_page("train")
    at.selectbox(key="arch").set_value("cnn").run()
    at.selectbox(key="kernel_preset_cnn").set_value("(1, 7)").run()
    at.button(key="apply_preset_cnn").click().run()

    assert not at.exception
    # Each conv weight goes from 3x3 = 9 to 1x7 = 7 values per channel pair: fewer parameters.
    params = int(metric_value(at, "Parameters").replace(",", ""))
    assert params < 65962
    stage_table = next(d.value for d in at.dataframe if "output" in d.value.columns)
    assert list(stage_table["output"]) == ["14x14", "7x7", "3x3"]


def test_train_rejects_bad_hidden_sizes(app_store):
    at = open_page("train")
    at.text_input(key="dense_hidden_sizes").set_value("64, 0, 64").run()

    assert any("hidden_sizes[1] must be at least 1" in e.value for e in at.error)
    assert at.button(key="start").disabled


def test_train_rejects_zero_learning_rate(app_store):
    at = open_page("train")
    at.number_input(key="lr").set_value(0.0).run()

    assert any("lr must be positive" in e.value for e in at.error)
    assert at.button(key="start").disabled


def test_compare_lists_shipped_models(app_store):
    at = open_page("compare")

    shipped = sorted(p.stem for p in (ROOT / "checkpoints").glob("*.safetensors"))
    if not shipped:
        pytest.skip("checkpoints/ has no shipped models yet")
    names = list(at.dataframe[0].value["name"])
    for arch in shipped:
        assert f"{arch} (shipped)" in names


def test_draw_empty_input_prompts(app_store):
    at = open_page("draw")

    if not list((ROOT / "checkpoints").glob("*.safetensors")):
        assert any("No trained models" in w.value for w in at.warning)
        return
    assert any("Draw a digit" in i.value for i in at.info)
    assert not at.subheader  # no "Answers" section without a digit


@pytest.mark.slow
def test_train_run_curve_appears(app_store, monkeypatch):
    """Start a tiny run from the Train page with a real worker and see its loss curve fill in."""
    monkeypatch.delenv("MNIST_LAB_NO_WORKER")
    at = open_page("train")
    at.number_input(key="epochs").set_value(2).run()
    at.number_input(key="train_subset").set_value(2000).run()
    at.text_input(key="run_name").set_value("apptest run").run()
    at.button(key="start").click().run()

    assert not at.exception
    deadline = time.monotonic() + 120
    status, points = "queued", 0
    while time.monotonic() < deadline:
        at.run()
        status = at.selectbox[-1].options[at.selectbox[-1].index] if at.selectbox else ""
        points = plotly_point_count(at, "live_loss")
        if "completed" in status and points:
            break
        time.sleep(1)

    assert "apptest run" in status
    assert "completed" in status
    assert points > 0
    assert any("test accuracy" in s.value for s in at.success)


def test_stage_rows_added_empty_copy_above():
    from app.config_form import rows_to_stages

    rows = [
        {"channels": 32, "kernel_size_h": 1, "kernel_size_w": 7, "stride_h": 1, "stride_w": 1, "pool_h": 2, "pool_w": 2},
        {"channels": float("nan"), "kernel_size_h": None, "kernel_size_w": None, "stride_h": None, "stride_w": None, "pool_h": None, "pool_w": None},
    ]

    stages = rows_to_stages(rows)
    assert stages[1] == stages[0]
    assert stages[1]["kernel_size"] == [1, 7]


def test_stage_cleared_cell_is_config_error():
    from app.config_form import rows_to_stages
    from core.errors import ConfigError
    from core.models import normalize_model_config

    rows = [{"channels": float("nan"), "kernel_size_h": 3, "kernel_size_w": 3, "stride_h": 1, "stride_w": 1, "pool_h": 2, "pool_w": 2}]
    stages = rows_to_stages(rows)

    assert stages[0]["channels"] is None
    with pytest.raises(ConfigError, match="channels"):
        normalize_model_config({"arch": "cnn", "stages": stages})


def test_train_rejects_non_numeric_hidden_sizes(app_store):
    at = open_page("train")
    at.text_input(key="dense_hidden_sizes").set_value("64, abc").run()

    assert not at.exception
    assert any("'abc' is not one" in e.value for e in at.error)
    assert at.button(key="start").disabled


def test_compare_delete_run(app_store):
    from core.store import RunStore

    store = RunStore(app_store)
    run_id = store.create_run({"arch": "dense"}, {"epochs": 1}, name="to delete", status="running")
    store.finish(run_id, "cancelled", error="cancelled at step 1")
    at = open_page("compare")
    at.checkbox(key="confirm_delete_0").check().run()
    at.button(key="delete_run_0").click().run()

    assert not at.exception
    assert any(f"Run {run_id} deleted" in s.value for s in at.success)
    assert store.list_runs() == []


def _open_train(**state) -> AppTest:
    """Run the Train page once with widget values preset through session state."""
    at = AppTest.from_file(str(VIEWS / "train.py"), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def _count(at: AppTest, label: str) -> int:
    return int(metric_value(at, label).replace(",", ""))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_train_budget_68k_fits(app_store, arch):
    at = _open_train(arch=arch, budget="68k")

    assert not at.exception
    params = _count(at, "Parameters")
    assert abs(params / 68_000 - 1) <= 0.03, f"{arch}: {params:,} parameters"
    assert any("Budget 68,000" in c.value for c in at.caption)
    assert not at.button(key="start").disabled


def test_train_lists_every_architecture(app_store):
    at = _open_train()

    assert at.selectbox(key="arch").options == [f"{spec.title} ({name})" for name, spec in ARCHITECTURES.items()]
    for name, spec in ARCHITECTURES.items():
        at.selectbox(key="arch").set_value(name).run()
        assert any(spec.paper in c.value and spec.description in c.value for c in at.caption), name


def test_train_unreachable_budget_blocks_start(app_store):
    at = _open_train(arch="cnn", budget="custom", budget_custom=100)

    assert not at.exception
    assert any("cannot reach 100 parameters" in w.value for w in at.warning)
    assert any("nearest reachable count" in w.value for w in at.warning)
    assert at.button(key="start").disabled


def test_train_kernel_and_pool_update_cost(app_store):
    from core.analysis import model_cost

    at = _open_train(arch="cnn")
    before = (_count(at, "Parameters"), _count(at, "FLOPs (multiply-adds)"), metric_value(at, "Receptive field (h x w)"))
    at.selectbox(key="kernel_preset_cnn").set_value("(1, 7)").run()
    at.button(key="apply_preset_cnn").click().run()
    at.selectbox(key="pool_preset_cnn").set_value("(1, 2)").run()
    at.button(key="apply_pool_cnn").click().run()

    assert not at.exception
    edited = default_model_config("cnn")
    for stage in edited["stages"]:
        stage["kernel_size"], stage["pool"] = [1, 7], [1, 2]
    cost = model_cost(edited)
    assert _count(at, "Parameters") == cost.params
    assert _count(at, "FLOPs (multiply-adds)") == cost.flops
    assert metric_value(at, "Receptive field (h x w)") == f"{cost.receptive_field[0]} x {cost.receptive_field[1]}"
    after = (cost.params, cost.flops, metric_value(at, "Receptive field (h x w)"))
    assert all(old != new for old, new in zip(before, after)), f"{before} -> {after}"
    stage_table = next(d.value for d in at.dataframe if "output" in d.value.columns)
    assert list(stage_table["output"]) == ["28x14", "28x7", "28x3"]


def test_train_kernel_too_large_blocks_start(app_store):
    from app.config_form import stages_to_rows

    stages = default_model_config("cnn")["stages"]
    stages[2]["kernel_size"] = [9, 9]  # stage 3 reads 7x7 after two 2x2 pools
    at = _open_train(arch="cnn", stage_rows_cnn=stages_to_rows(stages), stage_version_cnn=0)

    assert not at.exception
    assert any("kernel (9, 9) at stage 3 is larger than its 7x7 input" in e.value for e in at.error)
    assert at.button(key="start").disabled
    assert not at.metric  # no cost is shown for a config that cannot be built


@pytest.mark.parametrize(
    ("arch", "extra"),
    [("cnn", ("pointwise",)), ("mobilenetv2", ("num_blocks", "expand_ratio"))],
)
def test_train_editor_shows_stage_fields(app_store, arch, extra):
    at = _open_train(arch=arch)

    editor = next(d.value for d in at.dataframe if "groups" in d.value.columns)
    for column in ("channels", "kernel_size_h", "kernel_size_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
                   "pool_h", "pool_w", "groups", *extra):
        assert column in editor.columns, column
    assert "depthwise" not in editor.columns  # replaced by groups = 0


def test_train_start_stores_budget_and_augment(app_store):
    from core.store import RunStore

    at = _open_train(arch="mobilenetv2", budget="8k")
    at.toggle(key="augment").set_value(True).run()
    at.toggle(key="elastic").set_value(True).run()
    at.slider(key="rotate_deg").set_value(20.0).run()
    at.button(key="start").click().run()

    assert not at.exception
    run = RunStore(app_store).list_runs()[0]
    assert run["model_config"]["width_mult"] != 1.0  # fitted to the budget, not the slider's value
    assert run["train_config"]["augment"] is True
    assert run["train_config"]["elastic"] is True
    assert run["train_config"]["rotate_deg"] == 20.0


def test_train_elastic_needs_augment(app_store):
    at = _open_train()

    assert at.toggle(key="elastic").disabled
    at.toggle(key="augment").set_value(True).run()
    assert not at.toggle(key="elastic").disabled


def test_train_recipe_sets_defaults(app_store):
    """cnn_best trains longer with augmentation; its recipe sets those widgets, other architectures keep the defaults."""
    epochs = ARCHITECTURES["cnn_best"].recipe["epochs"]
    at = _open_train(arch="cnn_best")

    assert not at.exception
    assert epochs > 5
    assert at.number_input(key="epochs_cnn_best").value == epochs
    assert at.toggle(key="augment_cnn_best").value is True
    assert any(f"recipe: epochs {epochs}, augment True" in c.value for c in at.caption)

    at.selectbox(key="arch").set_value("cnn").run()
    assert at.number_input(key="epochs").value == 5
    assert at.toggle(key="augment").value is False
