"""The benchmark's quick mode through the CLI: every figure comes out, sane and in the report.

The speed targets themselves are checked by the full benchmark (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import json
import math

import pytest

from core.bench import BEGIN, CPU_TARGETS, END, check_targets
from core.budget import TOLERANCE
from core.errors import LabError
from core.inference import shipped_models
from core.results import replace_section
from tests.helpers import DATA_DIR, run_cli


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `bench --quick --json --markdown FILE` run; returns (figures, report path)."""
    report = tmp_path_factory.mktemp("bench") / "benchmarks.md"
    result = run_cli("bench", "--quick", "--json", "--markdown", str(report), "--data-dir", str(DATA_DIR), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), report


def test_environment_lists_hardware_and_versions(quick):
    environment = quick[0]["environment"]
    assert environment["device"] == "cpu"
    assert environment["threads"] >= 1
    assert environment["torch"]
    assert environment["torchvision"]
    assert environment["python"]
    assert "cores" in environment["machine"]


@pytest.mark.parametrize("arch", ["dense", "cnn"])
def test_pipelines_reach_comparable_accuracy(quick, arch):
    row = quick[0]["throughput"][arch]
    engine, reference = row["engine"], row["reference"]
    for figures in (engine, reference):
        assert positive(figures["images_per_s"])
        assert positive(figures["epoch_time_s"])
        assert figures["epochs"] == 1
    assert abs(row["params"] - 68_000) <= TOLERANCE * 68_000
    assert row["speedup"] == pytest.approx(engine["images_per_s"] / reference["images_per_s"])
    # Same model, data, optimizer and schedule; only the batch order and the pipeline differ.
    assert engine["test_accuracy"] > 0.5
    assert reference["test_accuracy"] > 0.5
    assert abs(engine["test_accuracy"] - reference["test_accuracy"]) < 0.1


def test_time_to_accuracy_reports_each_seed(quick):
    preset = quick[0]["time_to_accuracy"]
    assert preset["arch"] == "cnn"
    assert preset["reached_all"]
    (seed,) = preset["seeds"]
    assert seed["epoch"] == 1
    assert positive(seed["data_load_s"])
    assert positive(seed["train_s"])
    assert seed["wall_s"] > seed["train_s"]  # the cold start adds loading the data and building the model
    assert seed["epochs"][0]["test_accuracy"] >= preset["target_accuracy"]
    assert preset["train_s"]["mean"] == pytest.approx(seed["train_s"])


def test_inference_covers_every_shipped_model(quick):
    inference = quick[0]["inference"]
    assert set(inference["models"]) == {entry.path.stem for entry in shipped_models()}
    for figures in inference["models"].values():
        assert 0 < figures["p50_ms"] <= figures["p95_ms"]
        assert positive(figures["images_per_s"])
        assert figures["batch"] == 256
    assert inference["slowest_p50_ms"] == max(m["p50_ms"] for m in inference["models"].values())


def test_draw_path_and_store_figures(quick):
    figures = quick[0]
    draw, store = figures["draw"], figures["store"]
    assert draw["models"] == len(shipped_models())
    assert 0 < draw["p50_ms"] <= draw["p95_ms"]
    assert store["table_rows"] == store["runs"] + len(shipped_models())
    assert store["curve_points"] == store["curve_runs"] * store["points_per_run"]
    assert positive(store["table_s"])
    assert positive(store["curves_s"])


def test_targets_and_markdown_report(quick):
    figures, report = quick
    assert [check["name"] for check in figures["targets"]] == [name for name, _, _ in CPU_TARGETS]
    text = report.read_text()
    assert BEGIN in text
    assert END in text
    assert "python -m core bench --quick" in text
    for heading in ("Training: engine against the tutorial pipeline", "Time to 50.0% test accuracy", "Draw path", "Run store"):
        assert heading in text
    assert figures["environment"]["machine"] in text


def test_targets_compare_with_bounds(quick):
    figures = json.loads(json.dumps(quick[0]))
    figures["throughput"]["dense"]["speedup"] = 8.0  # exactly at the bound: met
    figures["throughput"]["cnn"]["speedup"] = 1.99
    figures["store"]["table_s"] = 1.0  # the bound is strict: "under 1 second"
    checks = {check["name"]: check["met"] for check in check_targets(figures)}
    assert checks["dense epoch speedup over the reference"] is True
    assert checks["cnn epoch speedup over the reference"] is False
    assert checks["compare table load (s)"] is False


def test_report_needs_its_markers(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nWritten by hand.\n")
    with pytest.raises(LabError, match="no <!-- bench:begin --> ... <!-- bench:end --> markers"):
        replace_section(page, BEGIN, END, "table", title="Benchmarks")
    assert page.read_text() == "# Benchmarks\n\nWritten by hand.\n"


def test_bench_rejects_empty_checkpoints(tmp_path):
    result = run_cli("bench", "--quick", "--checkpoints", str(tmp_path), "--data-dir", str(DATA_DIR))
    assert result.returncode == 2
    assert f"no shipped models (.safetensors files) in {tmp_path}" in result.stderr
