"""The real command line, run as ``python -m core ...`` subprocesses from the repository root.

Every call passes --store (a folder under tmp_path) and --data-dir explicitly.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.models import ARCHITECTURES
from PIL import Image

from core.cli import build_parser
from tests.helpers import DATA_DIR, SHIPPED_CNN, run_cli, run_cli_parallel

# argparse has no public API that lists subcommands; its subparsers action keeps them in choices.
SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def with_paths(args: list[str], store: Path, data_dir: Path = DATA_DIR) -> list[str]:
    """Append the store and data options; both work after any subcommand."""
    return [*args, "--store", str(store), "--data-dir", str(data_dir)]


def cli(*args: str, store: Path, data_dir: Path = DATA_DIR):
    return run_cli(*with_paths(list(args), store, data_dir))


def parse_json(result) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def write_digit_png(path: Path, digit) -> None:
    """Save an MNIST digit as a 140x140 black-on-white RGB PNG, as a scanned drawing would look."""
    image = Image.fromarray(255 - digit.numpy()).resize((140, 140), Image.BILINEAR).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli") / "store"


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture(scope="module")
def trained(cli_store, data_dir):
    """One dense run trained through the CLI; returns its JSON output."""
    result = cli(
        "train", "--arch", "dense", "--epochs", "1", "--train-subset", "2000", "--device", "cpu",
        "--name", "cli dense", "--json", store=cli_store, data_dir=data_dir,
    )
    return parse_json(result)


@pytest.fixture(scope="module")
def digit_pngs(mnist, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for index in range(6):
        path = folder / f"digit_{index}.png"
        write_digit_png(path, mnist.test_images[index])
        paths.append(path)
    return paths, mnist.test_labels[:6].tolist()


def test_subcommands_listed():
    assert {"archs", "train", "runs", "evaluate", "predict", "cancel", "worker"} <= set(SUBCOMMANDS)


@pytest.fixture(scope="module")
def help_results(tmp_path_factory):
    store = tmp_path_factory.mktemp("help") / "store"
    commands = {"": ["--help"], **{name: [name, "--help"] for name in SUBCOMMANDS}}
    return run_cli_parallel({key: with_paths(args, store) for key, args in commands.items()})


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help_for_command(help_results, command):
    result = help_results[command]

    assert result.returncode == 0, result.stderr
    assert "usage: python -m core" in result.stdout
    assert "--store" in result.stdout
    assert "--data-dir" in result.stdout


def test_archs_json(store):
    rows = parse_json(cli("archs", "--json", store=store))

    assert [r["name"] for r in rows] == list(ARCHITECTURES)
    assert {r["name"]: r["params"] for r in rows}["dense"] == 67_978
    assert all(60_000 <= r["params"] <= 75_000 for r in rows)
    assert all(r["flops"] > 0 and len(r["receptive_field"]) == 2 for r in rows)


@pytest.mark.slow
def test_train_json(trained):
    assert set(trained) >= {"run_id", "arch", "params", "test_accuracy", "wall_time_s"}
    assert trained["arch"] == "dense"
    assert trained["params"] == 67_978
    assert 0.0 <= trained["test_accuracy"] <= 1.0
    assert trained["test_accuracy"] > 0.5
    assert trained["wall_time_s"] > 0
    assert trained["status"] == "completed"
    assert trained["name"] == "cli dense"


@pytest.mark.slow
def test_runs_json(trained, cli_store):
    runs = parse_json(cli("runs", "--json", store=cli_store))

    assert [r["id"] for r in runs] == [trained["run_id"]]
    assert runs[0]["status"] == "completed"
    assert runs[0]["test_accuracy"] == trained["test_accuracy"]


@pytest.mark.slow
def test_global_options_before_command(trained, cli_store):
    runs = parse_json(run_cli("--store", str(cli_store), "--data-dir", str(DATA_DIR), "runs", "--json"))

    assert [r["id"] for r in runs] == [trained["run_id"]]


def test_runs_empty_store(store):
    assert parse_json(cli("runs", "--json", store=store)) == []


@pytest.mark.slow
def test_evaluate_run_and_path(trained, cli_store, data_dir):
    results = run_cli_parallel({
        "run": with_paths(["evaluate", str(trained["run_id"]), "--json"], cli_store, data_dir),
        "path": with_paths(["evaluate", trained["checkpoint"], "--json"], cli_store, data_dir),
    })

    for key in ("run", "path"):
        output = parse_json(results[key])
        assert output["arch"] == "dense", key
        assert output["params"] == 67_978, key
        assert output["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-9), key
        assert output["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-4), key
        assert output["test_images"] == 10_000, key


def test_evaluate_missing_run(store):
    result = cli("evaluate", "42", "--json", store=store)

    assert result.returncode == 2
    assert "run 42 not found" in result.stderr


def test_evaluate_missing_data(dense_checkpoint, store, tmp_path):
    result = cli("evaluate", str(dense_checkpoint), store=store, data_dir=tmp_path / "nodata")

    assert result.returncode == 2
    assert "MNIST is not available" in result.stderr
    assert "t10k-images-idx3-ubyte" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_predict_json(trained, digit_pngs, cli_store):
    paths, _ = digit_pngs

    output = parse_json(cli("predict", *map(str, paths), "--model", str(trained["run_id"]), "--json", store=cli_store))

    assert [r["file"] for r in output] == [str(p) for p in paths]
    for row in output:
        assert len(row["probabilities"]) == 10
        assert math.isclose(sum(row["probabilities"]), 1.0, abs_tol=1e-4)
        assert row["prediction"] == int(np.argmax(row["probabilities"]))


def test_predict_shipped_cnn(digit_pngs, store):
    if not SHIPPED_CNN.is_file():
        pytest.skip(f"{SHIPPED_CNN} is missing; train it with `make pretrained`")
    paths, labels = digit_pngs

    output = parse_json(cli("predict", *map(str, paths), "--model", "cnn", "--json", store=store))

    assert [r["prediction"] for r in output] == labels


def test_predict_bad_files(dense_checkpoint, store, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(blank)
    text = tmp_path / "notes.png"
    text.write_text("not an image")

    result = cli("predict", str(blank), str(text), "--model", str(dense_checkpoint), "--json", store=store)
    output = json.loads(result.stdout)

    assert result.returncode == 1
    assert output[0]["prediction"] is None
    assert "no digit found" in output[0]["error"]
    assert output[1]["prediction"] is None
    assert "not an image" in output[1]["error"]


def test_predict_unknown_model(digit_pngs, store):
    paths, _ = digit_pngs

    result = cli("predict", str(paths[0]), "--model", "resnet", store=store)

    assert result.returncode == 2
    assert "not a run id, a shipped model name or a .safetensors file" in result.stderr


BAD_SETTINGS = {
    "unknown model key": (["--set", "depth=3"], "unknown setting 'depth'"),
    "unknown train key": (["--set", "train.warmup=3"], "unknown training setting 'warmup'"),
    "text for number": (["--set", "lr=fast"], "lr must be a finite number"),
    "zero epochs": (["--set", "epochs=0"], "epochs must be at least 1"),
    "missing equals": (["--set", "lr"], "expects key=value"),
    "arch via set": (["--set", "arch=dense"], "use --arch"),
    "stage index": (["--set", "stages.5.kernel_size=[3,3]"], "index '5' is not in 0..2"),
    "kernel too big": (["--set", "stages.2.kernel_size=[9,9]"], "kernel (9, 9) at stage 3"),
    "nested unknown": (["--set", "stages.0.kernels=[3,3]"], "unknown key 'kernels'"),
}


@pytest.fixture(scope="module")
def bad_set_results(tmp_path_factory, data_dir):
    store = tmp_path_factory.mktemp("bad-set") / "store"
    common = ["train", "--arch", "cnn", "--epochs", "1", "--train-subset", "500", "--device", "cpu"]
    results = run_cli_parallel({key: with_paths([*common, *args], store, data_dir) for key, (args, _) in BAD_SETTINGS.items()})
    return store, results


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_set_rejected(bad_set_results, case):
    _, results = bad_set_results
    result = results[case]

    assert result.returncode != 0
    assert BAD_SETTINGS[case][1] in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_set_creates_no_run(bad_set_results):
    store, _ = bad_set_results

    assert parse_json(cli("runs", "--json", store=store)) == []


def test_unknown_arch_rejected(store):
    result = cli("train", "--arch", "resnet", store=store)

    assert result.returncode == 2
    assert "invalid choice: 'resnet'" in result.stderr


@pytest.mark.slow
def test_train_with_set_and_export(store, tmp_path):
    export = tmp_path / "exported.safetensors"

    output = parse_json(cli(
        "train", "--arch", "cnn", "--epochs", "1", "--train-subset", "256", "--batch-size", "64", "--device", "cpu",
        "--set", "stages.*.kernel_size=[1,3]", "--set", "width_mult=0.25", "--set", "lr=0.01",
        "--export", str(export), "--json", store=store,
    ))

    from core.checkpoints import load_checkpoint
    from core.predictions import load_test_outputs, shipped_outputs_path

    loaded = load_checkpoint(export)
    assert output["arch"] == "cnn"
    assert [s["kernel_size"] for s in loaded.model_config["stages"]] == [[1, 3]] * 3
    assert loaded.model_config["width_mult"] == 0.25
    assert loaded.info["train_config"]["lr"] == 0.01
    assert loaded.params == output["params"]
    exported_outputs = load_test_outputs(shipped_outputs_path(export))
    assert exported_outputs.accuracy == output["test_accuracy"]


def test_cancel_queued_run(store):
    from core.store import RunStore

    run_store = RunStore(store)
    run_id = run_store.create_run({"arch": "dense"}, {})

    result = cli("cancel", str(run_id), store=store)

    assert result.returncode == 0, result.stderr
    assert run_store.get_run(run_id)["status"] == "cancelled"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--data-dir", "MISSING"], "MNIST is not available"),
        (["--train-subset", "99999"], "train_subset must be between 1 and 55,000"),
        (["--set", "hidden_sizes=[100000,100000]"], "more than the limit"),
    ],
)
def test_train_rejects_before_storing_run(store, tmp_path, options, message):
    args = ["train", "--arch", "dense", "--epochs", "1", "--store", str(store)]
    if options[0] == "--data-dir":
        args += ["--data-dir", str(tmp_path / "nodata")]
    else:
        args += ["--data-dir", str(DATA_DIR), *options]
    result = run_cli(*args)

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "no runs" in cli("runs", store=store).stdout


def test_missing_data_leaves_no_folders(store, tmp_path):
    cli("evaluate", "cnn", store=store, data_dir=tmp_path / "nodata")

    assert not (tmp_path / "nodata" / "MNIST").exists()
