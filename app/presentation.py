"""Presentation mode: a projector view with larger fonts and no editing controls.

It is on when the sidebar toggle is on or the URL has ``?present=1``. The two are
kept in sync. Turning the toggle on writes the query parameter, so the URL can be
shared, and turning it off removes it. Pages read ``is_presenting()`` (or
``st.session_state.get(STATE_KEY)``) to hide what only the author needs.
"""

from __future__ import annotations

import streamlit as st

from app.escaping import escape_markdown

STATE_KEY = "presentation_mode"  # the toggle's widget key, so session state contains the mode
QUERY_PARAM = "present"
SEEN_KEY = "presentation_query_seen"  # the last ?present= value read or written here
ON_VALUES = ("1", "true", "yes", "on")
OFF_VALUES = ("0", "false", "no", "off")
FIGURE_FONT_SIZE = 18  # plotly draws its text itself, so CSS does not reach it
ROOT_FONT_PX = 21
SIZE_SCALE = ROOT_FONT_PX / 16  # Streamlit's default root font is 16 px; rem-sized elements grow by this factor

# Streamlit sizes its text in rem, so a larger root font scales headings, widgets,
# captions and the data grid's rows together.
CSS = f"""
<style>
html {{ font-size: {ROOT_FONT_PX}px; }}
[data-testid="stMainBlockContainer"] {{ max-width: 100%; padding-left: 2.5rem; padding-right: 2.5rem; }}
h1 {{ font-size: 2.6rem !important; }}
h2, h3 {{ font-size: 1.8rem !important; }}
[data-testid="stMetricValue"] {{ font-size: 2.4rem; }}
</style>
"""


def parse_flag(value: str | None) -> bool | None:
    """Return True or False for a ``present`` value, or None when it is missing or not a known word."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in ON_VALUES:
        return True
    if text in OFF_VALUES:
        return False
    return None


def sync_from_query() -> str | None:
    """Turn the mode on or off from ``?present=`` before the toggle is drawn; return a warning for a bad value.

    The URL is read as input only when its value differs from the last one seen or
    written here. So the toggle wins over a URL that still shows the old state
    while a rerun starts, and a page switch that drops the parameter changes nothing.
    """
    raw = st.query_params.get(QUERY_PARAM)
    if raw == st.session_state.get(SEEN_KEY):
        return None
    st.session_state[SEEN_KEY] = raw

    flag = parse_flag(raw)
    if flag is not None:
        st.session_state[STATE_KEY] = flag
        return None
    if raw is not None:
        return f"present={escape_markdown(raw)} is not a valid switch; use ?present=1 to turn presentation mode on or ?present=0 to turn it off"
    return None


def is_presenting() -> bool:
    """Return whether presentation mode is on for this session, reading ``?present=`` when the state has no value yet."""
    if STATE_KEY not in st.session_state:
        flag = parse_flag(st.query_params.get(QUERY_PARAM))
        return bool(flag)
    return bool(st.session_state[STATE_KEY])


def render_toggle() -> bool:
    """Draw the sidebar toggle, keep ``?present=1`` in the URL exactly while it is on, and return the mode."""
    presenting = st.toggle(
        "Presentation mode", key=STATE_KEY,
        help="Larger fonts for a projector; only Compare and Draw, without editing controls. The URL gets ?present=1.",
    )
    # Switching pages drops query parameters, and turning the toggle off must remove this one.
    if presenting and st.query_params.get(QUERY_PARAM) != "1":
        st.query_params[QUERY_PARAM] = "1"
    elif not presenting and QUERY_PARAM in st.query_params:
        del st.query_params[QUERY_PARAM]
    st.session_state[SEEN_KEY] = st.query_params.get(QUERY_PARAM)
    return presenting


def apply_style() -> None:
    """Add the projector CSS to the page while presentation mode is on."""
    if is_presenting():
        st.html(CSS)


def present_figure(fig):
    """Enlarge a plotly figure's text while presentation mode is on; return the figure."""
    if is_presenting():
        fig.update_layout(font={"size": FIGURE_FONT_SIZE}, height=max(fig.layout.height or 0, 460))
    return fig
