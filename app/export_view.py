"""Export section of the Compare page: the runs table as CSV and an HTML report of the selected models.

The report takes seconds (test outputs, bootstrap intervals, figures), so it is
built when the user presses a button, with a progress bar, and then offered for
download. The built file is kept in the session until the selection or the title
changes.
"""

from __future__ import annotations

import datetime

import streamlit as st

from app.escaping import escape_markdown
from core.compare import Subject
from core.data import resolve_data_dir
from core.errors import LabError
from core.report import DEFAULT_TITLE, build_report, count_text, export_columns, measure_invariance, table_csv
from core.store import RunStore

REPORT_STATE = "export_report"  # session key: {"request": ..., "html": str, "file_name": str}


def _today() -> str:
    return datetime.date.today().isoformat()


def render_export(store: RunStore, subjects: list[Subject], rows: list[dict]) -> None:
    """Offer the runs table ``rows`` as CSV and build, then offer, an HTML report of ``subjects``."""
    st.download_button(
        "Download the table as CSV", data=table_csv(rows, export_columns(rows)), file_name=f"mnist-lab-runs-{_today()}.csv",
        mime="text/csv", key="export_csv", on_click="ignore", disabled=not rows,
        help="One line per row of the table above, with every column.",
    )

    if not subjects:
        st.info("Select models in the table to build an HTML report of them.")
        return
    title = st.text_input("Report title", value=DEFAULT_TITLE, key="export_title", max_chars=200)
    invariance = st.checkbox(
        "Include invariance curves", key="export_invariance",
        help="Accuracy under x/y shifts and rotations on the first 2,000 test images. The first time this takes "
             "up to a minute per model on a CPU; later reports read the stored curves.",
    )
    request = {"keys": [s.key for s in subjects], "title": title, "invariance": invariance}

    if st.button(f"Build the HTML report of {count_text(len(subjects), 'model')}", key="export_build"):
        _build(store, subjects, request)

    built = st.session_state.get(REPORT_STATE)
    if built is None:
        return
    if built["request"] != request:
        st.caption("The selection or settings changed since the last report; build it again to download it.")
        return
    st.download_button(
        "Download the HTML report", data=built["html"], file_name=built["file_name"], mime="text/html",
        key="export_html", on_click="ignore", type="primary",
        help="One HTML file with everything inlined; it opens in a browser without a network connection.",
    )


def _progress_between(bar, start: float, end: float):
    """Return a progress callback that maps 0..1 onto ``start``..``end`` of ``bar``."""

    def update(fraction: float, message: str) -> None:
        bar.progress(start + (end - start) * min(max(fraction, 0.0), 1.0), text=escape_markdown(message))

    return update


def _build(store: RunStore, subjects: list[Subject], request: dict) -> None:
    bar = st.progress(0.0, text="Starting the report...")
    data_dir = resolve_data_dir()
    report_start = 0.5 if request["invariance"] else 0.0
    try:
        invariance = None
        if request["invariance"]:
            invariance = measure_invariance(store, subjects, data_dir=data_dir, on_progress=_progress_between(bar, 0.0, 0.5))
        document = build_report(
            store, subjects, data_dir=data_dir, title=request["title"], invariance=invariance, generated_by="app",
            on_progress=_progress_between(bar, report_start, 1.0),
        )
    except LabError as error:
        bar.empty()
        st.error(f"The report could not be built: {escape_markdown(str(error))}")
        return
    bar.empty()
    st.session_state[REPORT_STATE] = {"request": request, "html": document, "file_name": f"mnist-lab-report-{_today()}.html"}
