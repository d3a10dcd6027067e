"""MNIST Architecture Lab core: data, models, training, run store, worker, CLI.

This package never imports Streamlit, so it works from scripts, tests and the CLI.
"""

__version__ = "0.1.0"
