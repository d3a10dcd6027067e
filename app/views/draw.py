"""Draw page: draw or upload a digit, move or turn it, and see each selected model's prediction and why."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.escaping import escape_markdown
from app.presentation import is_presenting, present_figure
from app.services import get_store, list_shipped
from core.charts import prediction_sweep_figure, probabilities_figure, saliency_figure
from core.compare import Subject, list_subjects, subject_outputs
from core.errors import LabError
from core.inference import load_cached
from core.invariance import AXIS_NAMES, InvarianceSettings, prediction_sweeps, subject_probabilities, transformed_digit
from core.preprocess import NO_DIGIT_MESSAGE, decode_image, to_mnist
from core.saliency import METHODS, ensemble_saliency

CANVAS_SIZE = 280
PRESENTATION_CANVAS_SIZE = 420  # large enough to draw on in front of an audience
DEFAULT_STROKE = 22
SWEEP = InvarianceSettings()  # the ranges of the sliders below and of the Compare page's curves
DRAW_KINDS = ("shipped", "run", "ensemble")  # a seed group's runs are listed one by one instead

store = get_store()
presenting = is_presenting()


def ensemble_accuracy(subject: Subject) -> float | None:
    """Return an ensemble's test accuracy from its members' stored outputs, or None when they cannot be read."""
    try:
        return subject_outputs(subject, store).accuracy
    except LabError:
        return None  # the page still predicts with the ensemble; only the accuracy is left out



st.title("Draw")

subjects = [s for s in list_subjects(store, list_shipped()) if s.kind in DRAW_KINDS]
if not subjects:
    st.warning("No trained models yet: the checkpoints/ folder is empty and no run has completed.")
    st.stop()

by_key = {s.key: s for s in subjects}
default_keys = [s.key for s in subjects if s.kind == "shipped"] or [subjects[0].key]
chosen = st.multiselect(
    "Models", list(by_key), default=default_keys, format_func=lambda key: by_key[key].label, key="draw_models",
    help="Shipped models, completed runs and ensembles; an ensemble predicts the argmax of its members' mean probabilities.",
)

draw_col, input_col = st.columns([3, 2])
with draw_col:
    st.session_state.setdefault("canvas_version", 0)
    stroke = DEFAULT_STROKE if presenting else st.slider("Stroke width", 8, 40, DEFAULT_STROKE, key="stroke_width")
    pixels = None
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as error:  # the component only registers under `streamlit run`
        st.warning(f"The drawing canvas is unavailable here ({type(error).__name__}); upload an image instead.")
    else:
        result = st_canvas(
            stroke_width=stroke,
            stroke_color="#FFFFFF",
            background_color="#000000",
            height=PRESENTATION_CANVAS_SIZE if presenting else CANVAS_SIZE,
            width=PRESENTATION_CANVAS_SIZE if presenting else CANVAS_SIZE,
            drawing_mode="freedraw",
            return_image_data=True,
            key=f"canvas_{st.session_state.canvas_version}",
        )
        if result is not None and result.image_data is not None:
            pixels = np.asarray(result.image_data)
    if st.button("Clear", key="clear_canvas"):
        st.session_state.canvas_version += 1
        st.rerun()
    upload = st.file_uploader("...or upload an image of one digit", type=["png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"], key="upload")

digit = None
if upload is not None:
    st.caption("Showing the uploaded image. Remove the upload to classify the canvas again.")
try:
    if upload is not None:
        decoded = decode_image(upload.getvalue(), name=upload.name)
        for note in decoded.notes:
            st.info(escape_markdown(note))
        digit = to_mnist(decoded.pixels)
        if digit is None:
            st.warning(escape_markdown(f"{upload.name}: {NO_DIGIT_MESSAGE}"))
    elif pixels is not None:
        digit = to_mnist(pixels)
except LabError as error:
    st.error(escape_markdown(str(error)))  # the message quotes the file name the user chose
if digit is not None:
    st.session_state["draw_digit"] = digit  # the Architecture page shows feature maps for the last drawing


def describe_transform(dx: int, dy: int, angle: int) -> str:
    parts = []
    if dx:
        parts.append(f"{abs(dx)} px {'right' if dx > 0 else 'left'}")
    if dy:
        parts.append(f"{abs(dy)} px {'down' if dy > 0 else 'up'}")
    if angle:
        parts.append(f"turned {abs(angle)}° {'counter-clockwise' if angle > 0 else 'clockwise'}")
    return ", then moved " + " and ".join(parts) if parts else ""


with input_col:
    st.markdown("**What the models receive (28 x 28)**")
    shift_x = st.slider("Shift x (px, + is right)", -SWEEP.max_shift_px, SWEEP.max_shift_px, 0, key="draw_shift_x")
    shift_y = st.slider("Shift y (px, + is down)", -SWEEP.max_shift_px, SWEEP.max_shift_px, 0, key="draw_shift_y")
    angle = st.slider(
        "Rotation (degrees, + is counter-clockwise)", -SWEEP.max_angle_deg, SWEEP.max_angle_deg, 0,
        step=SWEEP.angle_step_deg, key="draw_rotation",
    )
    if digit is None:
        st.info("Draw a digit on the canvas (or upload an image) to see every model's answer.")
    else:
        moved_image, moved_tensor = transformed_digit(digit.image, dx=shift_x, dy=shift_y, angle_deg=angle)
        caption = None if presenting else "white ink on black, centred by mass" + describe_transform(shift_x, shift_y, angle)
        # A fixed width keeps a long caption from stretching the image.
        st.image(np.kron(moved_image, np.ones((8, 8), dtype=np.float32)), clamp=True, caption=caption, width=28 * 8)

if digit is not None and not chosen:
    st.info("Select at least one model above to see its prediction.")
if digit is not None and chosen:
    toggle_col, method_col = st.columns([1, 1])
    with toggle_col:
        explain = st.toggle("Why did it say that?", key="draw_saliency", help="Overlay each model's saliency map on its input.")
    method = None
    if explain:
        with method_col:
            method = st.selectbox(
                "Saliency method", list(METHODS), format_func=METHODS.get, key="draw_saliency_method",
                help="gradient x input: how much each pixel's ink raises the predicted class's score. "
                     "occlusion: how much its probability drops when the 4x4 patches around a pixel are erased.",
            )

    st.subheader("Answers")
    columns = st.columns(min(3, len(chosen)))
    sweeps = {}
    for index, key in enumerate(chosen):
        subject = by_key[key]
        with columns[index % len(columns)]:
            try:
                probabilities = subject_probabilities(subject, moved_tensor)[0].tolist()  # models cached per process
                sweeps[key] = prediction_sweeps(subject, digit.image, dx=shift_x, dy=shift_y, angle_deg=angle, settings=SWEEP)
            except LabError as error:
                st.error(escape_markdown(f"{subject.label}: {error}"))
                continue
            top = int(np.argmax(probabilities))
            st.markdown(f"**{escape_markdown(subject.label)}** says **{top}** ({probabilities[top]:.1%})")
            if not presenting:
                accuracy = subject.members[0].test_accuracy if subject.kind != "ensemble" else ensemble_accuracy(subject)
                details = f"{subject.arch}, test accuracy {accuracy:.2%}" if accuracy is not None else subject.arch
                st.caption(escape_markdown(details))
            st.plotly_chart(present_figure(probabilities_figure(probabilities)), key=f"probabilities_{key}")
            if method is not None:
                try:
                    models = [load_cached(member.path).model for member in subject.members]
                    saliency = ensemble_saliency(models, moved_image, top, method)
                except LabError as error:
                    st.error(escape_markdown(f"{subject.label}: {error}"))
                    continue
                title = f"why {top}: {METHODS[method]}"
                st.plotly_chart(present_figure(saliency_figure(moved_image, saliency, title=title)), key=f"saliency_{key}")

    if sweeps:
        st.subheader("How the answers change as the digit moves")
        if not presenting:
            st.caption(
                "One row per model and one column per setting: the number is the model's answer, the colour its "
                "confidence. Each chart varies one setting and keeps the other two as set above (red box)."
            )
        current = {"x_shift": shift_x, "y_shift": shift_y, "rotation": angle}
        for axis, tab in zip(current, st.tabs([AXIS_NAMES[axis].capitalize() for axis in current])):
            with tab:
                rows = [(by_key[key].label, sweep[axis]) for key, sweep in sweeps.items()]
                st.plotly_chart(present_figure(prediction_sweep_figure(rows, axis, current[axis])), key=f"sweep_{axis}")
