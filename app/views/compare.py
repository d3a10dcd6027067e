"""Compare page: every run and shipped model in one table; overlay curves and confusion matrices."""

from __future__ import annotations

import streamlit as st

from core.charts import accuracy_figure, confusion_figure, loss_figure, params_figure
from app.services import get_store, list_shipped
from core.compare import TABLE_COLUMNS, curves, table_rows
from core.errors import LabError
from core.store import ACTIVE_STATUSES

store = get_store()
st.title("Compare")

runs = store.list_runs()
shipped = list_shipped()
rows = table_rows(runs, shipped)

if not rows:
    st.info("Nothing to compare yet: train a model on the Train page.")
    st.stop()

st.session_state.setdefault("table_version", 0)
if "flash" in st.session_state:
    st.success(st.session_state.pop("flash"))
st.caption("Select rows to overlay their curves and confusion matrices.")
event = st.dataframe(
    rows,
    # Selections are row positions, so the key changes after a delete to drop a stale selection.
    key=f"runs_table_{st.session_state.table_version}",
    on_select="rerun",
    selection_mode="multi-row",
    hide_index=True,
    column_order=list(TABLE_COLUMNS),
    column_config={
        "params": st.column_config.NumberColumn("parameters", format="localized"),
        "flops": st.column_config.NumberColumn("FLOPs (multiply-adds)", format="localized", help="per 28x28 image"),
        "receptive_field": st.column_config.TextColumn("receptive field (h x w)", help="input pixels that the last stage sees"),
        "best_val_accuracy": st.column_config.NumberColumn("best val accuracy", format="percent"),
        "test_accuracy": st.column_config.NumberColumn("test accuracy", format="percent"),
        "training_time_s": st.column_config.NumberColumn("training time (s)", format="%.1f"),
    },
)
selected = [rows[i] for i in event.selection.rows if i < len(rows)]
selected_keys = {r["key"] for r in selected}

st.plotly_chart(params_figure(rows, selected_keys), key="params_chart")

if selected:
    names, steps, epochs = curves(store, selected, shipped)

    log_y = st.toggle("Log-scale loss", key="compare_log")
    left, right = st.columns(2)
    left.plotly_chart(loss_figure(names, steps, epochs, log_y=log_y), key="compare_loss")
    right.plotly_chart(accuracy_figure(names, epochs), key="compare_accuracy")

    st.subheader("Confusion matrices (official test set)")
    matrices = []
    for row in selected:
        if row["key"].startswith("run:"):
            confusion = store.get_run(int(row["key"].split(":")[1]))["confusion"]
        else:
            confusion = next(m for m in shipped if m.key == row["key"]).info.get("confusion")
        if confusion:
            matrices.append((row["name"], confusion))
    if not matrices:
        st.caption("The selected runs have no test results yet.")
    columns = st.columns(min(3, max(1, len(matrices))))
    for index, (title, matrix) in enumerate(matrices):
        columns[index % len(columns)].plotly_chart(confusion_figure(matrix, title=title), key=f"confusion_{index}")

with st.expander("Delete a run"):
    deletable = [r for r in runs if r["status"] not in ACTIVE_STATUSES]
    if not deletable:
        st.caption("No finished runs to delete. Shipped models cannot be deleted here.")
    else:
        run_id = st.selectbox("Run", [r["id"] for r in deletable], format_func=lambda i: next(f"#{r['id']} {r['name']} ({r['status']})" for r in deletable if r["id"] == i))
        version = st.session_state.table_version
        confirm = st.checkbox("Yes, delete this run, its metrics and its weights", key=f"confirm_delete_{version}")
        if st.button("Delete run", disabled=not confirm, key=f"delete_run_{version}"):
            try:
                store.delete_run(run_id)
            except LabError as error:
                st.error(str(error))
            else:
                st.session_state.table_version += 1  # new widget keys: clear the selection and the checkbox
                st.session_state.flash = f"Run {run_id} deleted."
                st.rerun()
