"""Bad training settings and odd run names, from the CLI and from the Train page under AppTest.

A rejected setting must name the value and the fix, and store no run. An odd run
name must be stored as data: it comes back unchanged, and no file or folder named
after it appears anywhere. The store folder holds only the SQLite files and
checkpoints/RUN_ID folders.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.store import MAX_NAME_LENGTH, RunStore
from tests.helpers import DATA_DIR, REPO_ROOT, python_env, run_cli_parallel

SQLITE_FILES = {"runs.sqlite", "runs.sqlite-wal", "runs.sqlite-shm"}
ODD_NAMES = {
    "parent traversal": "../../etc/passwd",
    "slash": "a/b",
    "windows path": "C:\\x",
    "non-ascii": "ünïcødé 数字 ✓ 🙂",
    "longest non-ascii": "数" * MAX_NAME_LENGTH,
    "sql": "'; DROP TABLE runs; --",
}


def assert_store_layout(store: Path) -> None:
    """Assert that ``store`` contains only the SQLite files and checkpoints/RUN_ID folders of weights."""
    assert {p.name for p in store.iterdir()} <= SQLITE_FILES | {"checkpoints"}
    checkpoints = store / "checkpoints"
    for folder in checkpoints.iterdir() if checkpoints.exists() else []:
        assert folder.is_dir(), folder
        assert re.fullmatch(r"[1-9][0-9]*", folder.name), folder
        assert {p.name for p in folder.iterdir()} <= {"model.safetensors", "model.json", "test_outputs.safetensors"}, folder


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- CLI: rejected settings -----------------------------------------------------

TRAIN = ["train", "--arch", "cnn", "--epochs", "1", "--train-subset", "500", "--device", "cpu"]
CLI_REJECTED = {
    "negative lr": (["--lr", "-0.1"], "lr must be positive, got -0.1; try 0.003 for Adam"),
    "zero lr": (["--lr", "0"], "lr must be positive, got 0.0"),
    "negative lr via set": (["--set", "train.lr=-1"], "lr must be positive, got -1.0"),
    "nan lr": (["--lr", "nan"], "train.lr must be a finite number, got nan"),
    "overflowing lr": (["--set", "lr=1e999"], "train.lr must be a finite number, got inf"),
    "empty lr": (["--set", "lr="], "train.lr must be a finite number, got ''"),
    "zero epochs": (["--epochs", "0"], "epochs must be at least 1, got 0"),
    "negative epochs": (["--epochs", "-3"], "epochs must be at least 1, got -3"),
    "text epochs": (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    "boolean epochs": (["--set", "epochs=true"], "train.epochs must be a whole number, got True"),
    "batch above subset": (["--batch-size", "4000"], "batch_size 4000 is larger than the 500 training images"),
    "batch above train split": (
        ["--batch-size", "60000", "--train-subset", "55000"],
        "batch_size 60000 is larger than the 55000 training images; use a batch size of at most 55000",
    ),
    "fractional batch": (["--set", "batch_size=64.5"], "train.batch_size must be a whole number, got 64.5"),
    "zero subset": (["--train-subset", "0"], "train_subset must be between 1 and 55,000, got 0"),
    "negative seed": (["--seed", "-1"], "seed must be a whole number from 0 to 4294967295, got -1"),
    "huge seed": (["--set", "seed=100000000000000000000"], "seed must be a whole number from 0 to 4294967295"),
    "unknown device": (["--set", "device=tpu"], "unknown device 'tpu'; choose one of: auto, cpu"),
    "empty key": (["--set", "=3"], "--set expects key=value, got '=3'"),
    "superscript index": (["--set", "stages.\u00b2.stride=[1,1]"], "index '\u00b2' is not in 0..2 (or *)"),
    "stage replaced by number": (["--set", "stages.0=5"], "stages[0] must be a mapping of settings, got 5"),
    "no stages": (["--set", "stages=[]"], "stages must list at least one stage"),
    "zero kernel": (["--set", "stages.*.kernel_size=[0,3]"], "kernel (0, 3) at stage 1 must be two whole numbers >= 1"),
    "text kernel": (["--set", "stages.0.kernel_size=big"], "stages[0].kernel_size must be a pair like [3, 3]"),
    "negative width": (["--set", "width_mult=-1"], "width_mult must be positive, got -1.0"),
    "dropout above one": (["--set", "dropout=1.5"], "dropout must be in [0, 1), got 1.5"),
    "name too long": (["--name", "n" * (MAX_NAME_LENGTH + 1)], "run name is 101 characters long; use at most 100 characters"),
    "name with tab": (["--name", "a\tb"], "run name contains control characters (U+0009 here)"),
    "name with newline": (["--name", "a\nb"], "run name contains control characters (U+000A here)"),
    "name with delete": (["--name", "a\x7fb"], "run name contains control characters (U+007F here)"),
    "name reversed": (["--name", "abc\u202edef"], "run name contains control characters (U+202E here)"),
    "name not utf-8": (["--name", os.fsdecode(b"caf\xe9")], "run name is not valid UTF-8 text"),
}


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI's main() in this process (torch is already imported) and return its exit code and stderr."""
    from core.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits with code 2 on a bad option value
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(CLI_REJECTED))
def test_cli_rejects_setting(tmp_path, capsys, case):
    options, message = CLI_REJECTED[case]
    store = tmp_path / "store"

    code, stderr = run_main([*TRAIN, *options, "--store", str(store), "--data-dir", str(DATA_DIR)], capsys)

    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    if store.exists():  # name errors are raised by the store itself, after it opened
        assert RunStore(store).list_runs() == []
        assert_store_layout(store)


# The same checks through `python -m core`: real argv decoding (bytes that are not UTF-8) and exit codes.
SUBPROCESS_CASES = ("negative lr", "superscript index", "name not utf-8")


@pytest.fixture(scope="module")
def cli_rejected(tmp_path_factory):
    store = tmp_path_factory.mktemp("rejected") / "store"
    paths = ["--store", str(store), "--data-dir", str(DATA_DIR)]
    results = run_cli_parallel({key: [*TRAIN, *CLI_REJECTED[key][0], *paths] for key in SUBPROCESS_CASES})
    return store, results


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_cli_process_rejects_setting(cli_rejected, case):
    store, results = cli_rejected
    result = results[case]

    assert result.returncode == 2
    assert CLI_REJECTED[case][1] in result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists() or RunStore(store).list_runs() == []


def test_cli_unknown_arch_lists_choices(tmp_path):
    result = run_cli_parallel({"arch": ["train", "--arch", "resnet", "--store", str(tmp_path / "store")]})["arch"]

    assert result.returncode == 2
    assert "argument --arch: invalid choice: 'resnet'" in result.stderr
    assert "'dense', 'cnn', 'se_cnn', 'mobilenetv2', 'efficientnet'" in result.stderr
    assert not (tmp_path / "store").exists()


# -- CLI: odd names are data ----------------------------------------------------


@pytest.fixture(scope="module")
def cli_named_runs(tmp_path_factory):
    """Train one tiny dense run per odd name, from a working folder three levels deep inside tmp."""
    root = tmp_path_factory.mktemp("names")
    cwd = root / "work" / "deep" / "cwd"
    cwd.mkdir(parents=True)
    store = root / "store"
    before = tree(root)

    processes = {}
    for key, name in ODD_NAMES.items():
        args = ["train", "--arch", "dense", "--epochs", "1", "--train-subset", "300", "--batch-size", "64",
                "--device", "cpu", "--name", name, "--json", "--store", str(store), "--data-dir", str(DATA_DIR)]
        processes[key] = subprocess.Popen(
            [sys.executable, "-m", "core", *args], cwd=cwd, env=python_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for key, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    listed = subprocess.run(
        [sys.executable, "-m", "core", "runs", "--store", str(store)], cwd=cwd, env=python_env(),
        capture_output=True, text=True, timeout=120,
    )
    return root, store, before, results, listed


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ODD_NAMES))
def test_cli_odd_name_round_trip(cli_named_runs, case):
    _, store, _, results, _ = cli_named_runs
    result = results[case]
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)

    assert output["name"] == ODD_NAMES[case]
    assert RunStore(store).get_run(output["run_id"])["name"] == ODD_NAMES[case]
    assert Path(output["checkpoint"]) == store / "checkpoints" / str(output["run_id"]) / "model.safetensors"


@pytest.mark.slow
def test_cli_odd_names_listed(cli_named_runs):
    _, _, _, _, listed = cli_named_runs

    assert listed.returncode == 0, listed.stderr
    for name in ODD_NAMES.values():
        assert name[:24] in listed.stdout  # the table shows the first 24 characters


@pytest.mark.slow
def test_cli_odd_names_make_no_paths(cli_named_runs):
    root, store, before, _, _ = cli_named_runs

    created = tree(root) - before
    assert {path for path in created if not path.startswith("store")} == set()
    assert_store_layout(store)
    assert len(list((store / "checkpoints").iterdir())) == len(ODD_NAMES)
    assert not (REPO_ROOT / "a").exists()
    assert not (REPO_ROOT / "C:\\x").exists()


# -- Train page -----------------------------------------------------------------


def open_train() -> AppTest:
    return AppTest.from_file(str(REPO_ROOT / "app" / "views" / "train.py"), default_timeout=60).run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_train_page_batch_above_subset(app_store):
    at = open_train()
    at.number_input(key="train_subset").set_value(3000).run()
    at.number_input(key="batch_size").set_value(5000).run()

    assert errors(at) == [
        "Training settings are invalid: batch_size 5000 is larger than the 3000 training images; "
        "use a batch size of at most 3000"
    ]
    assert at.button(key="start").disabled
    assert RunStore(app_store).list_runs() == []


def test_train_page_seed_out_of_range(app_store):
    at = open_train()
    at.number_input(key="seed").set_value(2**40).run()

    assert errors(at) == [f"Training settings are invalid: seed must be a whole number from 0 to {2**32 - 1}, got {2**40}"]
    assert at.button(key="start").disabled


@pytest.mark.parametrize("key, value", [("lr", -0.5), ("epochs", 0), ("batch_size", 1), ("weight_decay", -1.0)])
def test_train_page_widget_minimum_kept(app_store, key, value):
    # Streamlit enforces min_value on the server: a value below it is dropped, so it never reaches a run.
    at = open_train()
    at.number_input(key=key).set_value(value).run()
    at.button(key="start").click().run()

    assert not at.exception
    stored = RunStore(app_store).list_runs()
    assert len(stored) == 1
    assert stored[0]["train_config"][key] != value
    assert stored[0]["train_config"][key] == at.number_input(key=key).value


@pytest.mark.parametrize(
    "name, fragment",
    [("tab\there", "U+0009"), ("right\u202eto left", "U+202E"), ("bell\x07", "U+0007")],
    ids=["tab", "bidi override", "bell"],
)
def test_train_page_rejects_name(app_store, name, fragment):
    at = open_train()
    at.text_input(key="run_name").set_value(name).run()

    assert errors(at) == [
        f"Training settings are invalid: run name contains control characters ({fragment} here); "
        "remove newlines, tabs and text-direction marks"
    ]
    assert at.button(key="start").disabled
    assert RunStore(app_store).list_runs() == []


def test_train_page_long_name_cut(app_store):
    # The text box takes at most MAX_NAME_LENGTH characters (max_chars); Streamlit cuts a longer value.
    at = open_train()
    at.text_input(key="run_name").set_value("n" * 150).run()
    at.button(key="start").click().run()

    assert not at.exception
    assert [run["name"] for run in RunStore(app_store).list_runs()] == ["n" * MAX_NAME_LENGTH]


@pytest.mark.parametrize("case", list(ODD_NAMES))
def test_train_page_odd_name_is_data(app_store, case):
    name = ODD_NAMES[case]
    repo_before = {p.name for p in REPO_ROOT.iterdir()}
    at = open_train()
    at.text_input(key="run_name").set_value(name).run()
    at.button(key="start").click().run()

    assert not at.exception
    assert not errors(at)
    runs = RunStore(app_store).list_runs()
    assert [run["name"] for run in runs] == [name]
    assert at.selectbox[-1].options == [f"#{runs[0]['id']} {name} (queued)"]
    assert_store_layout(app_store)
    assert {p.name for p in app_store.parent.iterdir()} == {"store"}
    assert {p.name for p in REPO_ROOT.iterdir()} == repo_before


def test_compare_page_shows_odd_names(app_store):
    store = RunStore(app_store)
    for name in ODD_NAMES.values():
        store.create_run({"arch": "dense"}, {"epochs": 1}, name=name)

    at = AppTest.from_file(str(REPO_ROOT / "app" / "views" / "compare.py"), default_timeout=60).run()

    assert not at.exception
    names = list(at.dataframe[0].value["name"])
    for run in store.list_runs():
        assert f"#{run['id']} {run['name']}" in names


def test_hidden_sizes_markup_escaped(app_store):
    at = open_train()
    at.text_input(key="dense_hidden_sizes").set_value("64, ![x](http://127.0.0.1:9/x.png)").run()

    message = errors(at)[0]
    assert "\\!\\[x\\]" in message
    assert "![x]" not in message
    assert at.button(key="start").disabled



def test_chart_names_escaped():
    from core.charts import accuracy_figure, confusion_figure, loss_figure, params_figure

    name = "<b>bold</b> <a href='http://127.0.0.1:9/'>link</a> & co"
    escaped = "&lt;b&gt;bold&lt;/b&gt; &lt;a href='http://127.0.0.1:9/'&gt;link&lt;/a&gt; &amp; co"
    steps = [{"run_id": 1, "step": 1, "epoch": 0.5, "train_loss": 1.0}]
    epochs = [{"run_id": 1, "epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_accuracy": 0.5, "val_accuracy": 0.4}]
    row = {"key": "run:1", "name": name, "architecture": "dense", "params": 67_978, "test_accuracy": 0.5}

    loss = loss_figure({1: name}, steps, epochs)
    accuracy = accuracy_figure({1: name}, epochs)
    confusion = confusion_figure([[1, 0], [0, 1]], title=name)
    params = params_figure([row], set())

    assert [trace.name for trace in loss.data] == [f"{escaped} train (step)", f"{escaped} train", f"{escaped} validation"]
    assert [trace.name for trace in accuracy.data] == [f"{escaped} train", f"{escaped} validation"]
    assert confusion.layout.title.text == escaped
    assert list(params.data[0].text) == [escaped]
