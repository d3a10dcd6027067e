"""Escape user text (run names, file names) before it goes into Streamlit markdown.

st.markdown, st.error, st.warning and st.info render GitHub-flavoured Markdown
plus Streamlit's own directives (``:red[...]``, ``:material/icon:``) and LaTeX
between dollar signs. A run named ``![x](http://host/t.png)`` would otherwise
make every viewer's browser fetch that image.
"""

from __future__ import annotations

# CommonMark lets a backslash escape any ASCII punctuation; these are the ones that start markup.
MARKDOWN_SPECIAL = "\\`*_[]<>#+-.!|~$:"


def escape_markdown(text: str) -> str:
    """Return ``text`` with every Markdown, directive and LaTeX character backslash-escaped."""
    return "".join(f"\\{char}" if char in MARKDOWN_SPECIAL else char for char in text)
