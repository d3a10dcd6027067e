"""Widgets that edit a model config: per-stage kernel shapes, strides, pooling and depthwise choice.

The editor shows one row per stage with height and width in separate columns,
and converts the rows back into the plain-typed config that ``core`` validates.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from core.models import ArchSpec

KERNEL_PRESETS = ["(3, 3)", "(5, 5)", "(7, 7)", "(1, 7)", "(7, 1)", "(1, 3)", "(3, 1)"]


def stages_to_rows(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for stage in stages:
        row = {k: v for k, v in stage.items() if k not in ("kernel_size", "stride", "pool")}
        row["kernel_h"], row["kernel_w"] = stage["kernel_size"]
        row["stride_h"], row["stride_w"] = stage["stride"]
        if "pool" in stage:
            row["pool_h"], row["pool_w"] = stage["pool"]
        rows.append(row)
    return rows


def rows_to_stages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Convert editor rows to stages; a row added empty copies the stage above it.

    A single cleared cell stays None, so core rejects it with a message naming the stage.
    """
    stages = []
    previous: dict[str, Any] | None = None
    for row in rows:
        row = {k: _plain(v) for k, v in row.items()}
        if previous is not None and all(v is None for v in row.values()):
            row = dict(previous)
        previous = row
        stage = {k: v for k, v in row.items() if not k.endswith(("_h", "_w"))}
        stage["kernel_size"] = [row.get("kernel_h"), row.get("kernel_w")]
        stage["stride"] = [row.get("stride_h"), row.get("stride_w")]
        if "pool_h" in row:
            stage["pool"] = [row.get("pool_h"), row.get("pool_w")]
        stages.append({k: _plain(v) for k, v in stage.items()})
    return stages


def _plain(value: Any) -> Any:
    """Turn numpy scalars and floats that are whole numbers into plain ints (None stays None)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None  # pandas marks an empty cell as NaN
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _column_config(spec: ArchSpec) -> dict[str, Any]:
    number = st.column_config.NumberColumn
    config = {
        "channels": number("channels", min_value=1, step=1, help="output channels before width_mult"),
        "kernel_h": number("kernel h", min_value=1, max_value=28, step=1, help="kernel height"),
        "kernel_w": number("kernel w", min_value=1, max_value=28, step=1, help="kernel width"),
        "stride_h": number("stride h", min_value=1, max_value=28, step=1),
        "stride_w": number("stride w", min_value=1, max_value=28, step=1),
    }
    if spec.has_depthwise:
        config["num_blocks"] = number("blocks", min_value=1, max_value=8, step=1)
        config["expand_ratio"] = number("expand", min_value=1, max_value=8, step=1, help="hidden channels = input x expand")
        config["depthwise"] = st.column_config.CheckboxColumn("depthwise", help="off: full convolution (groups=1)")
    else:
        config["pool_h"] = number("pool h", min_value=1, max_value=28, step=1, help="max-pool window; 1 x 1 turns pooling off")
        config["pool_w"] = number("pool w", min_value=1, max_value=28, step=1)
    return config


def stage_editor(spec: ArchSpec, defaults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show the per-stage editor for ``spec`` and return the edited stages."""
    rows_key, version_key = f"stage_rows_{spec.name}", f"stage_version_{spec.name}"
    if rows_key not in st.session_state:
        st.session_state[rows_key] = stages_to_rows(defaults)
        st.session_state[version_key] = 0

    left, middle, right = st.columns([2, 1, 1], vertical_alignment="bottom")
    preset = left.selectbox("Kernel for every stage", KERNEL_PRESETS, key=f"kernel_preset_{spec.name}")
    apply_preset = middle.button("Apply to all stages", key=f"apply_preset_{spec.name}")
    reset = right.button("Reset stages", key=f"reset_stages_{spec.name}")

    editor_key = f"stage_editor_{spec.name}_{st.session_state[version_key]}"
    edited = st.data_editor(
        pd.DataFrame(st.session_state[rows_key]),
        key=editor_key,
        num_rows="dynamic",
        column_config=_column_config(spec),
        hide_index=False,
        width="stretch",
    )
    rows = edited.to_dict("records")

    if apply_preset or reset:
        if reset:
            rows = stages_to_rows(defaults)
        else:
            height, width = (int(v) for v in preset.strip("()").split(","))
            for row in rows:
                row["kernel_h"], row["kernel_w"] = height, width
        st.session_state[rows_key] = rows
        st.session_state[version_key] += 1  # a new editor key drops edits made against the old rows
        st.rerun()
    return rows_to_stages(rows)
