"""Untrusted weight files: pickles (never executed), malformed safetensors headers, and mismatched configs.

The pickle cases carry a payload that creates a marker file when unpickled. Each
test asserts that the marker does not exist afterwards, in this process and in the CLI.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoints import METADATA_KEY, load_checkpoint, read_checkpoint_record, save_checkpoint
from core.errors import CheckpointError
from core.models import build_model, default_model_config
from tests.helpers import DATA_DIR, run_cli_parallel


class CreatesFileWhenUnpickled:
    """Pickle payload that creates ``path`` when unpickled: a harmless stand-in for running any code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def trap(marker: Path) -> dict:
    return {"model_config": default_model_config("dense"), "state_dict": CreatesFileWhenUnpickled(str(marker))}


PICKLE_WRITERS = {
    "torch.save zip": lambda payload, path: torch.save(payload, path),
    "torch.save legacy": lambda payload, path: torch.save(payload, path, _use_new_zipfile_serialization=False),
    "pickle protocol 2": lambda payload, path: path.write_bytes(pickle.dumps(payload, protocol=2)),
    "pickle protocol 5": lambda payload, path: path.write_bytes(pickle.dumps(payload, protocol=5)),
}


@pytest.mark.parametrize("writer", list(PICKLE_WRITERS))
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_pickle_named_and_not_run(tmp_path, writer, suffix):
    marker = tmp_path / "executed.txt"
    path = tmp_path / f"model{suffix}"
    PICKLE_WRITERS[writer](trap(marker), path)

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    message = str(caught.value)
    assert str(path) in message
    assert "is a pickle file (as torch.save writes), not a safetensors file" in message
    assert "unpickling can run any code" in message
    assert not marker.exists()


def test_text_pickle_rejected_unrun(tmp_path):
    # Protocol 0 starts with a plain opcode, not 0x80, so it gets the generic message. It is still never run.
    marker = tmp_path / "executed.txt"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(trap(marker), protocol=0))

    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)

    assert not marker.exists()


def test_pickle_trap_is_live(tmp_path):
    # Control: the payload used above does create the marker when it is unpickled.
    marker = tmp_path / "executed.txt"
    path = tmp_path / "model.pt"
    PICKLE_WRITERS["torch.save zip"](trap(marker), path)

    torch.load(path, weights_only=False)

    assert marker.exists()


def raw_safetensors(header: bytes, *, declared_length: int | None = None, body: bytes = b"") -> bytes:
    """Bytes of a safetensors file: an 8-byte little-endian header length, the JSON header, the tensor data."""
    length = len(header) if declared_length is None else declared_length
    return struct.pack("<Q", length) + header + body


def lab_header(record: object) -> bytes:
    return json.dumps({"__metadata__": {METADATA_KEY: json.dumps(record)}}).encode()


BAD_FILES = {
    "length past end": (raw_safetensors(b'{"__metadata__":{}}', declared_length=10_000), "invalid header length"),
    "length 2**63": (raw_safetensors(b"{}", declared_length=2**63), "header too large"),
    "length 2**64-1": (raw_safetensors(b"{}", declared_length=2**64 - 1), "header too large"),
    "length 200 MB": (raw_safetensors(b"{}", declared_length=200_000_000), "header too large"),
    "shorter than length field": (b"\x05\x00\x00", "header too small"),
    "header not json": (raw_safetensors(b"this is not json"), "invalid JSON in header"),
    "offsets past end": (
        raw_safetensors(b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}', body=b"\0" * 16),
        "not a readable safetensors file",
    ),
    "record is a list": (raw_safetensors(lab_header([1, 2, 3])), "has no model_config object in its header"),
    "model_config is text": (raw_safetensors(lab_header({"model_config": "cnn"})), "has no model_config object in its header"),
    "model_config without arch": (raw_safetensors(lab_header({"model_config": {"width_mult": 1.0}})), "without an architecture name"),
    "config not json": (
        raw_safetensors(json.dumps({"__metadata__": {METADATA_KEY: "{broken"}}).encode()),
        "has a corrupt config in its header",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_file_rejected(tmp_path, case):
    data, fragment = BAD_FILES[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    assert fragment in str(caught.value)
    assert str(path) in str(caught.value)


def test_header_only_read_rejects_too(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(BAD_FILES["length 2**63"][0])

    with pytest.raises(CheckpointError, match="header too large"):
        read_checkpoint_record(path)


def test_folder_is_not_checkpoint(tmp_path):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(folder)


def test_other_width_mismatch_listed(tmp_path):
    narrow = default_model_config("cnn")
    narrow["width_mult"] = 0.5
    path = save_checkpoint(tmp_path / "narrow.safetensors", build_model(narrow), default_model_config("cnn"), {})

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)

    message = str(caught.value)
    assert "do not match its config" in message
    assert "stages.0.0.0.weight: file has (16, 1, 3, 3), config needs (32, 1, 3, 3)" in message


def test_dropped_tensor_listed(tmp_path):
    model = build_model(default_model_config("dense"))
    path = save_checkpoint(tmp_path / "dense.safetensors", model, default_model_config("dense"), {})
    record = read_checkpoint_record(path)
    tensors = dict(model.state_dict())
    del tensors["net.10.bias"]  # the output layer's bias
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(record)})

    with pytest.raises(CheckpointError, match="do not match its config: missing net.10.bias"):
        load_checkpoint(path)


# -- the CLI with the same files ----------------------------------------------


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, dense_checkpoint):
    """Run evaluate and predict on bad weight files, all at once; return results, files and the marker."""
    folder = tmp_path_factory.mktemp("bad-weights")
    marker = folder / "executed.txt"
    files = {
        "pickle": folder / "model.pt",
        "header": folder / "header.safetensors",
        "mismatch": folder / "mismatch.safetensors",
        "truncated": folder / "truncated.safetensors",
    }
    torch.save(trap(marker), files["pickle"])
    files["header"].write_bytes(BAD_FILES["length past end"][0])
    save_checkpoint(files["mismatch"], build_model(default_model_config("cnn")), default_model_config("se_cnn"), {})
    files["truncated"].write_bytes(dense_checkpoint.read_bytes()[:5000])
    image = folder / "digit.png"
    image.write_bytes(b"never read: the model fails to load first")

    store = folder / "store"
    common = ["--store", str(store), "--data-dir", str(DATA_DIR)]
    commands = {f"evaluate {key}": ["evaluate", str(path), *common] for key, path in files.items()}
    commands["predict pickle"] = ["predict", str(image), "--model", str(files["pickle"]), *common]
    commands["evaluate huge run id"] = ["evaluate", "99999999999999999999", *common]
    return run_cli_parallel(commands), files, marker


CLI_MESSAGES = {
    "evaluate pickle": "is a pickle file (as torch.save writes)",
    "predict pickle": "is a pickle file (as torch.save writes)",
    "evaluate header": "invalid header length",
    "evaluate mismatch": "do not match its config: missing stages.0.1.expand.bias",
    "evaluate truncated": "truncated or corrupt",
    "evaluate huge run id": "invalid run id 99999999999999999999",
}


@pytest.mark.parametrize("command", list(CLI_MESSAGES))
def test_cli_rejects_bad_weights(cli_results, command):
    results, _, _ = cli_results
    result = results[command]

    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert CLI_MESSAGES[command] in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_never_unpickles(cli_results):
    _, files, marker = cli_results

    assert files["pickle"].is_file()
    assert not marker.exists()
