"""Compare page: models, seed groups and ensembles in one table, with their curves, significance and differences.

The page lays out widgets and calls ``core.compare`` and ``core.curves``. Test
outputs are cached per subject, keyed by its members' checkpoint files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from app.escaping import escape_markdown
from app.export_view import render_export
from app.invariance_view import render_invariance
from app.presentation import SIZE_SCALE, is_presenting, present_figure
from app.services import get_store, list_shipped, mnist_test_set
from core.charts import (
    confusion_difference_figure, confusion_figure, curve_figure, params_figure, per_class_figure,
)
from core.compare import (
    TABLE_COLUMNS, Subject, SubjectOutputs, compare_pair, confusion_matrix, images_all_get_wrong, images_only_a_gets_right,
    list_subjects, per_class_accuracy, subject_outputs, table_rows,
)
from core.curves import (
    BANDS, MAX_SMOOTHING, STEP_LOSS, X_AXES, build_curves, curve_sources, ensemble_row, group_rows,
    members_without_outputs, outputs_fingerprint, subject_tags, summary_rows, table_key,
)
from core.data import resolve_data_dir
from core.errors import LabError
from core.store import ACTIVE_STATUSES, RunStore

GALLERY_IMAGES = 24  # images shown per gallery list; the total count is always shown
GALLERY_WIDTH_PX = 100
TABLE_ROW_PX = 35  # the data grid's default row height at Streamlit's default font size
TABLE_MAX_HEIGHT_PX = 700  # about 19 rows; longer tables scroll

store = get_store()
presenting = is_presenting()
data_dir = str(resolve_data_dir())
st.title("Compare")


@st.cache_data(show_spinner=False, max_entries=64)
def cached_outputs(fingerprint: tuple, store_root: str, data_dir: str, _subject: Subject, _store: RunStore) -> SubjectOutputs:
    """Return a subject's test outputs, computed once per ``fingerprint`` (member files and mtimes) and store."""
    return subject_outputs(_subject, _store, data_dir)


def load_outputs(subject: Subject) -> SubjectOutputs:
    """Return the subject's outputs; members without stored outputs are evaluated once under a spinner."""
    missing = members_without_outputs(subject, store)
    fingerprint = outputs_fingerprint(subject, store)
    if not missing:
        return cached_outputs(fingerprint, str(store.root), data_dir, subject, store)
    names = ", ".join(member.label for member in missing)
    with st.spinner(f"Evaluating {escape_markdown(names)} on the 10,000 test images once; later visits read the stored outputs..."):
        return cached_outputs(fingerprint, str(store.root), data_dir, subject, store)


def outputs_or_error(subjects: list[Subject]) -> tuple[dict[str, SubjectOutputs], dict[str, str]]:
    """Load each subject's outputs; a failure is kept as its message so the other subjects still show."""
    outputs, errors = {}, {}
    for subject in subjects:
        try:
            outputs[subject.key] = load_outputs(subject)
        except LabError as error:
            errors[subject.key] = str(error)
    return outputs, errors


# -- the table ---------------------------------------------------------------------------------------

runs = store.list_runs()
shipped = list_shipped()
subjects = {subject.key: subject for subject in list_subjects(store, shipped, runs=runs)}
ensembles = [s for s in subjects.values() if s.kind == "ensemble"]
ensemble_outputs, ensemble_errors = outputs_or_error(ensembles)

# Groups and ensembles sum up several runs, so they come before the runs, where a long table keeps them in view.
rows = table_rows([], shipped) + group_rows(runs, subjects)
rows += [ensemble_row(s, ensemble_outputs[s.key].accuracy if s.key in ensemble_outputs else None) for s in ensembles]
rows += table_rows(runs, [])

if not rows:
    st.info("Nothing to compare yet." if presenting else "Nothing to compare yet: train a model on the Train page.")
    st.stop()

st.session_state.setdefault("table_version", 0)
if "flash" in st.session_state:
    st.success(st.session_state.pop("flash"))
st.caption(
    "Select rows to compare them. A seed group row averages its completed seeds; an ensemble averages its members' "
    "class probabilities."
)
for key, message in ensemble_errors.items():
    st.error(f"{escape_markdown(subjects[key].label)}: {escape_markdown(message)}")

# Selections are row positions. The key follows the list of rows, so a new, deleted or
# moved row starts a fresh table, and the previous selection is restored by row key.
remembered = st.session_state.get("compare_selected_keys", [])
default_rows = [index for index, row in enumerate(rows) if row["key"] in remembered]
event = st.dataframe(
    rows,
    height=round(min(TABLE_ROW_PX * (len(rows) + 1) + 3, TABLE_MAX_HEIGHT_PX) * (SIZE_SCALE if presenting else 1.0)),
    key=f"compare_table_{table_key(rows)}",
    on_select="rerun",
    selection_mode="multi-row",
    selection_default={"selection": {"rows": default_rows}} if default_rows else None,
    hide_index=True,
    placeholder="–",
    # Accuracy and seed columns first, so they stay in view without scrolling sideways.
    column_order=[
        "name", "architecture", "test_accuracy", "test_accuracy_std", "seeds", "pending_seeds", "best_val_accuracy",
        *[column for column in TABLE_COLUMNS if column not in ("name", "architecture", "test_accuracy", "best_val_accuracy")],
    ],
    column_config={
        "params": st.column_config.NumberColumn("parameters", format="localized"),
        "flops": st.column_config.NumberColumn("FLOPs (multiply-adds)", format="localized", help="per 28x28 image"),
        "receptive_field": st.column_config.TextColumn("receptive field (h x w)", help="input pixels that the last stage sees"),
        "best_val_accuracy": st.column_config.NumberColumn("best val accuracy", format="percent"),
        "test_accuracy": st.column_config.NumberColumn("test accuracy", format="percent", help="mean over the seeds of a group"),
        "test_accuracy_std": st.column_config.NumberColumn(
            "± std", format="percent", help="sample standard deviation of test accuracy over a group's completed seeds"
        ),
        "seeds": st.column_config.NumberColumn("seeds", help="completed seeds of a group"),
        "pending_seeds": st.column_config.NumberColumn("pending", help="seeds of a group still queued, running or failed"),
        "training_time_s": st.column_config.NumberColumn("training time (s)", format="%.1f", help="summed over a group's seeds"),
    },
)
selected = [rows[i] for i in event.selection.rows if i < len(rows)]
st.session_state["compare_selected_keys"] = [row["key"] for row in selected]
selected_keys = {row["key"] for row in selected}

st.plotly_chart(present_figure(params_figure(rows, selected_keys)), key="params_chart")


# -- curves ------------------------------------------------------------------------------------------


def render_curves(selected: list[dict[str, Any]]) -> None:
    st.subheader("Training curves")
    sources, notes = curve_sources(store, selected, shipped, subjects)
    for note in notes:
        st.caption(escape_markdown(note))
    if not sources:
        return

    smoothing_column, axis_column, band_column, log_column = st.columns([3, 3, 2, 2])
    smoothing = smoothing_column.slider(
        "Smoothing", 0.0, MAX_SMOOTHING, 0.6, 0.01, key="curves_smoothing",
        help="Exponential moving average weight, as in TensorBoard; 0 draws the raw values. The raw curve stays faint behind.",
    )
    x_axis = axis_column.radio("x axis", list(X_AXES), format_func=X_AXES.get, horizontal=True, key="curves_x_axis")
    band = band_column.radio("Seed group band", list(BANDS), format_func=BANDS.get, key="curves_band")
    log_x = log_column.toggle("Log x axis", key="curves_log_x")
    log_y = log_column.toggle("Log y axis", key="curves_log_y")

    has_steps = any(history.steps for source in sources for history in source.histories)
    loss_metrics = [STEP_LOSS if has_steps else "train_loss", "val_loss"]
    options = {"x_title": X_AXES[x_axis], "log_x": log_x, "log_y": log_y, "band_name": BANDS[band], "show_raw": smoothing > 0}
    loss_curves = [c for metric in loss_metrics for c in build_curves(sources, metric, x_axis, smoothing=smoothing, band=band)]
    accuracy_curves = [
        c for metric in ("train_accuracy", "val_accuracy") for c in build_curves(sources, metric, x_axis, smoothing=smoothing, band=band)
    ]
    left, right = st.columns(2)
    left.plotly_chart(
        present_figure(curve_figure(loss_curves, title="Loss", y_title="cross-entropy loss", **options)), key="compare_loss"
    )
    right.plotly_chart(
        present_figure(curve_figure(accuracy_curves, title="Accuracy", y_title="accuracy", percent=True, **options)),
        key="compare_accuracy",
    )
    groups = [source for source in sources if source.is_group]
    if groups:
        st.caption(
            f"A seed group is drawn as the mean of its completed seeds with a shaded band from {BANDS[band]}; "
            "each seed is smoothed before averaging. Pending seeds are not included."
        )

    summary = summary_rows(sources)
    if summary:
        percent_rows = [row for row in summary if "accuracy" in row["metric"]]
        loss_rows = [row for row in summary if "loss" in row["metric"]]
        st.caption("Best, last, min and max per metric, from the unsmoothed epoch values (a group: its mean over seeds).")
        for part, number_format in ((loss_rows, "%.4f"), (percent_rows, "percent")):
            if part:
                st.dataframe(
                    part, hide_index=True,
                    column_order=["name", "metric", "best", "best_epoch", "last", "min", "max", "runs"],
                    column_config={
                        "name": st.column_config.TextColumn("name", width="large"),
                        **{name: st.column_config.NumberColumn(name, format=number_format) for name in ("best", "last", "min", "max")},
                        "best_epoch": st.column_config.NumberColumn("best at epoch"),
                        "runs": st.column_config.NumberColumn("runs", help="runs averaged: the completed seeds of a group"),
                    },
                )


# -- significance -------------------------------------------------------------------------------------


def choose_pair(candidates: list[Subject]) -> tuple[Subject, Subject] | None:
    labels = {s.key: s.label for s in candidates}
    keys = list(labels)
    # A choice that left the selection falls back to the first two subjects, keeping A and B apart.
    if st.session_state.get("pair_a") not in keys:
        st.session_state["pair_a"] = next(key for key in keys if key != st.session_state.get("pair_b"))
    if st.session_state.get("pair_b") not in keys:
        st.session_state["pair_b"] = next(key for key in keys if key != st.session_state["pair_a"])
    a_column, b_column = st.columns(2)
    a_key = a_column.selectbox("A", keys, format_func=labels.get, key="pair_a")
    b_key = b_column.selectbox("B", keys, format_func=labels.get, key="pair_b")
    if a_key == b_key:
        st.warning("A and B are the same; choose two different models, groups or ensembles.")
        return None
    by_key = {s.key: s for s in candidates}
    return by_key[a_key], by_key[b_key]


def render_significance(a: Subject, b: Subject, outputs: dict[str, SubjectOutputs]) -> None:
    pair = compare_pair(a, b, outputs[a.key], outputs[b.key])
    columns = st.columns(5)
    columns[0].metric("A accuracy", f"{pair['accuracy_a']:.2%}")
    columns[1].metric("B accuracy", f"{pair['accuracy_b']:.2%}")
    columns[2].metric(
        "A − B", f"{pair['difference'] * 100:+.2f} pts",
        help=f"95% bootstrap interval {pair['ci_low'] * 100:+.2f} to {pair['ci_high'] * 100:+.2f} points",
    )
    columns[3].metric("McNemar p", f"{pair['p_value']:.3g}")
    seed_p = pair["seed_p_value"]
    columns[4].metric(
        "Welch seed p", "n/a" if seed_p is None else f"{seed_p:.3g}",
        help="Welch's t-test on per-seed test accuracies; needs 2 or more seeds on each side",
    )
    st.markdown(
        f"95% interval of the difference: **{pair['ci_low'] * 100:+.2f} to {pair['ci_high'] * 100:+.2f} points**. "
        f"Test images only A gets right: **{pair['a_only']:,}**; only B gets right: **{pair['b_only']:,}**."
    )
    sentence = escape_markdown(pair["sentence"])
    if pair["significant"]:
        st.success(sentence)
    else:
        st.info(sentence)


# -- where they differ --------------------------------------------------------------------------------


def render_gallery(title: str, indices, tags: dict[str, str], outputs: dict[str, SubjectOutputs], images) -> None:
    visible = indices[:GALLERY_IMAGES]
    st.markdown(f"**{title}: {len(indices):,} test images**" + (f" (first {len(visible)} shown)" if len(indices) > len(visible) else ""))
    if not len(visible):
        return
    labels = next(iter(outputs.values())).labels
    answers = {key: outputs[key].answers for key in tags}
    captions = [f"true {labels[i]} | " + " ".join(f"{tag}{answers[key][i]}" for key, tag in tags.items()) for i in visible]
    st.image([np.asarray(images[i]) for i in visible], caption=captions, width=GALLERY_WIDTH_PX)


def render_differences(pair: tuple[Subject, Subject] | None, chosen: list[Subject], outputs: dict[str, SubjectOutputs]) -> None:
    st.subheader("Where they differ")
    positions = {row["key"]: index for index, row in enumerate(selected)}
    figure = per_class_figure(
        [s.label for s in chosen], [per_class_accuracy(outputs[s.key]) for s in chosen], [positions[s.key] for s in chosen]
    )
    st.plotly_chart(present_figure(figure), key="per_class_chart")
    if pair is None:
        return
    a, b = pair
    a_matrix, b_matrix = confusion_matrix(outputs[a.key]), confusion_matrix(outputs[b.key])
    st.plotly_chart(
        present_figure(confusion_difference_figure(b_matrix - a_matrix, a_matrix, b_matrix, a_label=a.label, b_label=b.label)),
        key="confusion_difference",
    )
    st.caption(
        "Each cell is B's count minus A's (a group: mean over its seeds). On the diagonal, red means B gets more of that "
        "digit right; off the diagonal, red means B makes that mistake more often. Blue is the same for A."
    )

    images, _ = mnist_test_set(data_dir)
    labels = outputs[a.key].labels
    if len(images) != len(labels):
        st.error(
            f"The stored outputs cover {len(labels):,} test images but the MNIST test set in {escape_markdown(data_dir)} has "
            f"{len(images):,}; point MNIST_DATA_DIR at the official MNIST files to see the images."
        )
        return
    tags = subject_tags([s.key for s in chosen], a.key, b.key)
    st.caption(
        "Captions: the true digit, then each subject's prediction after its tag (a group's most common prediction). "
        + "; ".join(f"{tag} = {escape_markdown(next(s.label for s in chosen if s.key == key))}" for key, tag in tags.items())
    )
    if any(s.kind == "group" for s in chosen):
        st.caption(
            "For a seed group, right means every seed is right and wrong means every seed is wrong, so these counts "
            "can be smaller than McNemar's, which compares seeds pair by pair."
        )
    chosen_outputs = {s.key: outputs[s.key] for s in chosen}
    render_gallery("A right, B wrong", images_only_a_gets_right(outputs[a.key], outputs[b.key]), tags, chosen_outputs, images)
    render_gallery("B right, A wrong", images_only_a_gets_right(outputs[b.key], outputs[a.key]), tags, chosen_outputs, images)
    everyone = "both" if len(chosen) == 2 else f"all {len(chosen)} selected"
    render_gallery(f"Wrong for {everyone}", images_all_get_wrong(list(chosen_outputs.values())), tags, chosen_outputs, images)


def render_confusion_matrices(selected: list[dict[str, Any]]) -> None:
    st.subheader("Confusion matrices (official test set)")
    matrices = []
    for row in selected:
        kind, _, value = row["key"].partition(":")
        if kind == "run":
            confusion = store.get_run(int(value))["confusion"]
        elif kind == "shipped":
            confusion = next(m for m in shipped if m.key == row["key"]).info.get("confusion")
        else:
            continue  # groups and ensembles: their averaged matrices are in the difference chart
        if confusion:
            matrices.append((row["name"], confusion))
    if not matrices:
        if all(row["key"].partition(":")[0] in ("group", "ensemble") for row in selected):
            st.caption("Seed groups and ensembles have no single confusion matrix; the difference chart above averages a group's seeds.")
        else:
            st.caption("The selected runs and models have no stored confusion matrix yet.")
        return
    columns = st.columns(min(3, len(matrices)))
    for index, (title, matrix) in enumerate(matrices):
        columns[index % len(columns)].plotly_chart(present_figure(confusion_figure(matrix, title=title)), key=f"confusion_{index}")


# -- editing: ensembles and deletion (hidden in presentation mode) -------------------------------------


def render_ensemble_form() -> None:
    candidates = [s for s in subjects.values() if s.kind in ("shipped", "run", "group")]
    with st.expander("Create an ensemble"):
        if len(candidates) < 2:
            st.caption("An ensemble needs at least 2 completed models; train another model first.")
            return
        labels = {s.key: s.label for s in candidates}
        with st.form("ensemble_form"):
            picked = st.multiselect(
                "Models", list(labels), format_func=labels.get, key="ensemble_members",
                help="Completed runs and shipped models; a seed group adds all its completed seeds",
            )
            name = st.text_input("Name (optional)", key="ensemble_name", max_chars=80)
            submitted = st.form_submit_button("Create ensemble")
        if not submitted:
            return
        members = list(dict.fromkeys(member.key for key in picked for member in subjects[key].members))
        if len(members) < 2:
            st.error(
                f"An ensemble needs at least 2 different models, got {len(members)}; pick two or more models, "
                "or a seed group with 2 or more completed seeds."
            )
            return
        try:
            ensemble_id = store.create_ensemble(members, name=name or None)
        except LabError as error:
            st.error(str(error))
            return
        st.session_state.flash = f"Ensemble {ensemble_id} created from {len(members)} models."
        st.rerun()


def render_ensemble_delete() -> None:
    stored = store.list_ensembles()
    if not stored:
        return
    with st.expander("Delete an ensemble"):
        names = {e["id"]: f"ensemble {e['id']} {e['name']} ({len(e['members'])} models)" for e in stored}
        ensemble_id = st.selectbox("Ensemble", list(names), format_func=names.get, key="delete_ensemble_id")
        if st.button("Delete ensemble", key="delete_ensemble"):
            try:
                store.delete_ensemble(ensemble_id)
            except LabError as error:
                st.error(str(error))
            else:
                st.session_state.flash = f"Ensemble {ensemble_id} deleted; its members are kept."
                st.rerun()


def render_run_delete() -> None:
    with st.expander("Delete a run"):
        deletable = [r for r in runs if r["status"] not in ACTIVE_STATUSES]
        if not deletable:
            st.caption("No finished runs to delete. Shipped models cannot be deleted here.")
            return
        labels = {r["id"]: f"#{r['id']} {r['name']} ({r['status']})" for r in deletable}
        run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="delete_run_id")
        version = st.session_state.table_version
        confirm = st.checkbox("Yes, delete this run, its metrics and its weights", key=f"confirm_delete_{version}")
        if st.button("Delete run", disabled=not confirm, key=f"delete_run_{version}"):
            try:
                removed_ensembles = store.delete_run(run_id)
            except LabError as error:
                st.error(str(error))
            else:
                st.session_state.table_version += 1  # new widget keys: clear the checkbox
                message = f"Run {run_id} deleted."
                if removed_ensembles:
                    message += f" Ensembles deleted with it: {', '.join(removed_ensembles)}."
                st.session_state.flash = message
                st.rerun()


# -- the page ------------------------------------------------------------------------------------------

chosen = [subjects[row["key"]] for row in selected if row["key"] in subjects]
pair = None
if not selected:
    st.info("Select rows in the table to see their curves, whether their difference is real, and where they differ.")
else:
    render_curves(selected)

    st.subheader("Is the difference real?")
    without_outputs = [row["name"] for row in selected if row["key"] not in subjects]
    if without_outputs:
        st.caption(
            "No test outputs yet for " + escape_markdown(", ".join(without_outputs))
            + " (still training, failed, or a group without a completed seed); they are left out below."
        )
    outputs, errors = outputs_or_error(chosen)
    for key, message in errors.items():
        st.error(f"{escape_markdown(subjects[key].label)}: {escape_markdown(message)}")
    chosen = [s for s in chosen if s.key in outputs]
    pair = None
    if len(chosen) < 2:
        st.info("Select two models, groups or ensembles with test results to test whether their difference is real.")
    else:
        pair = choose_pair(chosen)
        if pair is not None:
            render_significance(*pair, outputs)
    if chosen:
        render_differences(pair, chosen, outputs)
    render_confusion_matrices(selected)

render_invariance(store, chosen)

st.subheader("Export")
# The report's difference chart and galleries are about its first two subjects: the page's A and B.
render_export(store, [*pair, *(s for s in chosen if s not in pair)] if pair else chosen, rows)

if not presenting:
    st.subheader("Edit")
    render_ensemble_form()
    render_ensemble_delete()
    render_run_delete()
