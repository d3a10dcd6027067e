"""Compare page section: how the selected subjects' test accuracy survives shifts and rotation."""

from __future__ import annotations

import os

import streamlit as st

from app.escaping import escape_markdown
from app.presentation import present_figure
from core.charts import invariance_figure
from core.compare import Subject
from core.data import resolve_data_dir
from core.devices import cpu_threads
from core.errors import LabError
from core.invariance import (
    AXES, DEFAULT_IMAGES, TEST_SET_SIZE, InvarianceSettings, cached_result, describe_invariance, measure_subjects,
)
from core.store import RunStore


def render_invariance(store: RunStore, subjects: list[Subject]) -> None:
    """Show accuracy against x shift, y shift and rotation, measuring missing curves on request.

    Measured curves are cached in the run store, so later visits show them without the button.
    """
    st.subheader("Invariance: shift and rotation")
    if not subjects:
        st.info("Select models, seed groups or ensembles to see how their accuracy survives shifts and rotation.")
        return

    images = st.number_input(
        "Test images", min_value=1, max_value=TEST_SET_SIZE, value=DEFAULT_IMAGES, step=1000, key="invariance_images",
        help=f"The first N official test images. {DEFAULT_IMAGES:,} took about 15 s for the shipped CNN on a 2-core CPU; "
             f"{TEST_SET_SIZE:,} is the whole test set.",
    )
    settings = InvarianceSettings(images=int(images))
    try:
        results = {subject.key: cached_result(subject, store, settings) for subject in subjects}
    except LabError as error:
        st.error(escape_markdown(str(error)))
        return

    missing = [subject for subject in subjects if results[subject.key] is None]
    if missing:
        names = ", ".join(subject.label for subject in missing)
        notice = st.empty()  # cleared once the curves are measured, so it does not sit above them
        with notice.container():
            st.caption(escape_markdown(f"Not measured yet on {settings.images:,} test images: {names}."))
            clicked = st.button(f"Compute ({len(missing)} of {len(subjects)})", key="invariance_compute")
        if clicked:
            bar = st.progress(0.0, text="Loading the test images...")
            try:
                # The app classifies drawings with one thread; this one-off measurement may use every core.
                with cpu_threads(os.cpu_count() or 1):
                    measured = measure_subjects(
                        missing, store, settings, data_dir=resolve_data_dir(),
                        on_progress=lambda fraction, message: bar.progress(min(fraction, 1.0), text=escape_markdown(message)),
                    )
            except LabError as error:
                bar.empty()
                st.error(escape_markdown(str(error)))
                return
            bar.empty()
            notice.empty()
            results.update({result.key: result for result in measured})

    ready = [results[subject.key] for subject in subjects if results[subject.key] is not None]
    if not ready:
        return
    st.caption(
        f"Accuracy on the first {settings.images:,} test images, so at no shift it can differ from the table's "
        "accuracy on all 10,000."
    )
    for axis, column in zip(AXES, st.columns(len(AXES))):
        with column:
            st.plotly_chart(present_figure(invariance_figure(ready, axis)), key=f"invariance_{axis}")
    for result in ready:
        st.markdown(f"- {escape_markdown(describe_invariance(result))}")
