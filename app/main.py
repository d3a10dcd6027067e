"""Streamlit entry point: ``streamlit run app/main.py``."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `streamlit run` puts app/ on the path, not the repository root

import streamlit as st

from app.exposure import exposure_warnings
from app.presentation import QUERY_PARAM, apply_style, is_presenting, render_toggle, sync_from_query
from app.services import ensure_worker, get_store
from core.errors import LabError

st.set_page_config(page_title="MNIST Architecture Lab", page_icon="✏️", layout="wide")

PAGES = ROOT / "app" / "views"  # not "pages": Streamlit would also list that folder as a second menu
query_warning = sync_from_query()  # before the navigation: ?present=1 decides which pages it lists
presenting = is_presenting()
# Presentation mode hides the editing pages from the menu. They stay registered, so every
# page keeps its URL (Train stays the default "/"), and opening one switches to Compare.
editing = "hidden" if presenting else "visible"
compare = st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare_arrows:")
navigation = st.navigation(
    [
        st.Page(PAGES / "train.py", title="Train", icon=":material/model_training:", default=True, visibility=editing),
        st.Page(PAGES / "architecture.py", title="Architecture", icon=":material/account_tree:", visibility=editing),
        compare,
        st.Page(PAGES / "draw.py", title="Draw", icon=":material/draw:"),
    ]
)
if presenting and navigation.title not in ("Compare", "Draw"):
    st.switch_page(compare, query_params={QUERY_PARAM: "1"})

try:
    store_root, worker_status = get_store().root, ensure_worker()
except LabError as error:  # for example a read-only or full disk: show the message, not a traceback
    st.error(f"The run store cannot be used: {error}")
    st.stop()
with st.sidebar:
    render_toggle()
    if query_warning:
        st.warning(query_warning)
    if not presenting:  # a projector audience needs neither the folder nor the worker's process id
        st.caption(f"Run store: `{store_root}`  \n{worker_status}")
    for warning in exposure_warnings(
        st.get_option("server.address"), st.get_option("server.port"), st.get_option("browser.gatherUsageStats")
    ):
        st.warning(warning)

apply_style()

try:
    navigation.run()
except LabError as error:  # a store or file problem during a page run: show its message, keep the session
    st.error(str(error))
