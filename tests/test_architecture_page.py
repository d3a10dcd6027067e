"""Architecture page under AppTest: layer tables for every architecture, feature maps of a shipped model."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.models import ARCHITECTURES, build_model, count_parameters, default_model_config
from tests.helpers import SHIPPED_CNN
from tests.test_app import VIEWS

needs_shipped_cnn = pytest.mark.skipif(not SHIPPED_CNN.is_file(), reason="checkpoints/cnn.safetensors is not in this checkout")


def open_architecture(**state) -> AppTest:
    """Run the page once with widget values preset through session state."""
    at = AppTest.from_file(str(VIEWS / "architecture.py"), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def layer_table(at: AppTest):
    return next(d.value for d in at.dataframe if "FLOPs (multiply-adds)" in d.value.columns)


def chart_keys(at: AppTest) -> list[str]:
    return [chart.proto.id for chart in at.get("plotly_chart")]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_untrained_layer_total_matches_model(app_store, arch):
    at = open_architecture(inspect_source="config", inspect_arch=arch)

    assert not at.exception
    table = layer_table(at)
    total = table[table["name"] == "total"]
    expected = count_parameters(build_model(default_model_config(arch)))
    assert int(total["parameters"].iloc[0]) == expected
    assert int(table[table["name"] != "total"]["parameters"].sum()) == expected  # no layer is missing from the rows
    assert f"{expected:,}" == next(m.value for m in at.metric if m.label == "Parameters")
    assert at.get("graphviz_chart"), "the stage diagram is missing"
    assert not chart_keys(at), "an untrained config has no feature maps to show"


def test_untrained_budget_fits(app_store):
    at = open_architecture(inspect_source="config", inspect_arch="mobilenetv2", inspect_budget="8k")

    assert not at.exception
    params = int(next(m.value for m in at.metric if m.label == "Parameters").replace(",", ""))
    assert abs(params / 8000 - 1) <= 0.03


def test_stage_diagram_lists_stages(app_store):
    at = open_architecture(inspect_source="config", inspect_arch="cnn")

    dot = at.get("graphviz_chart")[0].proto.spec
    assert 'input [label="input\\n1x28x28"' in dot
    assert "stage 3\\n80x3x3\\nRF 22x22" in dot
    assert "-> classifier" in dot
    stages = next(d.value for d in at.dataframe if "receptive field h" in d.value.columns)
    assert list(stages["receptive field h"]) == [4, 10, 22]
    assert list(stages["receptive field w"]) == [4, 10, 22]


@needs_shipped_cnn
def test_shipped_cnn_feature_maps(app_store):
    at = open_architecture(inspect_source="shipped", inspect_shipped="shipped:cnn")

    assert not at.exception
    keys = chart_keys(at)
    assert any("filters_chart" in key for key in keys)
    assert sum("maps_" in key for key in keys) == 3  # one grid per CNN stage
    assert any("predicts" in m.value for m in at.markdown)
    assert at.get("image")[0].captions == ["test digit 0, labelled 7"]  # the first MNIST test image is a 7


@needs_shipped_cnn
def test_digit_index_out_of_range(app_store):
    at = open_architecture(inspect_source="shipped", inspect_shipped="shipped:cnn")
    at.number_input(key="digit_index").set_value(10_000).run()

    assert not at.exception
    assert any("test digit index 10000 is out of range" in e.value for e in at.error)
    assert any("0 to 9,999" in e.value for e in at.error)
    assert not any("maps_" in key for key in chart_keys(at))

    at.number_input(key="digit_index").set_value(-1).run()
    assert any("test digit index -1 is out of range" in e.value for e in at.error)


@needs_shipped_cnn
def test_drawing_from_draw_page(app_store):
    import numpy as np

    from core.preprocess import to_mnist

    canvas = np.zeros((280, 280, 4), dtype=np.uint8)
    canvas[60:220, 130:150, :] = 255  # a vertical bar, like a 1
    at = open_architecture(inspect_source="shipped", inspect_shipped="shipped:cnn", draw_digit=to_mnist(canvas),
                           inspect_input="drawing")

    assert not at.exception
    assert at.radio(key="inspect_input").value == "drawing"
    assert at.get("image")[0].captions == ["your drawing"]
    assert sum("maps_" in key for key in chart_keys(at)) == 3


def test_no_runs_yet(app_store):
    at = open_architecture(inspect_source="run")

    assert not at.exception
    assert any("No completed runs yet" in i.value for i in at.info)


def test_untrained_uses_train_page_config(app_store):
    from core.models import normalize_model_config

    draft = normalize_model_config(
        {"arch": "cnn", "stages": [{"channels": 16, "kernel_size": [1, 7], "pool": [1, 2]}, {"channels": 32}]}
    )
    at = open_architecture(inspect_source="config", inspect_arch="cnn", train_draft_config=draft)

    assert not at.exception
    table = layer_table(at)
    assert table[table["name"] == "stages.0.0.0"]["kernel"].iloc[0] == "1x7"
    assert next(m.value for m in at.metric if m.label == "Receptive field (h x w)") == "4 x 14"  # rows 1, 3, 4; columns 7, 8, 12, 14

    at.toggle(key="inspect_use_draft").set_value(False).run()
    assert next(m.value for m in at.metric if m.label == "Receptive field (h x w)") == "22 x 22"
