"""Draw page: draw or upload a digit and see every selected model's prediction."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.charts import probabilities_figure
from app.escaping import escape_markdown
from app.services import get_store, list_models
from core.errors import LabError
from core.inference import load_cached, predict_probabilities
from core.preprocess import NO_DIGIT_MESSAGE, decode_image, to_mnist

CANVAS_SIZE = 280
store = get_store()
st.title("Draw")

models = list_models(store)
if not models:
    st.warning("No trained models yet: the checkpoints/ folder is empty and no run has completed.")
    st.stop()

labels = {m.key: m.label for m in models}
default_keys = [m.key for m in models if m.key.startswith("shipped:")] or [models[0].key]
chosen = st.multiselect("Models", list(labels), default=default_keys, format_func=labels.get, key="draw_models")

draw_col, input_col = st.columns([3, 2])
with draw_col:
    st.session_state.setdefault("canvas_version", 0)
    stroke = st.slider("Stroke width", 8, 40, 22, key="stroke_width")
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
            height=CANVAS_SIZE,
            width=CANVAS_SIZE,
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

with input_col:
    st.markdown("**What the models receive (28 x 28)**")
    if digit is None:
        st.info("Draw a digit on the canvas (or upload an image) to see every model's answer.")
    else:
        st.image(np.kron(digit.image, np.ones((8, 8), dtype=np.float32)), clamp=True, caption="white ink on black, centred by mass")

if digit is not None and not chosen:
    st.info("Select at least one model above to see its prediction.")
if digit is not None and chosen:
    st.subheader("Answers")
    columns = st.columns(min(3, len(chosen)))
    by_key = {m.key: m for m in models}
    for index, key in enumerate(chosen):
        entry = by_key[key]
        with columns[index % len(columns)]:
            try:
                loaded = load_cached(entry.path)  # cached per process by path and modification time
            except LabError as error:
                st.error(escape_markdown(f"{entry.label}: {error}"))
                continue
            probabilities = predict_probabilities(loaded, digit.tensor)[0].tolist()
            top = int(np.argmax(probabilities))
            accuracy = f", test accuracy {entry.test_accuracy:.2%}" if entry.test_accuracy is not None else ""
            st.markdown(f"**{escape_markdown(entry.label)}** says **{top}** ({probabilities[top]:.1%})  \n{entry.arch}{accuracy}")
            st.plotly_chart(probabilities_figure(probabilities), key=f"probabilities_{key}")
