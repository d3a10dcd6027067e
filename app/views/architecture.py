"""Architecture page: layers, stages and receptive field of any model; feature maps of a trained one."""

from __future__ import annotations

import copy
import json

import numpy as np
import streamlit as st

from core.charts import image_grid_figure, stage_diagram
from app.config_form import cost_metrics
from app.escaping import escape_markdown
from app.services import describe_config, describe_cost, fit_to_budget, get_store, list_models, mnist_test_set, stage_table
from core.budget import PRESET_BUDGETS
from core.data import resolve_data_dir
from core.errors import LabError
from core.inference import load_cached, predict_probabilities
from core.inspect import first_layer_filters, select_digit, stage_outputs
from core.models import ARCHITECTURES, default_model_config

SOURCES = {"shipped": "Shipped model", "run": "Trained run", "config": "Untrained config"}
DRAFT_CONFIG_KEY = "train_draft_config"  # the Train page keeps its current config here
DRAW_DIGIT_KEY = "draw_digit"  # the Draw page stores its last PreparedDigit here
MAPS_PER_STAGE = 16
MAX_FILTERS = 32
TABLE_ROW_PX, MAX_TABLE_PX = 35, 720  # Streamlit's dataframe row height; taller tables scroll

store = get_store()
st.title("Architecture")

# -- which model --------------------------------------------------------------

source = st.radio("Model", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="inspect_source")
models = list_models(store)
entry, model_config = None, None
if source == "config":
    arch_col, budget_col = st.columns(2)
    arch = arch_col.selectbox(
        "Architecture", list(ARCHITECTURES), key="inspect_arch",
        format_func=lambda name: f"{ARCHITECTURES[name].title} ({name})",
    )
    budget = budget_col.selectbox("Parameter budget", ["none", *PRESET_BUDGETS], key="inspect_budget",
                                  help="fit the default config's width to about this many parameters")
    spec = ARCHITECTURES[arch]
    st.caption(f"{spec.description}  \nSource: {spec.paper}")
    model_config = default_model_config(arch)
    draft = st.session_state.get(DRAFT_CONFIG_KEY)
    use_draft = bool(draft) and draft.get("arch") == arch and st.toggle(
        "Use the config edited on the Train page", value=True, key="inspect_use_draft",
        help="the kernel shapes, budget and settings currently set on the Train page",
    )
    if use_draft:
        model_config = draft
    elif budget != "none":
        try:
            fit = fit_to_budget(json.dumps(model_config, sort_keys=True), PRESET_BUDGETS[budget])
        except LabError as error:
            st.error(f"The default {arch} config cannot be fitted to {budget}: {error}")
            st.stop()
        model_config = fit.config
        if not fit.within:
            st.warning(fit.describe())
else:
    prefix = "shipped:" if source == "shipped" else "run:"
    choices = [m for m in models if m.key.startswith(prefix)]
    if not choices:
        st.info("No shipped models in checkpoints/." if source == "shipped" else "No completed runs yet: train one on the Train page.")
        st.stop()
    labels = {m.key: m.label for m in choices}
    chosen = st.selectbox("Trained model", list(labels), format_func=labels.get, key=f"inspect_{source}")
    entry = next(m for m in choices if m.key == chosen)
    try:
        loaded = load_cached(entry.path)
    except LabError as error:
        st.error(escape_markdown(f"{entry.label}: {error}"))
        st.stop()
    model_config = loaded.model_config

described = describe_config(json.dumps(model_config, sort_keys=True))
if described["error"]:
    st.error(f"This configuration cannot be built: {described['error']}")
    st.stop()
cost = describe_cost(json.dumps(described["config"], sort_keys=True))

# -- cost and structure -------------------------------------------------------

cost_metrics(cost)

st.subheader("Stages")
st.graphviz_chart(stage_diagram(cost["stages"], arch=described["config"]["arch"]))
stage_rows = stage_table(cost["stages"])
if stage_rows:
    st.markdown("**Receptive field per stage**, in input pixels per axis")
    st.dataframe(stage_rows, hide_index=True, key="stage_table")
else:
    st.caption("Every unit of a fully connected layer sees the whole 28x28 image.")

st.subheader("Layers")
layer_rows = [
    {
        "name": layer["name"],
        "type": layer["type"],
        "kernel": "x".join(map(str, layer["kernel"])) if layer["kernel"] else "",
        "stride": "x".join(map(str, layer["stride"])) if layer["stride"] else "",
        "groups": "" if layer["groups"] is None else str(layer["groups"]),
        "output shape": "x".join(map(str, layer["output_shape"])) if layer["output_shape"] else "",
        "parameters": layer["params"],
        "FLOPs (multiply-adds)": layer["flops"],
    }
    for layer in cost["layers"]
]
layer_rows.append({"name": "total", "type": "", "kernel": "", "stride": "", "groups": "", "output shape": "",
                   "parameters": cost["params"], "FLOPs (multiply-adds)": cost["flops"]})
st.dataframe(
    layer_rows, hide_index=True, key="layer_table", height=min(TABLE_ROW_PX * (len(layer_rows) + 1) + 3, MAX_TABLE_PX),
    column_config={
        "parameters": st.column_config.NumberColumn(format="localized"),
        "FLOPs (multiply-adds)": st.column_config.NumberColumn(format="localized"),
    },
)

if entry is None:
    st.info("Pick a shipped model or a trained run to see its feature maps and filters.")
    st.stop()

# -- what the trained model computes ------------------------------------------

st.subheader("Feature maps")
inputs = ["test"]
if st.session_state.get(DRAW_DIGIT_KEY) is not None:
    inputs.append("drawing")
input_choice = st.radio(
    "Input", inputs, horizontal=True, key="inspect_input",
    format_func={"test": "MNIST test digit", "drawing": "Last drawing from the Draw page"}.get,
)
if input_choice == "drawing":
    digit = st.session_state[DRAW_DIGIT_KEY]
    tensor, image, caption = digit.tensor, digit.image, "your drawing"
else:
    index = st.columns(3)[0].number_input("Test digit index", value=0, step=1, key="digit_index", help="0 to 9,999 in the official test set")
    try:
        images, labels = mnist_test_set(str(resolve_data_dir().resolve()))
        tensor, image, label = select_digit(images, labels, int(index))
    except LabError as error:
        st.error(str(error))
        st.stop()
    caption = f"test digit {int(index)}, labelled {label}"

# A private copy, so forward hooks from two sessions never fire on the same cached model.
model = copy.deepcopy(loaded.model)
probabilities = predict_probabilities(loaded, tensor)[0]
predicted = int(probabilities.argmax())
image_col, text_col = st.columns([1, 4])
image_col.image(np.kron(np.asarray(image, dtype=np.float32) / float(np.asarray(image).max() or 1), np.ones((4, 4), dtype=np.float32)),
                clamp=True, caption=caption)
text_col.markdown(f"**{escape_markdown(entry.label)}** predicts **{predicted}** ({float(probabilities[predicted]):.1%}).")
text_col.caption(
    f"The first {MAPS_PER_STAGE} channels of every stage, each scaled to its own range (bright is high). "
    "Filters: red is a positive weight, blue a negative one, white zero."
)

filters = first_layer_filters(model)
if filters is not None:
    st.plotly_chart(
        image_grid_figure(filters.numpy(), title=f"First-layer filters: {min(len(filters), MAX_FILTERS)} of {len(filters)}",
                          max_images=MAX_FILTERS, color_scale="RdBu_r", symmetric=True),
        key="filters_chart",
    )
else:
    st.caption("This model's first layer has no spatial filters to show.")

outputs = stage_outputs(model, tensor)
if not outputs:
    st.caption("This model has no stage with a spatial output, so there are no feature maps to show.")
for position, (name, maps) in enumerate(outputs):
    title = f"{name}: {maps.shape[0]} x {maps.shape[1]} x {maps.shape[2]}"
    st.plotly_chart(image_grid_figure(maps.numpy(), title=title, max_images=MAPS_PER_STAGE), key=f"maps_{position}")
