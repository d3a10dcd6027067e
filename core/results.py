"""Write the results table of the shipped checkpoints into docs/results.md.

Each shipped checkpoint's JSON record contains its config, test accuracy, training
time and the command that trained it. FLOPs and receptive fields are measured
again from the config, so the table always matches ``core.analysis``. Only
the part of the file between the two markers is replaced; the reading of the
results around it is written by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from core.analysis import format_count, model_cost
from core.errors import LabError
from core.models import ARCHITECTURES
from core.training import TrainConfig

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PRESET = "cnn_best"  # reported apart from the matched-budget table, with its recipe
# Test accuracy each architecture should reach at the 68k budget with its default recipe.
TARGETS = {"dense": 0.976, "cnn": 0.991, "vit": 0.980, PRESET: 0.996}
DEFAULT_TARGET = 0.988  # every other convolutional architecture


def machine_name() -> str:
    """Return the CPU model and core count of this machine, e.g. 'AMD EPYC 9B14, 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def read_records(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Return the JSON record of every shipped checkpoint in ``directory``, by architecture."""
    records = {}
    for path in sorted(Path(directory).glob("*.json")):
        record = json.loads(path.read_text())
        records[record["model_config"]["arch"]] = record
    return records


def _recipe(record: dict[str, Any]) -> str:
    """Return the training settings that differ from TrainConfig's defaults, e.g. 'epochs 15, augment'."""
    defaults = TrainConfig()
    parts = []
    for key, value in record["train_config"].items():
        if key in ("device", "seed") or getattr(defaults, key, None) == value:
            continue
        parts.append(key if value is True else f"{key} {value}")
    return ", ".join(parts) or "defaults"


def _command(arch: str, record: dict[str, Any]) -> str:
    """Return the recorded training command with its machine-specific paths replaced by their roles.

    The data folder becomes DATA_DIR, the store the Makefile's runs/pretrained, and the export path
    the shipped file it was copied to.
    """
    command = record.get("command")
    if not command:
        return "not recorded"
    command = re.sub(r"--data-dir \S+", "--data-dir DATA_DIR", command)
    command = re.sub(r"--store \S+", "--store runs/pretrained", command)
    return re.sub(r"--export \S+", f"--export checkpoints/{arch}.safetensors", command)


def _row(arch: str, record: dict[str, Any]) -> str:
    cost = model_cost(record["model_config"])
    accuracy = record["test_accuracy"]
    target = TARGETS.get(arch, DEFAULT_TARGET)
    met = "yes" if accuracy >= target else "**no**"
    field = "x".join(map(str, cost.receptive_field))
    minutes = record["wall_time_s"] / 60
    return (
        f"| {ARCHITECTURES[arch].title} (`{arch}`) | {cost.params:,} | {format_count(cost.flops)} | {field} "
        f"| {record['train_config']['epochs']} | {accuracy:.2%} | {target:.1%} | {met} | {minutes:.1f} |"
    )


HEADER = (
    "| Architecture | Parameters | FLOPs | RF (h x w) | Epochs | Test accuracy | Target | Met | Training time (min) |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
)


def results_table(directory: str | os.PathLike) -> str:
    """Return Markdown for every shipped checkpoint: the matched-budget table, then the preset."""
    records = read_records(directory)
    missing = [arch for arch in ARCHITECTURES if arch not in records]
    if missing:
        raise LabError(
            f"no shipped checkpoint for {', '.join(missing)} in {directory}; train them with `make pretrained` first"
        )

    budget_rows = [_row(arch, records[arch]) for arch in ARCHITECTURES if arch != PRESET]
    preset = records[PRESET]
    lines = [
        f"Machine: {machine_name()}, device `{records['cnn']['device']}`. FLOPs are multiply-adds per 28x28 image,",
        "counted by `torch.utils.flop_counter.FlopCounterMode`; RF is the receptive field of the last stage.",
        "",
        "### All architectures at the 68k budget",
        "",
        HEADER,
        *budget_rows,
        "",
        "### Best-accuracy preset",
        "",
        HEADER,
        _row(PRESET, preset),
        "",
        f"Recipe: {_recipe(preset)}. Command: `{_command(PRESET, preset)}`",
        "",
        "### Commands",
        "",
        "Each shipped model was trained by this command (the data folder written as DATA_DIR, the store and",
        "export paths as the Makefile sets them):",
        "",
        *[f"- `{arch}`: `{_command(arch, records[arch])}`" for arch in ARCHITECTURES],
    ]
    return "\n".join(lines)


def replace_section(output: str | os.PathLike, begin: str, end: str, text: str, *, title: str) -> Path:
    """Replace what lies between the ``begin`` and ``end`` markers in ``output`` with ``text``.

    A missing file is created with a ``title`` heading and the markers. A file without the
    markers is left untouched and reported, because the text around them is written by hand.
    """
    output = Path(output)
    current = output.read_text() if output.exists() else f"# {title}\n\n{begin}\n{end}\n"
    if begin not in current or end not in current:
        raise LabError(f"{output} has no {begin} ... {end} markers; add them where the generated part belongs")
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    output.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    return output


def write_results(directory: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Replace the table between the markers in ``output`` (created with them if missing)."""
    return replace_section(output, BEGIN, END, results_table(directory), title="Results")
