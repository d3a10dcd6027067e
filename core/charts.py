"""Plotly figures shared by the pages."""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.Plotly


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _escape_plotly(text: str) -> str:
    """Escape a run name for Plotly, which renders tags such as <b> and <a href> in names, titles and hover text."""
    # plotly.js (svg_text_utils) splits on tags first and decodes &lt; &gt; &amp; in the text parts only.
    return html.escape(text, quote=False)


def _layout(fig: go.Figure, *, title: str, x_title: str, y_title: str, log_y: bool = False, height: int = 340) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.2},
        xaxis_title=x_title,
        yaxis_title=y_title,
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def loss_figure(names: dict[int, str], steps: list[dict], epochs: list[dict], *, log_y: bool = False) -> go.Figure:
    """Per-step training loss (thin) and per-epoch train and validation loss, x in epochs."""
    fig = go.Figure()
    for i, (run_id, name) in enumerate(names.items()):
        color = _color(i)
        name = _escape_plotly(name)
        run_steps = [s for s in steps if s["run_id"] == run_id]
        run_epochs = [e for e in epochs if e["run_id"] == run_id]
        if run_steps:
            fig.add_scatter(
                x=[s["epoch"] for s in run_steps], y=[s["train_loss"] for s in run_steps], mode="lines",
                name=f"{name} train (step)", line={"color": color, "width": 1}, opacity=0.6,
            )
        if run_epochs:
            fig.add_scatter(
                x=[e["epoch"] for e in run_epochs], y=[e["train_loss"] for e in run_epochs], mode="lines+markers",
                name=f"{name} train", line={"color": color, "width": 2},
            )
            fig.add_scatter(
                x=[e["epoch"] for e in run_epochs], y=[e["val_loss"] for e in run_epochs], mode="lines+markers",
                name=f"{name} validation", line={"color": color, "width": 2, "dash": "dash"},
            )
    return _layout(fig, title="Loss", x_title="epoch", y_title="cross-entropy loss", log_y=log_y)


def accuracy_figure(names: dict[int, str], epochs: list[dict]) -> go.Figure:
    fig = go.Figure()
    for i, (run_id, name) in enumerate(names.items()):
        run_epochs = [e for e in epochs if e["run_id"] == run_id]
        if not run_epochs:
            continue
        color = _color(i)
        name = _escape_plotly(name)
        x = [e["epoch"] for e in run_epochs]
        fig.add_scatter(x=x, y=[e["train_accuracy"] for e in run_epochs], mode="lines+markers", name=f"{name} train", line={"color": color})
        fig.add_scatter(
            x=x, y=[e["val_accuracy"] for e in run_epochs], mode="lines+markers", name=f"{name} validation",
            line={"color": color, "dash": "dash"},
        )
    fig.update_yaxes(tickformat=".1%")
    if not fig.data:
        fig.update_yaxes(range=[0, 1])  # no epoch finished yet: show a sensible empty axis
        fig.add_annotation(text="first point after epoch 1", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return _layout(fig, title="Accuracy", x_title="epoch", y_title="accuracy")


def confusion_figure(matrix: list[list[int]], *, title: str) -> go.Figure:
    labels = [str(d) for d in range(len(matrix))]
    fig = go.Figure(
        go.Heatmap(
            z=matrix, x=labels, y=labels, colorscale="Blues", showscale=False,
            text=matrix, texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category")  # every digit labelled, not every other one
    fig.update_yaxes(type="category", autorange="reversed")
    return _layout(fig, title=_escape_plotly(title), x_title="predicted", y_title="true", height=360)


def params_figure(rows: list[dict[str, Any]], selected: set[str]) -> go.Figure:
    """Test accuracy against parameter count; selected rows drawn larger."""
    fig = go.Figure()
    rows = [r for r in rows if r.get("test_accuracy") is not None and r.get("params")]
    for i, arch in enumerate(sorted({r["architecture"] for r in rows})):
        group = [r for r in rows if r["architecture"] == arch]
        fig.add_scatter(
            x=[r["params"] for r in group], y=[r["test_accuracy"] for r in group], mode="markers", name=arch,
            text=[_escape_plotly(r["name"]) for r in group],
            marker={"size": [16 if r["key"] in selected else 9 for r in group], "color": _color(i)},
            hovertemplate="%{text}<br>%{x:,} parameters<br>test accuracy %{y:.2%}<extra></extra>",
        )
    fig.update_xaxes(type="log")
    fig.update_yaxes(tickformat=".1%")
    return _layout(fig, title="Test accuracy vs parameters", x_title="parameters (log scale)", y_title="test accuracy")


def probabilities_figure(probabilities: list[float]) -> go.Figure:
    top = max(range(len(probabilities)), key=probabilities.__getitem__)
    colors = ["#1f77b4" if d != top else "#d62728" for d in range(len(probabilities))]
    fig = go.Figure(go.Bar(x=[str(d) for d in range(len(probabilities))], y=probabilities, marker_color=colors))
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_xaxes(type="category")
    return _layout(fig, title="", x_title="digit", y_title="probability", height=220)


def image_grid_figure(
    images: Any, *, title: str, max_images: int = 16, columns: int = 8, color_scale: str = "gray", symmetric: bool = False
) -> go.Figure:
    """Build a grid of the first ``max_images`` of ``images`` (N, H, W), each scaled to its own range.

    Per-image scaling shows each channel's pattern, because absolute values differ a lot between channels.
    With ``symmetric`` (for weights) zero stays at the middle of the colour scale, so the sign stays visible.
    """
    import numpy as np
    import plotly.express as px

    stack = np.asarray(images, dtype=np.float32)[:max_images]
    if symmetric:
        reach = np.abs(stack).max(axis=(1, 2), keepdims=True)
        scaled = 0.5 + stack / (2 * np.where(reach > 0, reach, 1.0))
    else:
        low = stack.min(axis=(1, 2), keepdims=True)
        span = stack.max(axis=(1, 2), keepdims=True) - low
        scaled = (stack - low) / np.where(span > 0, span, 1.0)

    wrap = min(columns, len(scaled))
    rows = math.ceil(len(scaled) / wrap)
    fig = px.imshow(scaled, facet_col=0, facet_col_wrap=wrap, color_continuous_scale=color_scale, zmin=0, zmax=1,
                    facet_row_spacing=0.25 / max(rows, 1), facet_col_spacing=0.01)
    fig.for_each_annotation(lambda annotation: annotation.update(text=f"#{annotation.text.split('=')[-1]}", font_size=10))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(
        title=_escape_plotly(title), coloraxis_showscale=False, height=90 + 110 * rows,
        margin=dict(l=10, r=10, t=50, b=10),
    )
    return fig


def _dot_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def stage_diagram(stages: list[dict[str, Any]], *, arch: str) -> str:
    """Build a left-to-right Graphviz DOT graph: the 1x28x28 input, one box per stage, the classifier."""
    nodes = ['input [label="input\\n1x28x28", shape=oval]']
    for index, stage in enumerate(stages):
        lines = [str(stage["stage"])]
        if "out_hw" in stage:
            lines.append(f"{stage.get('channels', '?')}x{stage['out_hw'][0]}x{stage['out_hw'][1]}")
        elif "units" in stage:
            lines.append(f"{stage['units']} units")
        elif "channels" in stage:
            lines.append(f"{stage['channels']} channels")
        if "rf" in stage:
            lines.append(f"RF {stage['rf'][0]}x{stage['rf'][1]}")
        label = "\\n".join(_dot_label(line) for line in lines)  # \n is a line break inside a DOT label
        nodes.append(f's{index} [label="{label}"]')
    nodes.append(f'classifier [label="{_dot_label(arch)} classifier\\n10 classes", shape=oval]')

    chain = ["input", *(f"s{index}" for index in range(len(stages))), "classifier"]
    edges = " -> ".join(chain)
    body = "\n    ".join(nodes)
    return f"digraph {{\n    rankdir=LR\n    node [shape=box, fontname=Helvetica, fontsize=11]\n    {body}\n    {edges}\n}}"


# -- invariance lab and Draw page saliency ------------------------------------------------------------

INVARIANCE_AXIS_TITLES = {
    "x_shift": "shift along x (px, + moves the ink right)",
    "y_shift": "shift along y (px, + moves the ink down)",
    "rotation": "rotation (°, + is counter-clockwise)",  # short enough for a third of the page
}
# Red for pixels that support the prediction, blue for pixels against it, transparent at 0 so the ink shows through.
# Opacity rises quickly near 0, because most pixels of a map are far below its largest value.
SALIENCY_COLORSCALE = [
    [0.0, "rgba(33, 102, 172, 1)"], [0.35, "rgba(33, 102, 172, 0.75)"], [0.5, "rgba(255, 255, 255, 0)"],
    [0.65, "rgba(214, 39, 40, 0.75)"], [1.0, "rgba(214, 39, 40, 1)"],
]


def _transparent(color: str, alpha: float) -> str:
    from plotly.colors import hex_to_rgb

    red, green, blue = hex_to_rgb(color)
    return f"rgba({red}, {green}, {blue}, {alpha})"


def invariance_figure(results: list[Any], axis: str) -> go.Figure:
    """Accuracy against one transform (``axis``: x_shift, y_shift or rotation), one line per result.

    ``results`` are ``core.invariance.InvarianceResult`` objects. A seed group's
    line is its mean accuracy, with a band from its worst to its best seed.
    """
    fig = go.Figure()
    for index, result in enumerate(results):
        curve = result.curves[axis]
        color = _color(index)
        name = _escape_plotly(result.label)
        if result.rows > 1:
            fig.add_scatter(
                x=curve.values + curve.values[::-1], y=curve.high + curve.low[::-1], fill="toself",
                fillcolor=_transparent(color, 0.2), line={"width": 0}, hoverinfo="skip", showlegend=False,
                name=f"{name} seed range",
            )
        fig.add_scatter(
            x=curve.values, y=curve.accuracy, mode="lines+markers", name=name, line={"color": color},
            hovertemplate="%{fullData.name}<br>%{x:+d}: %{y:.1%}<extra></extra>",
        )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_xaxes(zeroline=True)
    return _layout(fig, title=f"Accuracy vs {axis.replace('_', ' ')}", x_title=INVARIANCE_AXIS_TITLES[axis], y_title="test accuracy")


def prediction_sweep_figure(rows: list[tuple[str, dict[str, list]]], axis: str, current: int) -> go.Figure:
    """Draw each model's prediction across one transform's range: the digit as text, its confidence as colour.

    ``rows`` pairs a model's label with its sweep from ``core.invariance.prediction_sweeps``
    for ``axis``. A box marks the column of the current setting.
    """
    values = rows[0][1]["values"]
    labels = [_escape_plotly(label) for label, _ in rows]
    confidences = [sweep["confidences"] for _, sweep in rows]
    digits = [[str(d) for d in sweep["digits"]] for _, sweep in rows]
    fig = go.Figure(
        go.Heatmap(
            z=confidences, x=values, y=labels, text=digits, texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
            colorbar={"title": {"text": "confidence"}, "tickformat": ".0%", "len": 0.9},
            hovertemplate="%{y}<br>%{x:+d}: %{text} (%{z:.1%})<extra></extra>",
        )
    )
    step = values[1] - values[0] if len(values) > 1 else 1
    fig.add_shape(
        type="rect", x0=current - step / 2, x1=current + step / 2, y0=-0.5, y1=len(rows) - 0.5,
        line={"color": "#d62728", "width": 2},
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(tickvals=values)
    height = 110 + 30 * len(rows)
    return _layout(fig, title="", x_title=INVARIANCE_AXIS_TITLES[axis], y_title="", height=height)


def saliency_figure(image: Any, saliency: Any, *, title: str) -> go.Figure:
    """Draw a 28x28 input in gray with its saliency map on top: red pixels support the prediction, blue ones oppose it."""
    import numpy as np

    saliency = np.asarray(saliency, dtype=np.float32)
    reach = float(np.abs(saliency).max()) or 1.0  # a symmetric scale keeps 0 transparent
    fig = go.Figure()
    # The ink goes up to mid-gray only, so the red overlay stays visible on top of the strokes.
    fig.add_heatmap(z=np.asarray(image), colorscale=[[0, "black"], [1, "#8c8c8c"]], zmin=0, zmax=1, showscale=False, hoverinfo="skip")
    fig.add_heatmap(
        z=saliency, colorscale=SALIENCY_COLORSCALE, zmin=-reach, zmax=reach,
        colorbar={"tickvals": [-reach, 0, reach], "ticktext": ["against", "0", "for"], "len": 0.8, "thickness": 12},
        hovertemplate="row %{y}, column %{x}: %{z:.3g}<extra></extra>",
    )
    fig.update_xaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(title=_escape_plotly(title), height=280, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


# -- Compare page: smoothed training curves, per-class accuracy and confusion differences -------------

METRIC_DASH = {"val_loss": "dash", "val_accuracy": "dash"}  # validation dashed, training solid
MAX_MARKED_POINTS = 60  # curves with at most this many points (per-epoch ones) also get markers


def curve_figure(
    curves: list, *, title: str, x_title: str, y_title: str, log_x: bool = False, log_y: bool = False,
    percent: bool = False, band_name: str = "min to max", show_raw: bool = True,
) -> go.Figure:
    """Draw ``core.curves.Curve`` lines: smoothed in full colour, the raw series faint behind, a group's band shaded.

    Colours follow each curve's ``color_index``, so one run keeps its colour on every chart.
    """
    from core.curves import METRIC_NAMES

    fig = go.Figure()
    for curve in curves:
        color = _color(curve.color_index)
        name = f"{_escape_plotly(curve.label)} {METRIC_NAMES[curve.metric]}"
        dash = METRIC_DASH.get(curve.metric, "solid")
        x = curve.x.tolist()
        if curve.low is not None and curve.runs > 1:
            fig.add_scatter(
                x=x + x[::-1], y=curve.high.tolist() + curve.low.tolist()[::-1], fill="toself", mode="lines",
                line={"width": 0}, fillcolor=_transparent(color, 0.18), hoverinfo="skip",
                name=f"{name}: {band_name} over {curve.runs} seeds",
            )
        if show_raw:
            fig.add_scatter(
                x=x, y=curve.raw.tolist(), mode="lines", line={"color": color, "width": 1, "dash": dash}, opacity=0.25,
                hoverinfo="skip", showlegend=False, name=f"{name} (raw)",
            )
        label = f"{name} (mean of {curve.runs} seeds)" if curve.runs > 1 else name
        mode = "lines+markers" if len(x) <= MAX_MARKED_POINTS else "lines"  # a 1-epoch run is a single point
        fig.add_scatter(x=x, y=curve.y.tolist(), mode=mode, line={"color": color, "width": 2, "dash": dash}, name=label)

    # Long run names put each legend entry on its own line under the plot: grow the figure with them.
    entries = sum(1 for trace in fig.data if trace.showlegend is not False)
    _layout(fig, title=title, x_title=x_title, y_title=y_title, log_y=log_y, height=320 + 22 * entries)
    fig.update_layout(legend={"orientation": "h", "y": -0.25, "yanchor": "top", "x": 0})
    if log_x:
        fig.update_xaxes(type="log")
    if percent:
        fig.update_yaxes(tickformat=".1%")
    if not fig.data:
        fig.add_annotation(text="no logged points", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def per_class_figure(labels: list[str], accuracies: list[list[float]], color_indices: list[int] | None = None) -> go.Figure:
    """Grouped bars of test accuracy per digit, one colour per subject.

    The y axis starts just below the lowest bar, because on MNIST most classes sit
    near 99% and bars from zero would look identical. ``color_indices`` match the
    colours of other charts (default: 0, 1, 2, ...).
    """
    fig = go.Figure()
    digits = [str(d) for d in range(10)]
    color_indices = color_indices or list(range(len(labels)))
    for label, values, color_index in zip(labels, accuracies, color_indices):
        fig.add_bar(
            x=digits, y=values, name=_escape_plotly(label), marker_color=_color(color_index),
            hovertemplate="digit %{x}: %{y:.2%}<extra>%{fullData.name}</extra>",
        )
    lowest = min((min(values) for values in accuracies if values), default=0.0)
    fig.update_yaxes(range=[max(0.0, lowest - 0.01), 1.0], tickformat=".1%")
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group")
    return _layout(fig, title="Test accuracy per digit", x_title="true digit", y_title="accuracy (axis does not start at 0)")


def confusion_difference_figure(difference: Any, a_matrix: Any, b_matrix: Any, *, a_label: str, b_label: str) -> go.Figure:
    """Heatmap of B's confusion matrix minus A's on a diverging scale centred at 0, diagonal included.

    On the diagonal a positive cell means B gets more of that digit right; off the
    diagonal it means B makes that mistake more often. Group counts are means over seeds.
    """
    import numpy as np

    difference, a_matrix, b_matrix = (np.asarray(m, dtype=np.float64) for m in (difference, a_matrix, b_matrix))
    digits = [str(d) for d in range(len(difference))]
    whole = np.allclose(difference, np.round(difference)) and np.allclose(a_matrix, np.round(a_matrix))
    number = "{:+.0f}" if whole else "{:+.1f}"
    count = "{:.0f}" if whole else "{:.1f}"
    hover = []
    for true in range(len(difference)):
        row = []
        for predicted in range(len(difference)):
            change = number.format(difference[true, predicted])
            counts = f"A {count.format(a_matrix[true, predicted])}, B {count.format(b_matrix[true, predicted])}"
            if true == predicted:
                row.append(f"true {true} classified correctly: B minus A = {change} ({counts}); positive favours B")
            else:
                row.append(f"true {true} predicted as {predicted}: B minus A = {change} ({counts}); positive: B errs more")
        hover.append(row)
    reach = float(np.abs(difference).max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=difference, x=digits, y=digits, colorscale="RdBu", reversescale=True, zmid=0, zmin=-reach, zmax=reach,
            text=[[number.format(v) if v else "" for v in row] for row in difference], texttemplate="%{text}",
            customdata=hover, hovertemplate="%{customdata}<extra></extra>", colorbar={"title": {"text": "B − A"}},
        )
    )
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(autorange="reversed", dtick=1)
    title = f"Confusion difference: B ({_escape_plotly(b_label)}) minus A ({_escape_plotly(a_label)})"
    return _layout(fig, title=title, x_title="predicted", y_title="true", height=440)
