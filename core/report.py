"""A self-contained HTML report of a comparison, and the runs table as CSV.

The report is one HTML file that opens offline: plotly.js is inlined once and
every figure is a ``<div>`` drawn by it, and test images are PNG ``data:`` URIs.
The app's Export section and ``python -m core report`` write the same file, and
``python -m core compare`` prints the numbers of ``compare_subjects``.

Every string a user controls (run names, ensemble names, the title) is escaped
with ``html.escape`` in the page and with ``core.charts._escape_plotly`` inside figures.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import itertools
import json
import logging
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go

from core.charts import (
    confusion_difference_figure, curve_figure, invariance_figure, params_figure, per_class_figure,
)
from core.compare import (
    TABLE_COLUMNS, Subject, SubjectOutputs, check_same_test_set, compare_pair, confusion_difference, confusion_matrix,
    images_all_get_wrong, images_only_a_gets_right, model_outputs, per_class_accuracy, subject_outputs, subject_summary,
)
from core.curves import BANDS, STEP_LOSS, build_curves, curve_sources
from core.errors import DataError, LabError
from core.inference import ModelEntry
from core.predictions import TestOutputs
from core.store import RunStore

log = logging.getLogger(__name__)

DEFAULT_TITLE = "MNIST Architecture Lab report"
GALLERY_MAX_IMAGES = 24  # per list; the total count is always stated
GALLERY_SCALE = 3  # each 28x28 test image is drawn at 84x84 pixels
# Cells starting with these make spreadsheets evaluate a formula (OWASP "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
VERSION_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "plotly", "streamlit")

ProgressCallback = Callable[[float, str], None]


# -- the numbers ------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Test results of the subjects, the statistics of every pair and the ensemble of all member models."""

    subjects: list[Subject]
    outputs: dict[str, SubjectOutputs]  # by subject key
    summaries: list[dict[str, Any]]  # core.compare.subject_summary, in subject order
    pairs: list[dict[str, Any]]  # core.compare.compare_pair for every pair (i < j)
    ensemble_accuracy: float
    ensemble_members: list[ModelEntry]  # every distinct member model of the subjects


def compare_subjects(
    store: RunStore, subjects: list[Subject], *, data_dir: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
) -> Comparison:
    """Load every subject's test outputs and compute the pairwise statistics and the ensemble accuracy.

    Raises LabError when no subject is given, a subject is given twice, or the
    subjects were tested on different images.
    """
    progress = on_progress or (lambda fraction, message: None)
    if not subjects:
        raise LabError("no models to compare; give run ids (12), seed groups (g12), ensembles (e3) or shipped model names (cnn)")
    seen: set[str] = set()
    for subject in subjects:
        if subject.key in seen:
            raise LabError(f"{subject.label} ({subject.key}) is given twice; name each model, group or ensemble once")
        seen.add(subject.key)

    outputs: dict[str, SubjectOutputs] = {}
    for index, subject in enumerate(subjects):
        progress(0.6 * index / len(subjects), f"Loading the test outputs of {subject.label}")
        outputs[subject.key] = subject_outputs(subject, store, data_dir)
    check_same_test_set(outputs, {s.key: s.label for s in subjects})

    pairs = []
    pair_list = list(itertools.combinations(subjects, 2))
    for index, (a, b) in enumerate(pair_list):
        progress(0.6 + 0.3 * index / len(pair_list), f"Comparing {a.label} with {b.label}")
        pairs.append(_plain(compare_pair(a, b, outputs[a.key], outputs[b.key])))

    progress(0.9, "Combining every member model into one ensemble")
    members = _distinct_members(subjects)
    member_outputs = [model_outputs(member, store, data_dir) for member in members]
    mean_probabilities = np.mean([o.probabilities for o in member_outputs], axis=0)
    ensemble = TestOutputs.from_probabilities(mean_probabilities, member_outputs[0].labels)

    summaries = [_plain(subject_summary(s, outputs[s.key])) for s in subjects]
    return Comparison(
        subjects=list(subjects), outputs=outputs, summaries=summaries, pairs=pairs,
        ensemble_accuracy=ensemble.accuracy, ensemble_members=members,
    )


def _distinct_members(subjects: list[Subject]) -> list[ModelEntry]:
    members: dict[str, ModelEntry] = {}
    for subject in subjects:
        for member in subject.members:
            members.setdefault(member.key, member)
    return list(members.values())


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """Turn numpy scalars into Python numbers so the record is JSON-serialisable."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in record.items()}


def accuracy_text(summary: dict[str, Any]) -> str:
    """Format a subject's test accuracy: '99.23%', or '98.10% ± 0.12 (3 seeds, 97.98% to 98.22%)' for groups."""
    text = f"{summary['test_accuracy']:.2%}"
    if summary["runs"] > 1:
        text += (
            f" ± {summary['test_accuracy_std'] * 100:.2f} ({summary['runs']} seeds, "
            f"{summary['test_accuracy_min']:.2%} to {summary['test_accuracy_max']:.2%})"
        )
    return text


def format_p_value(p_value: float | None) -> str:
    return "-" if p_value is None else f"{p_value:.3g}"


def format_points(fraction: float) -> str:
    """Format an accuracy difference in percentage points, signed."""
    return f"{fraction * 100:+.2f}"


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """Return what ``python -m core compare --json`` prints: runs, pairs and the ensemble of all member models."""
    return {
        "runs": comparison.summaries,
        "pairs": comparison.pairs,
        "ensemble_accuracy": comparison.ensemble_accuracy,
        "ensemble_members": [member.key for member in comparison.ensemble_members],
    }


def comparison_text(comparison: Comparison) -> str:
    """Format the comparison for a terminal: accuracy per subject, each pair's tests and sentence, the ensemble."""
    width = max(len(s["label"]) for s in comparison.summaries)
    lines = ["test accuracy"]
    for summary in comparison.summaries:
        lines.append(f"  {summary['label']:<{width}}  {accuracy_text(summary)}")

    lines.append("")
    lines.append("pairs (difference = A minus B in percentage points; 95% paired bootstrap interval; McNemar's exact test)")
    for pair in comparison.pairs:
        seeds = "" if pair["seed_p_value"] is None else f", seed p {format_p_value(pair['seed_p_value'])}"
        lines.append(
            f"  {pair['a_label']} vs {pair['b_label']}: difference {format_points(pair['difference'])} "
            f"[{format_points(pair['ci_low'])}, {format_points(pair['ci_high'])}], McNemar p {format_p_value(pair['p_value'])}, "
            f"only A right {pair['a_only']}, only B right {pair['b_only']}{seeds}"
        )
        lines.append(f"    {pair['sentence']}")

    lines.append("")
    members = comparison.ensemble_members
    lines.append(
        f"ensemble of all {len(members)} member models (mean of their probabilities): {comparison.ensemble_accuracy:.2%}"
    )
    return "\n".join(lines)


# -- CSV --------------------------------------------------------------------------------------------


def export_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Return the Compare table's columns, then any others the rows have (such as key), in first-seen order."""
    columns = list(TABLE_COLUMNS)
    for row in rows:
        columns += [column for column in row if column not in columns]
    return columns


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " x ".join(map(str, value))
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value  # a leading quote makes spreadsheets show the text instead of evaluating it
    if isinstance(value, float):
        return round(value, 6)  # accuracies stored as float32 read 0.9922999739646912 for 0.9923
    return value


def table_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Write ``rows`` as CSV with a header of ``columns``; text that a spreadsheet would run as a formula is quoted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


# -- environment ------------------------------------------------------------------------------------


def environment(store: RunStore, data_dir: str | os.PathLike | None) -> dict[str, str]:
    """Return the versions, operating system, CPU, GPU and folders behind a report, as display strings."""
    from core.data import resolve_data_dir
    from core.results import machine_name

    import torch
    import torchvision

    info = {"Python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    # The modules' own versions carry the build tag (2.14.1+cu130) that the package metadata may lack.
    info["torch"], info["torchvision"] = torch.__version__, torchvision.__version__
    info["OS"] = platform.platform()
    info["CPU"] = machine_name()
    info["GPU"] = _gpu_name()
    info["data dir"] = str(resolve_data_dir(data_dir).resolve())
    info["run store"] = str(store.root.resolve())
    return info


def _gpu_name() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count()))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple MPS"
    return "none"


# -- figures that core.charts does not have ----------------------------------------------------------


def subject_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """Return one row per subject in the shape ``core.charts.params_figure`` reads."""
    return [
        {"key": s["key"], "name": s["label"], "architecture": s["arch"], "params": s["params"], "test_accuracy": s["test_accuracy"]}
        for s in comparison.summaries
    ]


def measure_invariance(
    store: RunStore, subjects: list[Subject], *, images: int | None = None, data_dir: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure the invariance curves of ``subjects`` (cached ones are read back) for ``build_report``.

    Returns {subject key: ``core.invariance.InvarianceResult.to_dict()``}. ``images``
    is how many of the first test images to use (default: core.invariance's default).
    """
    from core.invariance import InvarianceSettings, measure_subjects

    settings = InvarianceSettings() if images is None else InvarianceSettings(images=images)
    settings.validate()
    results = measure_subjects(subjects, store, settings, data_dir=data_dir, on_progress=on_progress)
    return {result.key: result.to_dict() for result in results}


def _invariance_html(invariance: dict[str, dict[str, Any]]) -> str:
    """Build the invariance section from ``measure_invariance``'s result: three figures and one sentence per subject."""
    results = list(invariance.values())
    parts = ['<section id="invariance"><h2>Invariance to shifts and rotations</h2>']
    if not results:
        parts.append('<p class="note">No invariance curves were measured.</p></section>')
        return "".join(parts)
    images = results[0].get("settings", {}).get("images")
    if images:
        parts.append(f'<p class="note">Measured on the first {images:,} test images; shifts fill the border with background.</p>')
    from core.invariance import InvarianceResult, describe_invariance

    measured = [InvarianceResult.from_dict(result) for result in results]
    axes = [axis for axis in measured[0].curves if all(axis in result.curves for result in measured)]
    for axis in axes:
        parts.append(_figure_html(invariance_figure(measured, axis)))
    parts.append("<ul>" + "".join(f"<li>{_text(describe_invariance(result))}</li>" for result in measured) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


# -- HTML -----------------------------------------------------------------------------------------------

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 24px; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 36px; }
.meta { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.sentence { background: #fbfbfc; color: #24292f; }
tr.pair td { border-top: 2px solid #8c959f; }
.wrong { color: #cf222e; font-weight: 600; }
.significant { color: #1a7f37; font-weight: 600; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 118px; font-size: 11px; text-align: center; }
.gallery img { image-rendering: pixelated; border: 1px solid #d0d7de; }
.gallery figcaption { overflow-wrap: anywhere; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
details { margin: 6px 0; } summary { cursor: pointer; }
.note { color: #57606a; }
"""


def count_text(count: int, noun: str) -> str:
    """Return "1 model" or "3 models": the count with the noun in singular or plural."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _text(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str] | None, rows: list[list[str]], *, number_columns: set[int] = frozenset()) -> str:
    """Build an HTML table; ``rows`` are already-escaped cell HTML, and ``header`` None leaves out the header row."""
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{_text(title)}</th>" for title in header) + "</tr></thead>"
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="number">{cell}</td>' if index in number_columns else f"<td>{cell}</td>" for index, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _figure_html(fig: go.Figure) -> str:
    # Importing Streamlit makes its own plotly template the default, and that one clips axis labels here.
    fig.update_layout(template="plotly")
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def _environment_html(info: dict[str, str]) -> str:
    rows = [[f"<b>{_text(name)}</b>", _text(value)] for name, value in info.items()]
    return '<section id="environment"><h2>Environment</h2>' + _table(None, rows) + "</section>"


def _subjects_html(comparison: Comparison) -> str:
    rows = []
    for subject, summary in zip(comparison.subjects, comparison.summaries):
        rows.append([
            _text(subject.label), _text(subject.kind), _text(subject.arch),
            _text(f"{subject.params:,}" if subject.params else "-"), _text(accuracy_text(summary)),
            _members_html(subject),
        ])
    header = ["model", "kind", "architecture", "parameters", "test accuracy", "members"]
    return '<section id="models"><h2>Models</h2>' + _table(header, rows, number_columns={3}) + "</section>"


def _members_html(subject: Subject) -> str:
    if subject.kind == "group":
        pending = subject.info.get("pending") or 0
        seeds = ", ".join(str(seed) for seed in subject.info.get("seeds", []))
        text = f"seeds {seeds}" + (f"; {pending} more still queued or running" if pending else "")
        return _text(text)
    if subject.kind == "ensemble":
        return "<br>".join(_text(member.label) for member in subject.members)
    return ""


def _pairs_html(comparison: Comparison) -> str:
    if not comparison.pairs:
        return '<section id="pairs"><h2>Is the difference real?</h2><p class="note">Only one model was selected, so there is no pair to test.</p></section>'
    header = ["A", "B", "accuracy A", "accuracy B", "difference (points)", "95% interval (points)", "McNemar p",
              "only A right", "only B right", "seed p (Welch)"]
    body = []
    for pair in comparison.pairs:
        p_class = ' class="significant"' if pair["significant"] else ""
        cells = [
            _text(pair["a_label"]), _text(pair["b_label"]), _text(f"{pair['accuracy_a']:.2%}"), _text(f"{pair['accuracy_b']:.2%}"),
            _text(format_points(pair["difference"])),
            _text(f"{format_points(pair['ci_low'])} to {format_points(pair['ci_high'])}"),
            f"<span{p_class}>{_text(format_p_value(pair['p_value']))}</span>",
            _text(f"{pair['a_only']:,}"), _text(f"{pair['b_only']:,}"), _text(format_p_value(pair["seed_p_value"])),
        ]
        body.append('<tr class="pair">' + "".join(f'<td class="number">{cell}</td>' if i >= 2 else f"<td>{cell}</td>" for i, cell in enumerate(cells)) + "</tr>")
        body.append(f'<tr><td class="sentence" colspan="{len(header)}">{_text(pair["sentence"])}</td></tr>')
    head = "".join(f"<th>{_text(title)}</th>" for title in header)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    explanation = (
        '<p class="note">McNemar\'s exact test uses the test images exactly one of the two gets right. The 95% interval is a '
        "paired bootstrap over the test images. For seed groups the seed p-value is Welch's t-test on the per-seed accuracies.</p>"
    )
    return f'<section id="pairs"><h2>Is the difference real?</h2>{table}{explanation}</section>'


def _ensemble_html(comparison: Comparison) -> str:
    members = ", ".join(_text(member.label) for member in comparison.ensemble_members)
    count = len(comparison.ensemble_members)
    if count == 1:
        return ""
    return (
        f'<section id="ensemble"><h2>Ensemble of all models</h2><p>The mean of the class probabilities of all {count} member '
        f"models ({members}) gets <b>{comparison.ensemble_accuracy:.2%}</b> of the test images right.</p></section>"
    )


REPORT_SMOOTHING = 0.6  # the Compare page's default smoothing weight


def _curves_html(store: RunStore, comparison: Comparison, shipped: list[ModelEntry]) -> str:
    """Draw the loss and accuracy curves as the Compare page does: smoothed, raw faint behind, groups as mean and band."""
    rows = [{"key": subject.key, "name": subject.label} for subject in comparison.subjects]
    sources, notes = curve_sources(store, rows, shipped, {subject.key: subject for subject in comparison.subjects})
    parts = [f'<p class="note">{_text(note)}</p>' for note in notes]
    if not sources:
        return "".join(parts) + '<p class="note">None of these models has stored training curves.</p>'

    has_steps = any(history.steps for source in sources for history in source.histories)
    options = {"x_title": "epoch", "band_name": BANDS["range"], "show_raw": True}
    figures = (
        ("Loss", "cross-entropy loss", (STEP_LOSS if has_steps else "train_loss", "val_loss"), False),
        ("Accuracy", "accuracy", ("train_accuracy", "val_accuracy"), True),
    )
    for title, y_title, metrics, percent in figures:
        lines = [line for metric in metrics for line in build_curves(sources, metric, "epoch", smoothing=REPORT_SMOOTHING)]
        parts.append(_figure_html(curve_figure(lines, title=title, y_title=y_title, percent=percent, **options)))
    parts.append(
        f'<p class="note">Curves are smoothed with an exponential moving average of weight {REPORT_SMOOTHING}, the raw '
        f"values drawn faint behind. A seed group is the mean of its seeds with a band from {BANDS['range']}.</p>"
    )
    return "".join(parts)


def _figures_html(store: RunStore, comparison: Comparison, shipped: list[ModelEntry]) -> str:
    parts = ['<section id="figures"><h2>Figures</h2>']
    scatter = params_figure(subject_rows(comparison), {s.key for s in comparison.subjects})
    scatter.update_traces(mode="markers+text", textposition="top center", textfont_size=11)
    parts.append(_figure_html(scatter))

    parts.append(_curves_html(store, comparison, shipped))

    labels = [s.label for s in comparison.subjects]
    accuracies = [per_class_accuracy(comparison.outputs[s.key]) for s in comparison.subjects]
    parts.append(_figure_html(per_class_figure(labels, accuracies)))

    if len(comparison.subjects) >= 2:
        a, b = comparison.subjects[:2]
        a_outputs, b_outputs = comparison.outputs[a.key], comparison.outputs[b.key]
        figure = confusion_difference_figure(
            confusion_difference(a_outputs, b_outputs), confusion_matrix(a_outputs), confusion_matrix(b_outputs),
            a_label=a.label, b_label=b.label,
        )
        parts.append(_figure_html(figure))
        parts.append(
            f'<p class="note">Each cell is the number of test images of that (true, predicted) kind that {_text(b.label)} '
            f"has minus those {_text(a.label)} has, averaged over seeds for groups. Red off the diagonal: B makes that "
            "mistake more often; blue on the diagonal: B gets that digit right less often.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def _png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")
    picture = picture.resize((image.shape[1] * GALLERY_SCALE, image.shape[0] * GALLERY_SCALE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _gallery_html(title: str, indices: np.ndarray, images: np.ndarray, comparison: Comparison) -> str:
    total = len(indices)
    displayed = indices[:GALLERY_MAX_IMAGES]
    count = f"{total:,} images" + (f", the first {len(displayed)} shown" if total > len(displayed) else "")
    if total == 0:
        return f"<h3>{_text(title)}</h3><p class=\"note\">No such test image.</p>"
    labels = next(iter(comparison.outputs.values())).labels
    answers = {s.key: comparison.outputs[s.key].answers for s in comparison.subjects}
    figures = []
    for index in displayed:
        caption = [f"#{index} true <b>{labels[index]}</b>"]
        for subject in comparison.subjects:
            answer = answers[subject.key][index]
            answer_html = str(answer) if answer == labels[index] else f'<span class="wrong">{answer}</span>'
            caption.append(f"{_text(subject.label)}: {answer_html}")
        figures.append(
            f'<figure><img src="{_png_data_uri(images[index])}" width="{28 * GALLERY_SCALE}" height="{28 * GALLERY_SCALE}" '
            f'alt="test image {index}, true digit {labels[index]}"><figcaption>{"<br>".join(caption)}</figcaption></figure>'
        )
    return f"<h3>{_text(title)} ({count})</h3><div class=\"gallery\">{''.join(figures)}</div>"


def _galleries_html(comparison: Comparison, data_dir: str | os.PathLike | None) -> str:
    from core.data import load_raw

    parts = ['<section id="gallery"><h2>Test images</h2>']
    try:
        _, _, test_images, _ = load_raw(data_dir, download=False)
    except DataError as error:
        parts.append(f'<p class="note">The test images are left out because MNIST could not be read: {_text(error)}</p></section>')
        return "".join(parts)
    images = test_images.numpy()
    labels = next(iter(comparison.outputs.values())).labels
    if len(images) != len(labels):
        parts.append(
            f'<p class="note">The test images are left out: the data dir has {len(images):,} test images but the models were '
            f"tested on {len(labels):,}.</p></section>"
        )
        return "".join(parts)

    parts.append('<p class="note">Captions: the test image index, the true digit and each model\'s answer, red when wrong '
                 "(the most common answer over seeds for groups). For a group, gets right means every seed does and "
                 "gets wrong means no seed does.</p>")
    outputs = [comparison.outputs[s.key] for s in comparison.subjects]
    if len(comparison.subjects) >= 2:
        a, b = comparison.subjects[:2]
        a_out, b_out = outputs[:2]
        parts.append(_gallery_html(f"{a.label} gets right, {b.label} gets wrong", images_only_a_gets_right(a_out, b_out), images, comparison))
        parts.append(_gallery_html(f"{b.label} gets right, {a.label} gets wrong", images_only_a_gets_right(b_out, a_out), images, comparison))
    everyone = "every model gets wrong" if len(outputs) > 1 else f"{comparison.subjects[0].label} gets wrong"
    parts.append(_gallery_html(f"Images {everyone}", images_all_get_wrong(outputs), images, comparison))
    parts.append("</section>")
    return "".join(parts)


def _configs_html(store: RunStore, comparison: Comparison) -> str:
    parts = ['<section id="configs"><h2>Configurations</h2>']
    for member in _distinct_members(comparison.subjects):
        model_config, train_config = _member_configs(store, member)
        body = json.dumps({"model_config": model_config, "train_config": train_config}, indent=2, sort_keys=False)
        parts.append(f"<details><summary>{_text(member.label)}</summary><pre>{_text(body)}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def _member_configs(store: RunStore, member: ModelEntry) -> tuple[Any, Any]:
    if member.key.startswith("run:"):
        run = store.get_run(int(member.key.split(":", 1)[1]))
        return run["model_config"], run["train_config"]
    return member.info.get("model_config"), member.info.get("train_config")


def build_report(
    store: RunStore,
    subjects: list[Subject],
    *,
    data_dir: str | os.PathLike | None = None,
    title: str | None = None,
    invariance: dict | None = None,
    generated_by: str = "app",
    on_progress: ProgressCallback | None = None,
) -> str:
    """Build the HTML report of ``subjects``.

    ``invariance`` is ``measure_invariance``'s result; without it the report has
    no invariance section. ``generated_by`` is "app" or the exact command line.
    Raises LabError when a subject's test outputs cannot be loaded or computed.
    """
    import plotly.offline

    from core.inference import shipped_models

    progress = on_progress or (lambda fraction, message: None)
    comparison = compare_subjects(
        store, subjects, data_dir=data_dir, on_progress=lambda fraction, message: progress(0.7 * fraction, message)
    )
    title = title.strip() if title and title.strip() else DEFAULT_TITLE
    now = datetime.datetime.now().astimezone()
    source = "the MNIST Architecture Lab app" if generated_by == "app" else generated_by

    progress(0.7, "Drawing the figures")
    figures = _figures_html(store, comparison, shipped_models())
    progress(0.85, "Drawing the test images")
    galleries = _galleries_html(comparison, data_dir)
    invariance_part = _invariance_html(invariance) if invariance is not None else ""
    progress(0.95, "Writing the report")

    body = "".join([
        f"<h1>{_text(title)}</h1>",
        f'<p class="meta">Generated {_text(now.strftime("%Y-%m-%d %H:%M:%S %Z"))} by <code>{_text(source)}</code></p>',
        _subjects_html(comparison), _pairs_html(comparison), _ensemble_html(comparison), figures, galleries,
        invariance_part, _configs_html(store, comparison), _environment_html(environment(store, data_dir)),
    ])
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_text(title)}</title>'
        f"<style>{STYLE}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f"</head><body>{body}</body></html>\n"
    )
    progress(1.0, "Report ready")
    log.info("built a report of %s (%d kB)", count_text(len(subjects), "model"), len(document) // 1024)
    return document
