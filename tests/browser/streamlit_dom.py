"""JavaScript snippets and selectors that read the app's state from the browser's DOM.

Plotly keeps each chart's traces on its graph div (`plot.data`), and Streamlit
gives every keyed element a `st-key-KEY` class. During a fragment rerun
Streamlit briefly shows the old and the new chart side by side, so the snippets
take the largest count or accept any matching chart.

NOTE: the selectors and attributes were checked against Streamlit 1.67 and plotly.js
as bundled there. Another Streamlit version may render other markup.
"""

from __future__ import annotations

SCRIPT_STATE_SELECTOR = '[data-testid="stApp"]'  # its data-test-script-state is "running" or "notRunning"

# Number of y values over all traces of the Train page's live loss chart.
LIVE_LOSS_POINTS_JS = """() => Math.max(0, ...Array.from(
    document.querySelectorAll('.st-key-live_loss .js-plotly-plot'),
    plot => (plot.data || []).reduce((total, trace) => total + (trace.y || []).length, 0)))"""

# True when the live loss chart shows a logarithmic y axis.
LIVE_LOSS_LOG_SCALE_JS = """() => Array.from(document.querySelectorAll('.st-key-live_loss .js-plotly-plot'))
    .some(plot => plot.layout && plot.layout.yaxis && plot.layout.yaxis.type === 'log')"""
