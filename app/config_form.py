"""Widgets that edit a model config, derived from the architecture's config dataclass.

Staged architectures get one editor row per stage, with the height and width of
every (height, width) field (kernel_size, stride, dilation, pool) in separate
columns. Every other setting gets a widget chosen by its type, so a newly
registered architecture needs no code here. The widgets return the plain-typed
config that ``core`` validates.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import pandas as pd
import streamlit as st

from core.analysis import format_count

from core.models import ArchSpec

KERNEL_PRESETS = ["(3, 3)", "(5, 5)", "(7, 7)", "(1, 7)", "(7, 1)", "(1, 3)", "(3, 1)"]
POOL_PRESETS = ["(2, 2)", "(1, 2)", "(2, 1)", "(1, 1)"]

# Column labels and help for stage fields; a field not listed here is labelled by its name.
STAGE_COLUMNS = {
    "channels": ("channels", "output channels before width_mult"),
    "num_blocks": ("blocks", "blocks in this stage; the first one applies the stride"),
    "expand_ratio": ("expand", "hidden channels = input x expand"),
    "groups": ("groups", "1: full convolution, 0: depthwise (one group per input channel), or a divisor of both channel counts"),
    "pointwise": ("pointwise", "a 1x1 convolution after the spatial one, mixing channels across groups"),
}
PAIR_LABELS = {"dilation": "dil"}  # "dilation h" does not fit a small column, so its h and w looked alike
PAIR_HELP = {
    "kernel_size": "kernel",
    "stride": "stride",
    "dilation": "dilation: spacing between kernel taps",
    "pool": "max-pool window; 1 x 1 turns pooling off",
}


def _field_types(cls: type) -> dict[str, Any]:
    """Map each dataclass field of ``cls`` to its type, with ``X | None`` reduced to ``X``."""
    hints = typing.get_type_hints(cls)
    resolved = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        resolved[field.name] = hint
    return resolved


def stage_class(spec: ArchSpec) -> type | None:
    """Return the dataclass of one stage of ``spec``, or None when its config has no list of stages."""
    hint = _field_types(spec.config_class).get("stages")
    if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        return typing.get_args(hint)[0]
    return None


def _is_pair(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and len(typing.get_args(hint)) == 2


# -- stage editor -------------------------------------------------------------


def stages_to_rows(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten stages into editor rows: a (height, width) pair ``pool`` becomes ``pool_h`` and ``pool_w``."""
    rows = []
    for stage in stages:
        row = {}
        for name, value in stage.items():
            if isinstance(value, (list, tuple)) and len(value) == 2:
                row[f"{name}_h"], row[f"{name}_w"] = value
            else:
                row[name] = value
        rows.append(row)
    return rows


def rows_to_stages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Convert editor rows to stages; a row added empty copies the stage above it.

    A single cleared cell stays None, so core rejects it with a message naming the stage.
    """
    stages = []
    previous: dict[str, Any] | None = None
    for row in rows:
        row = {name: _plain(value) for name, value in row.items()}
        # A new row's checkboxes start unticked, so False counts as empty too.
        if previous is not None and all(value is None or value is False for value in row.values()):
            row = dict(previous)
        previous = row

        pairs = [name[:-2] for name in row if name.endswith("_h") and f"{name[:-2]}_w" in row]
        paired = {f"{name}_h" for name in pairs} | {f"{name}_w" for name in pairs}
        stage = {name: value for name, value in row.items() if name not in paired}
        for name in pairs:
            stage[name] = [row[f"{name}_h"], row[f"{name}_w"]]
        stages.append(stage)
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


def _column_config(stage_cls: type) -> dict[str, Any]:
    """Build one editor column per stage field, and two for each (height, width) pair."""
    number = st.column_config.NumberColumn
    choices = getattr(stage_cls, "CHOICES", {})
    config: dict[str, Any] = {}
    for name, hint in _field_types(stage_cls).items():
        label, help_text = STAGE_COLUMNS.get(name, (name.replace("_", " "), None))
        if _is_pair(hint):
            short = PAIR_LABELS.get(name, name.removesuffix("_size"))
            help_text = PAIR_HELP.get(name, short)
            config[f"{name}_h"] = number(f"{short} h", min_value=1, max_value=28, step=1, help=f"{help_text}, height", width="small")
            config[f"{name}_w"] = number(f"{short} w", min_value=1, max_value=28, step=1, help=f"{help_text}, width", width="small")
        elif hint is bool:
            config[name] = st.column_config.CheckboxColumn(label, help=help_text)
        elif hint is int:
            config[name] = number(label, min_value=0 if name == "groups" else 1, step=1, help=help_text, width="small")
        elif hint is float:
            config[name] = number(label, help=help_text)
        elif hint is str and name in choices:
            config[name] = st.column_config.SelectboxColumn(label, options=list(choices[name]), help=help_text)
        else:
            config[name] = st.column_config.TextColumn(label, help=help_text)
    return config


def _parse_pair(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.strip("()").split(","))
    return height, width


def stage_editor(spec: ArchSpec, defaults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show the per-stage editor for ``spec`` and return the edited stages.

    The rows live in ``st.session_state[f"stage_rows_{arch}"]``, so setting that key
    (as the presets do) replaces what the editor shows.
    """
    stage_cls = stage_class(spec)
    rows_key, version_key = f"stage_rows_{spec.name}", f"stage_version_{spec.name}"
    if rows_key not in st.session_state:
        st.session_state[rows_key] = stages_to_rows(defaults)
        st.session_state[version_key] = 0
    st.session_state.setdefault(version_key, 0)
    has_pool = stage_cls is not None and "pool" in _field_types(stage_cls)

    editor_key = f"stage_editor_{spec.name}_{st.session_state[version_key]}"
    edited = st.data_editor(
        pd.DataFrame(st.session_state[rows_key]),
        key=editor_key,
        num_rows="dynamic",
        column_config=_column_config(stage_cls) if stage_cls else None,
        hide_index=False,
        width="stretch",
    )
    rows = edited.to_dict("records")

    # The preset row sits below the grid because the grid's toolbar, shown while the
    # grid has focus, covers the rightmost button of a row above it.
    columns = st.columns([2, 1, 2, 1, 1] if has_pool else [2, 1, 1], vertical_alignment="bottom")
    kernel = columns[0].selectbox("Kernel for every stage", KERNEL_PRESETS, key=f"kernel_preset_{spec.name}")
    apply_kernel = columns[1].button("Apply kernel", key=f"apply_preset_{spec.name}")
    apply_pool = False
    if has_pool:
        pool = columns[2].selectbox("Pool for every stage", POOL_PRESETS, key=f"pool_preset_{spec.name}")
        apply_pool = columns[3].button("Apply pool", key=f"apply_pool_{spec.name}")
    reset = columns[-1].button("Reset stages", key=f"reset_stages_{spec.name}")

    if apply_kernel or apply_pool or reset:
        if reset:
            rows = stages_to_rows(defaults)
        for row in rows if not reset else []:
            if apply_kernel:
                row["kernel_size_h"], row["kernel_size_w"] = _parse_pair(kernel)
            if apply_pool:
                row["pool_h"], row["pool_w"] = _parse_pair(pool)
        st.session_state[rows_key] = rows
        st.session_state[version_key] += 1  # a new editor key drops edits made against the old rows
        st.rerun()
    return rows_to_stages(rows)


# -- other settings -----------------------------------------------------------


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def settings_fields(spec: ArchSpec, *, skip: tuple[str, ...]) -> list[str]:
    """List the config fields of ``spec`` that ``settings_form`` shows, in declaration order."""
    return [name for name in _field_types(spec.config_class) if name not in skip]


def settings_form(spec: ArchSpec, defaults: dict[str, Any], *, skip: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Show one widget per config field of ``spec`` not in ``skip``; return the values and input errors.

    The widget follows the field's type. A bool gets a checkbox, an int or float a
    number input, and a str a select box when the config class lists its options
    in ``CHOICES`` (a text input otherwise). A (height, width) pair gets two number
    inputs, and a list of whole numbers a comma-separated text input.
    """
    choices = getattr(spec.config_class, "CHOICES", {})
    values: dict[str, Any] = {}
    errors: list[str] = []
    fields = [(name, hint) for name, hint in _field_types(spec.config_class).items() if name not in skip]
    columns = st.columns(3) if fields else []
    for index, (name, hint) in enumerate(fields):
        default = defaults.get(name)
        key = f"{spec.name}_{name}"
        with columns[index % 3]:
            if hint is bool:
                values[name] = st.checkbox(_label(name), value=bool(default), key=key)
            elif hint is int:
                values[name] = st.number_input(_label(name), value=default, step=1, key=key)
            elif hint is float:
                values[name] = st.number_input(_label(name), value=None if default is None else float(default), step=0.05, format="%.3f", key=key)
            elif hint is str and name in choices:
                options = list(choices[name])
                values[name] = st.selectbox(_label(name), options, index=options.index(default) if default in options else 0, key=key)
            elif hint is str:
                values[name] = st.text_input(_label(name), value=default or "", key=key)
            elif _is_pair(hint):
                height, width = st.columns(2)
                values[name] = [
                    height.number_input(f"{_label(name)} h", value=int(default[0]), step=1, key=f"{key}_h"),
                    width.number_input(f"{_label(name)} w", value=int(default[1]), step=1, key=f"{key}_w"),
                ]
            elif typing.get_origin(hint) is list and typing.get_args(hint) == (int,):
                text = st.text_input(_label(name), ", ".join(map(str, default or [])), key=key, help="whole numbers separated by commas")
                parsed, error = _parse_int_list(name, text)
                values[name] = parsed
                if error:
                    errors.append(error)
            else:
                continue  # NOTE: a field of another type keeps its default; no widget edits it yet
    return values, errors


def _parse_int_list(name: str, text: str) -> tuple[list[int], str | None]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    invalid = [part for part in parts if not part.lstrip("-").isdigit()]
    if invalid:
        return [], f"{name} must be whole numbers separated by commas; {invalid[0]!r} is not one"
    return [int(part) for part in parts], None


def cost_metrics(cost: dict[str, Any]) -> None:
    """Show parameters, FLOPs and receptive field side by side, as the Train and Architecture pages do."""
    params_col, flops_col, rf_col = st.columns(3)
    params_col.metric("Parameters", f"{cost['params']:,}", help=format_count(cost["params"]))
    flops_col.metric("FLOPs (multiply-adds)", f"{cost['flops']:,}", help=f"{format_count(cost['flops'])} per 28x28 image")
    height, width = cost["receptive_field"]
    rf_col.metric("Receptive field (h x w)", f"{height} x {width}", help="input pixels that the last stage reads, per axis")
