"""Checkpoints: exact round-trip, config mismatch, corrupt files, and no unpickling of foreign files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from core.checkpoints import load_checkpoint, read_checkpoint_record, save_checkpoint
from core.data import normalize
from core.errors import CheckpointError
from core.models import build_model, default_model_config, normalize_model_config


class CreatesFileWhenUnpickled:
    """Pickle payload that creates ``path`` when unpickled: a harmless proxy for arbitrary code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def saved_model(tmp_path, arch: str = "cnn"):
    torch.manual_seed(0)
    config = normalize_model_config(default_model_config(arch))
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / f"{arch}.safetensors", model, config, {"test_accuracy": 0.5, "note": "ünïcødé"})
    return model, config, path


@pytest.mark.parametrize("arch", ["cnn", "efficientnet"])
def test_round_trip_same_outputs(tmp_path, mnist, arch):
    model, config, path = saved_model(tmp_path, arch)
    x = normalize(mnist.test_images[:16])

    loaded = load_checkpoint(path)

    model.to(memory_format=torch.channels_last)  # as loaded on CPU, so both sum in the same order
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.model_config == config
    assert loaded.arch == arch
    assert loaded.info["test_accuracy"] == 0.5
    assert loaded.info["note"] == "ünïcødé"
    assert not loaded.model.training


def test_trained_model_round_trip(dense_result, dense_checkpoint, mnist):
    from core.training import evaluate

    loaded = load_checkpoint(dense_checkpoint)
    result = evaluate(loaded.model, mnist.test_images, mnist.test_labels)

    assert result.accuracy == dense_result.test.accuracy
    assert loaded.params == 67_978


def test_json_written_beside(tmp_path):
    _, config, path = saved_model(tmp_path)

    record = json.loads(path.with_suffix(".json").read_text())

    assert record["model_config"] == config
    assert record == read_checkpoint_record(path)


def test_suffix_forced_to_safetensors(tmp_path):
    model = build_model(default_model_config("dense"))

    path = save_checkpoint(tmp_path / "weights.pt", model, default_model_config("dense"), {})

    assert path.name == "weights.safetensors"
    assert path.is_file()
    assert not (tmp_path / "weights.pt").exists()


def test_other_arch_config_rejected(tmp_path):
    cnn = build_model(default_model_config("cnn"))
    path = save_checkpoint(tmp_path / "mixed.safetensors", cnn, default_model_config("se_cnn"), {})

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    message = str(caught.value)
    assert "do not match its config" in message
    assert "missing stages.0.1.reduce.weight" in message
    assert "more" in message  # the list is cut after 8 problems, with a count of the rest


def test_dense_weights_cnn_config_rejected(tmp_path):
    dense = build_model(default_model_config("dense"))
    path = save_checkpoint(tmp_path / "mixed.safetensors", dense, default_model_config("cnn"), {})

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    message = str(caught.value)
    assert "missing classifier.weight" in message
    assert "missing stages.0.0.0.weight" in message


def test_changed_kernel_rejected(tmp_path):
    cnn = build_model(default_model_config("cnn"))
    config = default_model_config("cnn")
    config["stages"][0]["kernel_size"] = [1, 7]
    path = save_checkpoint(tmp_path / "kernel.safetensors", cnn, config, {})

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    assert "stages.0.0.0.weight: file has (32, 1, 3, 3), config needs (32, 1, 1, 7)" in str(caught.value)


def test_unbuildable_config_rejected(tmp_path):
    model = build_model(default_model_config("dense"))
    path = save_checkpoint(tmp_path / "bad.safetensors", model, {"arch": "transformer"}, {})

    with pytest.raises(CheckpointError, match="cannot be built"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_rejected(tmp_path, keep):
    _, _, path = saved_model(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")

    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_foreign_safetensors_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))

    with pytest.raises(CheckpointError, match="no MNIST Lab config"):
        load_checkpoint(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_never_executed(tmp_path, writer):
    marker = tmp_path / "executed.txt"
    payload = {"model_config": default_model_config("dense"), "trap": CreatesFileWhenUnpickled(str(marker))}
    path = tmp_path / "model.safetensors"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)

    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_checkpoint_record(path)

    assert not marker.exists()


def test_pickle_payload_is_live(tmp_path):
    # Control for the test above: the same payload does create the file when unpickled.
    marker = tmp_path / "executed.txt"

    pickle.loads(pickle.dumps(CreatesFileWhenUnpickled(str(marker)))).close()

    assert marker.exists()
