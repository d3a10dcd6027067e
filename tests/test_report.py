"""The HTML report and the CSV export: content, escaping, and the app's Export section under AppTest.

The report is built once per module from the fabricated store of
``tests/test_compare_cli.py``, whose runs have hand-made test outputs.
"""

from __future__ import annotations

import csv
import datetime
import io
from html.parser import HTMLParser

import pytest
from streamlit.testing.v1 import AppTest

from core.cli import main
from core.compare import resolve_subjects
from core.inference import shipped_models
from core.report import build_report, table_csv
from tests.helpers import DATA_DIR
from tests.test_compare_cli import SCRIPT_NAME, fabricate_store


class ReportParser(HTMLParser):
    """Collect the visible text, the scripts, the plotly figure divs, the section ids and the images of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.figure_divs = 0
        self.section_ids: list[str] = []
        self.images: list[str] = []
        self._raw_tag: str | None = None  # "script" or "style" while inside one

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("script", "style"):
            self._raw_tag = tag
        if tag == "script":
            self.scripts.append("")
        if tag == "div" and "plotly-graph-div" in (attributes.get("class") or ""):
            self.figure_divs += 1
        if tag == "section":
            self.section_ids.append(attributes.get("id"))
        if tag == "img":
            self.images.append(attributes.get("src") or "")

    def handle_endtag(self, tag):
        if tag == self._raw_tag:
            self._raw_tag = None

    def handle_data(self, data):
        if self._raw_tag == "script":
            self.scripts[-1] += data
        elif self._raw_tag is None:
            self.text.append(data)

    @property
    def visible_text(self) -> str:
        return " ".join(" ".join(self.text).split())


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory, data_dir) -> dict:
    return fabricate_store(tmp_path_factory.mktemp("report") / "store")


@pytest.fixture(scope="module")
def report(fabricated, tmp_path_factory) -> dict:
    """Write the report of A, B, the group and the ensemble with ``python -m core report`` (in-process)."""
    output = tmp_path_factory.mktemp("out") / "report.html"
    names = [fabricated["a"], fabricated["b"], fabricated["group"], fabricated["ensemble"]]
    code = main([
        "--store", str(fabricated["store"].root), "--data-dir", str(DATA_DIR),
        "report", *names, "-o", str(output), "--title", "Kernel <i>study</i>",
    ])
    assert code == 0
    document = output.read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(document)
    parser.close()
    subjects = resolve_subjects(fabricated["store"], names, shipped_models())
    return {"document": document, "parser": parser, "subjects": subjects, "output": output}


def test_report_names_every_subject(report):
    text = report["parser"].visible_text

    for subject in report["subjects"]:
        assert subject.label in text, subject.label


def test_report_has_title_and_command(report):
    text = report["parser"].visible_text

    # The page title, then the heading, shown as text and not as markup.
    assert text.startswith("Kernel <i>study</i> Kernel <i>study</i> Generated ")
    assert "<i>study</i>" not in report["document"]
    assert "python -m core report" in text


def test_report_has_pair_sentences(report):
    text = report["parser"].visible_text

    assert "0.20 points more accurate" in text
    assert "30 images only A gets right, 10 only B" in text
    # One sentence per pair of the 4 subjects. The ensemble of A and B predicts what A predicts (A is more confident).
    assert text.count("at the 5% level") == 5
    assert "duo (2 models) are equally accurate on the test set" in text


def test_report_ensemble_of_all_members(report):
    # A and B plus the group's two seeds; the ensemble subject adds no new member.
    text = report["parser"].visible_text

    assert "all 4 member models" in text


def test_report_group_accuracy(report):
    assert "99.70% ± 0.14 (2 seeds, 99.60% to 99.80%)" in report["parser"].visible_text


def test_report_inlines_plotly_once(report):
    parser = report["parser"]
    library = [script for script in parser.scripts if len(script) > 1_000_000]

    assert len(library) == 1
    assert "plotly" in library[0][:2000].lower()
    assert "<script src" not in report["document"]  # nothing is loaded from the network


def test_report_has_plotly_figures(report):
    parser = report["parser"]

    # accuracy vs parameters, loss, accuracy, per-digit accuracy, confusion difference
    assert parser.figure_divs == 5
    assert len(parser.scripts) == 1 + parser.figure_divs


def test_report_sections(report):
    assert report["parser"].section_ids == ["models", "pairs", "ensemble", "figures", "gallery", "configs", "environment"]


def test_report_environment(report, fabricated):
    import torch

    text = report["parser"].visible_text
    environment = text[text.index("Environment"):]

    assert f"torch {torch.__version__}" in environment  # the build tag (+cpu, +cu130) included
    for name in ("Python", "torchvision", "numpy", "scipy", "plotly", "streamlit", "OS", "CPU", "GPU"):
        assert f" {name} " in environment, name
    assert str(fabricated["store"].root.resolve()) in environment
    assert str(DATA_DIR.resolve()) in environment


def test_report_gallery_images(report):
    images = report["parser"].images
    text = report["parser"].visible_text

    # A alone right: 30 images; B alone right: 10. The group gets the 5 images right that A and B get wrong.
    assert "gets wrong (30 images, the first 24 shown)" in text
    assert "gets wrong (10 images)" in text
    assert "Images every model gets wrong No such test image." in text
    assert len(images) == 24 + 10
    assert all(src.startswith("data:image/png;base64,") for src in images)


def test_report_configs(report):
    text = report["parser"].visible_text

    assert '"model_config": { "arch": "cnn"' in text
    assert '"train_config": {' in text


def test_report_escapes_run_name(report):
    document = report["document"]

    assert SCRIPT_NAME not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert not any("<script>alert" in script for script in report["parser"].scripts)
    assert SCRIPT_NAME in report["parser"].visible_text  # shown to the reader as text


def test_report_missing_folder_exits_2(capsys, fabricated, tmp_path):
    output = tmp_path / "no" / "such" / "report.html"
    code = main(["--store", str(fabricated["store"].root), "report", fabricated["a"], "-o", str(output)])
    err = capsys.readouterr().err

    assert code == 2
    assert f"the folder {output.parent} of -o" in err
    assert "mkdir -p" in err
    assert not output.parent.exists()


def test_report_folder_as_output_exits_2(capsys, fabricated, tmp_path):
    code = main(["--store", str(fabricated["store"].root), "report", fabricated["a"], "-o", str(tmp_path)])

    assert code == 2
    assert "is a folder" in capsys.readouterr().err


def test_report_unknown_run_exits_2(capsys, fabricated, tmp_path):
    code = main(["--store", str(fabricated["store"].root), "report", "4242", "-o", str(tmp_path / "r.html")])

    assert code == 2
    assert "run 4242 not found" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_report_invariance_section(fabricated):
    # A made-up measurement in the shape core.invariance returns: a dip at the ends of every axis.
    settings = {"images": 300, "max_shift_px": 2, "max_angle_deg": 10, "angle_step_deg": 5}
    curve = {
        axis: {"axis": axis, "values": values, "accuracy": accuracy, "low": accuracy, "high": accuracy}
        for axis, values, accuracy in (
            ("x_shift", [-2, -1, 0, 1, 2], [0.5, 0.9, 0.99, 0.9, 0.5]),
            ("y_shift", [-2, -1, 0, 1, 2], [0.2, 0.6, 0.99, 0.6, 0.2]),
            ("rotation", [-10, -5, 0, 5, 10], [0.9, 0.97, 0.99, 0.97, 0.9]),
        )
    }
    subjects = resolve_subjects(fabricated["store"], [fabricated["a"], fabricated["b"]], shipped_models())
    invariance = {
        s.key: {"key": s.key, "label": s.label, "kind": s.kind, "rows": 1, "settings": settings, "curves": curve}
        for s in subjects
    }
    parser = ReportParser()
    parser.feed(build_report(fabricated["store"], subjects, data_dir=DATA_DIR, invariance=invariance))

    assert "invariance" in parser.section_ids
    assert parser.figure_divs == 5 + 3
    assert "Measured on the first 300 test images" in parser.visible_text
    assert "Images every model gets wrong (5 images)" in parser.visible_text
    assert parser.visible_text.count("keeps at least 95%") == 2


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_header_and_rows():
    rows = [
        {"name": "#1 alpha", "params": 65962, "test_accuracy": 0.9922999739646912, "receptive_field": "30 x 30", "epochs": None},
        {"name": "#2 beta, with comma", "params": 100, "test_accuracy": 0.5, "receptive_field": None, "epochs": 3},
    ]
    text = table_csv(rows, ["name", "params", "test_accuracy", "receptive_field", "epochs"])
    parsed = list(csv.reader(io.StringIO(text)))

    assert text.count("\n") == 3
    assert parsed[0] == ["name", "params", "test_accuracy", "receptive_field", "epochs"]
    assert parsed[1] == ["#1 alpha", "65962", "0.9923", "30 x 30", ""]  # a float32 accuracy, rounded to 6 places
    assert parsed[2] == ["#2 beta, with comma", "100", "0.5", "", "3"]


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1"])
def test_csv_neutralises_formulas(name):
    text = table_csv([{"name": name, "params": -5}], ["name", "params"])
    cell, params = list(csv.reader(io.StringIO(text)))[1]

    assert cell == "'" + name
    assert params == "-5"  # numbers stay numbers


# -- the app's Export section ---------------------------------------------------------------------


def export_script(store_root: str, specs: list[str]) -> None:
    """The Export section alone, as the Compare page calls it."""
    from app.export_view import render_export
    from core.compare import resolve_subjects, table_rows
    from core.inference import shipped_models
    from core.store import RunStore

    store = RunStore(store_root)
    shipped = shipped_models()
    render_export(store, resolve_subjects(store, specs, shipped), table_rows(store.list_runs(), shipped))


def download_buttons(at: AppTest) -> dict:
    return {button.proto.label: button.proto for button in at.get("download_button")}


def test_export_builds_report(fabricated, monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(DATA_DIR))
    at = AppTest.from_function(
        export_script, args=(str(fabricated["store"].root), [fabricated["a"], fabricated["b"]]), default_timeout=60
    ).run()

    assert not at.exception
    assert list(download_buttons(at)) == ["Download the table as CSV"]

    at.button(key="export_build").click().run()

    assert not at.exception
    assert not at.error
    buttons = download_buttons(at)
    assert "Download the HTML report" in buttons
    built = at.session_state["export_report"]
    assert built["file_name"] == f"mnist-lab-report-{datetime.date.today().isoformat()}.html"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in built["html"]
    assert "by <code>the MNIST Architecture Lab app</code>" in built["html"]

    at.text_input(key="export_title").input("Another title").run()

    assert "Download the HTML report" not in download_buttons(at)
    assert any("build it again" in caption.value for caption in at.caption)


def test_export_without_selection(fabricated):
    at = AppTest.from_function(export_script, args=(str(fabricated["store"].root), []), default_timeout=60).run()

    assert not at.exception
    assert "Select models in the table" in at.info[0].value
    assert list(download_buttons(at)) == ["Download the table as CSV"]
