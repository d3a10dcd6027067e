"""Draw page under AppTest: ensembles, shift and rotation sliders, prediction sweeps, saliency and presentation mode.

AppTest cannot draw on the canvas component, so the digit comes in through
the file uploader, as a PNG made from an MNIST test digit.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.store import RunStore
from tests.helpers import REPO_ROOT

DRAW_PAGE = REPO_ROOT / "app" / "views" / "draw.py"


@pytest.fixture(scope="module")
def seven_png(mnist) -> bytes:
    """The first test digit (a 7) as a dark-on-white 112 px PNG, like a scan."""
    digit = mnist.test_images[0].numpy()
    buffer = io.BytesIO()
    Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def store_with_ensemble(tmp_path, monkeypatch, data_dir) -> tuple[RunStore, int]:
    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    store = RunStore(tmp_path / "store")
    return store, store.create_ensemble(["shipped:dense", "shipped:cnn"], name="dense and cnn")


def open_with_digit(seven_png: bytes, models: list[str], **state) -> AppTest:
    at = AppTest.from_file(str(DRAW_PAGE), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.multiselect(key="draw_models").set_value(models).run()
    at.file_uploader(key="upload").set_value(("seven.png", seven_png, "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at: AppTest) -> dict[str, dict]:
    """Return each plotly chart's figure spec by the key its page gave it."""
    specs = {}
    for chart in at.get("plotly_chart"):
        key = chart.proto.id.rsplit("-", 1)[-1] if chart.proto.id else ""
        specs[key] = json.loads(chart.proto.spec)
    return specs


def spec_array(value) -> np.ndarray:
    """Decode an array from a figure spec: a plain list, or plotly's base64 typed array {dtype, bdata, shape}."""
    if isinstance(value, dict):
        shape = tuple(int(side) for side in value["shape"].split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value, dtype=float)


def answers(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if " says **" in m.value]


def test_ensemble_listed_and_predicts(store_with_ensemble, seven_png):
    _, ensemble_id = store_with_ensemble

    at = open_with_digit(seven_png, [f"ensemble:{ensemble_id}", "shipped:dense"])

    options = at.multiselect(key="draw_models").options
    assert any("ensemble 1 dense and cnn (2 models)" in option for option in options)
    lines = answers(at)
    assert len(lines) == 2
    assert lines[0].startswith("**ensemble 1 dense and cnn (2 models)** says **7**")
    assert any("test accuracy 99.13%" in caption.value.replace("\\", "") for caption in at.caption)  # from stored outputs
    assert not at.error


def test_shift_slider_moves_input(store_with_ensemble, seven_png):
    _, ensemble_id = store_with_ensemble
    at = open_with_digit(seven_png, [f"ensemble:{ensemble_id}", "shipped:dense"])
    before = at.get("image")[0].proto.imgs[0].url

    at.slider(key="draw_shift_x").set_value(5).run()
    at.slider(key="draw_shift_y").set_value(-2).run()
    at.slider(key="draw_rotation").set_value(15).run()

    assert not at.exception, [e.value for e in at.exception]
    image = at.get("image")[0].proto
    assert image.imgs[0].url != before
    assert image.imgs[0].caption.endswith("then moved 5 px right and 2 px up and turned 15° counter-clockwise")
    assert [s.value for s in at.subheader] == ["Answers", "How the answers change as the digit moves"]


def test_sweep_charts_mark_current(store_with_ensemble, seven_png):
    _, ensemble_id = store_with_ensemble
    at = open_with_digit(seven_png, [f"ensemble:{ensemble_id}", "shipped:dense"])

    at.slider(key="draw_shift_x").set_value(3).run()

    specs = chart_specs(at)
    for axis in ("x_shift", "y_shift", "rotation"):
        assert f"sweep_{axis}" in specs, sorted(specs)
    x_sweep = specs["sweep_x_shift"]
    heatmap = x_sweep["data"][0]
    assert heatmap["x"] == list(range(-6, 7))
    assert len(heatmap["y"]) == 2  # one row per chosen model
    assert heatmap["text"][0][6 + 3] == "7"  # the ensemble still reads the 7 after a 3 px shift
    box = x_sweep["layout"]["shapes"][0]
    assert (box["x0"], box["x1"]) == (2.5, 3.5)


@pytest.mark.parametrize("method", ["gradient_x_input", "occlusion"])
def test_saliency_overlays_appear(store_with_ensemble, seven_png, method):
    _, ensemble_id = store_with_ensemble
    at = open_with_digit(seven_png, [f"ensemble:{ensemble_id}", "shipped:dense"])
    assert not [key for key in chart_specs(at) if key.startswith("saliency_")]

    at.toggle(key="draw_saliency").set_value(True).run()
    at.selectbox(key="draw_saliency_method").set_value(method).run()

    assert not at.exception, [e.value for e in at.exception]
    specs = chart_specs(at)
    for key in (f"saliency_ensemble:{ensemble_id}", "saliency_shipped:dense"):
        assert key in specs, sorted(specs)
        overlay = spec_array(specs[key]["data"][1]["z"])
        assert overlay.shape == (28, 28)
        assert np.isfinite(overlay).all()
        assert np.abs(overlay).max() > 0
    titles = {specs[key]["layout"]["title"]["text"] for key in specs if key.startswith("saliency_")}
    assert titles == {f"why 7: {method.replace('_', ' ')}"}


def test_presentation_mode_hides_stroke_width(store_with_ensemble, seven_png):
    normal = open_with_digit(seven_png, ["shipped:dense"])
    presenting = open_with_digit(seven_png, ["shipped:dense"], presentation_mode=True)

    assert "stroke_width" in [s.key for s in normal.slider]
    assert "stroke_width" not in [s.key for s in presenting.slider]
    assert answers(presenting)[0].startswith("**dense (shipped)** says **7** (")
    assert not presenting.caption or all("test accuracy" not in c.value for c in presenting.caption)


def test_ensemble_with_deleted_member_left_out(store_with_ensemble, seven_png, tmp_path):
    store, ensemble_id = store_with_ensemble
    from core.checkpoints import save_checkpoint
    from core.models import build_model, default_model_config

    config = default_model_config("dense")
    run_id = store.create_run(config, {"epochs": 1}, name="gone soon", status="running")
    path = save_checkpoint(store.run_dir(run_id) / "model.safetensors", build_model(config), config, {})
    store.finish(run_id, "completed", checkpoint=str(path), test_accuracy=0.1, params=67_978)
    second = store.create_ensemble([f"run:{run_id}", "shipped:dense"], name="with run")
    path.unlink()

    at = AppTest.from_file(str(DRAW_PAGE), default_timeout=60).run()

    options = at.multiselect(key="draw_models").options
    assert any(f"ensemble {ensemble_id} " in option for option in options)
    assert not any(f"ensemble {second} " in option for option in options)
    assert not at.exception
