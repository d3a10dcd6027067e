"""Train page: choose an architecture, its kernel shapes and the optimiser; queue runs; watch them live."""

from __future__ import annotations

import hashlib
import json
import time

import streamlit as st

from core.charts import accuracy_figure, loss_figure
from app.config_form import cost_metrics, settings_fields, settings_form, stage_editor
from app.escaping import escape_markdown
from app.services import REFRESH_S, config_changes, describe_config, describe_cost, ensure_worker, fit_to_budget, get_store, stage_table
from core.budget import MAX_BUDGET, MIN_BUDGET, PRESET_BUDGETS
from core.devices import available_devices
from core.errors import LabError
from core.models import ARCHITECTURES, default_model_config
from core.models.config import config_to_dict
from core.store import ACTIVE_STATUSES, MAX_SEEDS, RESUMABLE_STATUSES, clean_run_name
from core.training import MAX_SEED, OPTIMIZERS, SCHEDULERS, TrainConfig, parse_train_config

BUDGET_CHOICES = ["none", *PRESET_BUDGETS, "custom"]

DRAFT_CONFIG_KEY = "train_draft_config"

store = get_store()
ensure_worker()
st.title("Train")

# -- model ------------------------------------------------------------------

arch = st.selectbox(
    "Architecture",
    list(ARCHITECTURES),
    format_func=lambda name: f"{ARCHITECTURES[name].title} ({name})",
    key="arch",
)
spec = ARCHITECTURES[arch]
st.caption(f"{spec.description}  \nSource: {spec.paper}")

defaults = default_model_config(arch)
model_config = dict(defaults)

budget_col, width_col, dropout_col = st.columns(3)
budget_choice = budget_col.selectbox(
    "Parameter budget", BUDGET_CHOICES, key="budget",
    format_func=lambda choice: {"none": "none (use the width slider)", "custom": "custom..."}.get(choice, choice),
    help="fit the width multiplier (then single stage widths) so the model has about this many parameters",
)
budget = None
if budget_choice == "custom":
    budget = int(budget_col.number_input("Budget (parameters)", MIN_BUDGET, MAX_BUDGET, 68_000, 1_000, key="budget_custom"))
elif budget_choice != "none":
    budget = PRESET_BUDGETS[budget_choice]
if "width_mult" in defaults:
    model_config["width_mult"] = width_col.slider(
        "Width multiplier", 0.25, 3.0, float(defaults["width_mult"]), 0.05, key=f"width_{arch}", disabled=budget is not None,
        help="scales every layer's channel count, rounded to even counts (multiples of 4 from 32 up); the budget sets it when one is chosen",
    )
if "dropout" in defaults:
    model_config["dropout"] = dropout_col.slider("Dropout before the classifier", 0.0, 0.5, float(defaults["dropout"]), 0.05, key=f"dropout_{arch}")

if spec.has_stages:
    st.markdown("**Stages**: kernel, stride, dilation and pool window per axis (height, width); groups 1 is a full convolution, 0 depthwise")
    model_config["stages"] = stage_editor(spec, defaults["stages"])
settings_skip = ("stages", "width_mult", "dropout")
if spec.has_stages and settings_fields(spec, skip=settings_skip):
    with st.expander("Other settings"):
        settings, form_errors = settings_form(spec, defaults, skip=settings_skip)
else:
    settings, form_errors = settings_form(spec, defaults, skip=settings_skip)
model_config.update(settings)

# -- what the model costs, before training ------------------------------------

described = describe_config(json.dumps(model_config, sort_keys=True))
config_error = escape_markdown(form_errors[0]) if form_errors else described["error"]
final_config, fit = described["config"], None
if not config_error and budget is not None:
    try:
        fit = fit_to_budget(json.dumps(described["config"], sort_keys=True), budget)
    except LabError as error:
        config_error = str(error)
    else:
        final_config = fit.config

if config_error:
    st.error(f"This configuration cannot be built: {config_error}")
    final_config = None
else:
    cost = describe_cost(json.dumps(final_config, sort_keys=True))
    cost_metrics(cost)
    if fit is not None:
        changed = [change for change in config_changes(described["config"], fit.config) if not change.startswith("width_mult")]
        also = f"; the fit also set {', '.join(changed)}" if changed else ""
        st.caption(f"Budget {fit.budget:,}: {fit.params:,} parameters ({fit.error:+.1%}) at width_mult {fit.config['width_mult']}{also}")
        if not fit.within:
            st.warning(fit.describe())
    stage_rows = stage_table(cost["stages"])
    if stage_rows:
        with st.expander("Per-stage output size and receptive field"):
            st.dataframe(stage_rows, hide_index=True)
budget_missed = fit is not None and not fit.within
if final_config is not None:
    st.session_state[DRAFT_CONFIG_KEY] = final_config  # the Architecture page can show this config before training

# -- training ---------------------------------------------------------------

st.subheader("Training")
base = TrainConfig(**{**config_to_dict(TrainConfig()), **spec.recipe})
if spec.recipe:
    st.caption("Starts from this architecture's recipe: " + ", ".join(f"{k} {v}" for k, v in spec.recipe.items()))


def widget_key(setting: str) -> str:
    """Widget key of a training setting; settings in a recipe get one per architecture so its value applies."""
    return f"{setting}_{arch}" if setting in spec.recipe else setting


c1, c2, c3, c4 = st.columns(4)
optimizer = c1.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(base.optimizer), key=widget_key("optimizer"))
lr = c2.number_input("Learning rate (peak)", value=base.lr, min_value=0.0, format="%.5f", step=0.0005, key=widget_key("lr"))
scheduler = c3.selectbox("Schedule", SCHEDULERS, index=SCHEDULERS.index(base.scheduler), key=widget_key("scheduler"))
device = c4.selectbox("Device", available_devices(), key="device", help="only devices available on this machine are listed")
compile_model = c4.checkbox(
    "Compile (torch.compile)", value=base.compile, key="compile",
    help="compiles the model at the first step; meant for CUDA, because on a 2-core CPU compiled steps were slower",
)
c1, c2, c3, c4 = st.columns(4)
epochs = c1.number_input("Epochs", value=base.epochs, min_value=1, max_value=200, step=1, key=widget_key("epochs"))
batch_size = c2.number_input("Batch size", value=base.batch_size, min_value=2, max_value=8192, step=32, key=widget_key("batch_size"))
weight_decay = c3.number_input("Weight decay", value=base.weight_decay, min_value=0.0, format="%.5f", step=0.0001, key=widget_key("weight_decay"))
label_smoothing = c4.number_input("Label smoothing", value=base.label_smoothing, min_value=0.0, max_value=0.99, step=0.05, key=widget_key("label_smoothing"))
c1, c2, c3, c4, c5 = st.columns(5)
seed = c1.number_input("Seed", value=base.seed, min_value=0, step=1, key=widget_key("seed"))
seed_count = c2.number_input(
    "Repeat with seeds", value=1, min_value=1, max_value=MAX_SEEDS, step=1, key="seed_count",
    help="start this many runs with seeds Seed, Seed+1, ...; Compare shows them as one group with mean and spread",
)
patience = c3.number_input("Early stopping patience (0 = off)", value=0, min_value=0, step=1, key="patience")
subset = c4.number_input("Training images (0 = all 55,000)", value=0, min_value=0, max_value=55000, step=1000, key="train_subset")
name = c5.text_input("Run name (optional)", key="run_name", max_chars=100)

with st.expander("Augmentation"):
    augment = st.toggle("Augment training images", value=base.augment, key=widget_key("augment"), help="a random affine transform of every training image, per batch")
    c1, c2, c3, c4 = st.columns(4)
    rotate_deg = c1.slider("Rotation (degrees)", 0.0, 45.0, base.rotate_deg, 1.0, key=widget_key("rotate_deg"), disabled=not augment)
    translate = c2.slider("Translation (fraction of the image)", 0.0, 0.5, base.translate, 0.01, key=widget_key("translate"), disabled=not augment)
    scale = c3.slider("Scale (zoom range)", 0.0, 0.9, base.scale, 0.01, key=widget_key("scale"), disabled=not augment)
    shear_deg = c4.slider("Shear (degrees)", 0.0, 60.0, base.shear_deg, 1.0, key=widget_key("shear_deg"), disabled=not augment)
    c1, c2, c3 = st.columns(3)
    elastic = c1.toggle("Elastic distortion", value=base.elastic, key=widget_key("elastic"), disabled=not augment, help="applied on top of the affine transform")
    elastic_alpha = c2.slider("Elastic alpha (pixels)", 0.0, 28.0, base.elastic_alpha, 0.5, key=widget_key("elastic_alpha"), disabled=not (augment and elastic))
    elastic_sigma = c3.slider("Elastic sigma (pixels)", 0.5, 14.0, base.elastic_sigma, 0.5, key=widget_key("elastic_sigma"), disabled=not (augment and elastic))

train_config = {
    "optimizer": optimizer, "lr": float(lr), "scheduler": scheduler, "device": device, "epochs": int(epochs),
    "batch_size": int(batch_size), "weight_decay": float(weight_decay), "label_smoothing": float(label_smoothing),
    "seed": int(seed), "early_stopping_patience": int(patience), "train_subset": int(subset) or None,
    "augment": bool(augment), "rotate_deg": float(rotate_deg), "translate": float(translate), "scale": float(scale),
    "shear_deg": float(shear_deg), "elastic": bool(augment and elastic), "elastic_alpha": float(elastic_alpha),
    "elastic_sigma": float(elastic_sigma), "compile": bool(compile_model),
}
seeds = [int(seed) + offset for offset in range(int(seed_count))]
train_error = None
try:
    parse_train_config(train_config)
    clean_run_name(name)  # the same check the store makes, shown before Start instead of after
    if seeds[-1] > MAX_SEED:
        raise LabError(f"the last seed {seeds[-1]} is above {MAX_SEED}; lower the seed or the number of seeds")
except LabError as error:
    train_error = str(error)
    st.error(f"Training settings are invalid: {train_error}")

if st.button("Start training", type="primary", disabled=bool(final_config is None or budget_missed or train_error), key="start"):
    fingerprint = hashlib.sha256(json.dumps([final_config, train_config, name, seeds], sort_keys=True).encode()).hexdigest()
    last = st.session_state.get("last_start")
    if last and last[0] == fingerprint and time.time() - last[1] < 5:
        st.toast("That run was just queued; not queuing it twice.")
    else:
        try:
            if len(seeds) == 1:
                run_ids = [store.create_run(final_config, train_config, name=name or None)]
            else:
                run_ids = store.create_seed_group(final_config, train_config, seeds, name=name or None)
        except LabError as error:
            st.error(f"Could not queue the run: {error}")
        else:
            st.session_state["last_start"] = (fingerprint, time.time())
            st.session_state["watch_run"] = run_ids[0]
            if len(run_ids) == 1:
                st.toast(f"Run {run_ids[0]} queued")
            else:
                st.toast(f"Runs {run_ids[0]} to {run_ids[-1]} queued as seed group g{run_ids[0]} (seeds {seeds[0]} to {seeds[-1]})")

# -- live view --------------------------------------------------------------

st.divider()
active_now = bool(store.list_runs(statuses=ACTIVE_STATUSES))


@st.fragment(run_every=REFRESH_S if active_now else None)
def live_view() -> None:
    runs = store.list_runs()
    if not runs:
        st.info("No runs yet. Configure a model above and press Start training.")
        return
    active = [r for r in runs if r["status"] in ACTIVE_STATUSES]
    if active_now and not active:
        st.rerun()  # every run finished: rerun the page so this fragment stops polling

    recent = list(reversed(runs))[:50]
    ids = [r["id"] for r in recent]
    watched = st.session_state.get("watch_run")
    if watched not in ids:
        watched = (active[-1] if active else recent[0])["id"]
    run_id = st.selectbox(
        "Watch run", ids, index=ids.index(watched),
        format_func=lambda i: next(f"#{r['id']} {r['name']} ({r['status']})" for r in recent if r["id"] == i),
    )
    st.session_state["watch_run"] = run_id
    run = next(r for r in recent if r["id"] == run_id)
    steps, epochs_rows = store.step_metrics([run_id]), store.epoch_metrics([run_id])
    _status_line(run, queued_ids=[r["id"] for r in active if r["status"] == "queued"], last_epoch=epochs_rows[-1] if epochs_rows else None)

    names = {run_id: run["name"]}
    log_y = st.toggle("Log-scale loss", key="log_loss")
    left, right = st.columns(2)
    left.plotly_chart(loss_figure(names, steps, epochs_rows, log_y=log_y), key="live_loss")
    right.plotly_chart(accuracy_figure(names, epochs_rows), key="live_accuracy")


def _status_line(run: dict, *, queued_ids: list[int], last_epoch: dict | None) -> None:
    total_epochs = run["train_config"]["epochs"]
    if run["status"] == "queued":
        position = queued_ids.index(run["id"]) + 1 if run["id"] in queued_ids else 1
        st.progress(0.0, text=f"Queued, position {position}; runs train one at a time")
    elif run["status"] == "running":
        progress = min(max(run["progress"] or 0.0, 0.0), 1.0)
        elapsed = time.time() - (run["started_at"] or time.time())
        left = f", about {elapsed * (1 - progress) / progress:.0f} s left" if progress > 0.01 else ""
        speed = f"; last epoch {last_epoch['epoch_time_s']:.1f} s at {last_epoch['images_per_s']:,.0f} images/s" if last_epoch else ""
        st.progress(progress, text=f"Epoch {min(run['epochs_completed'] + 1, total_epochs)} of {total_epochs}, {progress:.0%} done{left}{speed}")
    else:
        message = f"Run #{run['id']} {run['status']}"
        if run["test_accuracy"] is not None:
            message += f": test accuracy {run['test_accuracy']:.2%} in {run['wall_time_s']:.0f} s"
        elif run["error"]:
            message += f": {run['error']}"
        {"completed": st.success, "cancelled": st.warning}.get(run["status"], st.error)(message)

    if run["status"] in ACTIVE_STATUSES:
        if st.button("Cancel this run", key=f"cancel_{run['id']}"):
            status = store.request_cancel(run["id"])
            st.toast(f"Run {run['id']} {'cancelled' if status == 'cancelled' else 'will stop within a few seconds'}")
    elif run["status"] in RESUMABLE_STATUSES:
        after = f" after epoch {run['epochs_completed']}" if run["epochs_completed"] else " from the start"
        if st.button(f"Resume{after}", key=f"resume_{run['id']}", help="queue this run again; it keeps its config and curves"):
            try:
                store.reopen_for_resume(run["id"])
            except LabError as error:
                st.error(f"Could not resume run {run['id']}: {error}")
            else:
                st.session_state["watch_run"] = run["id"]
                st.rerun()  # the whole page, so the live view starts polling again


live_view()
