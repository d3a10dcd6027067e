"""Saliency maps: exact on a model that reads one pixel, sane on shipped models of three architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.charts import saliency_figure
from core.errors import ConfigError
from core.inference import SHIPPED_DIR, load_cached
from core.saliency import METHODS, ensemble_saliency, gradient_x_input, occlusion, saliency_map
from tests.test_invariance import PixelModel

ROW, COLUMN = 9, 20


@pytest.fixture(scope="module")
def seven(mnist) -> np.ndarray:
    """The first test digit (a 7) as float (28, 28) in [0, 1]."""
    return mnist.test_images[0].numpy().astype(np.float32) / 255


def dot_image() -> np.ndarray:
    image = np.zeros((28, 28), dtype=np.float32)
    image[ROW, COLUMN] = 1.0
    image[20, 5] = 1.0  # ink the model never reads
    return image


@pytest.mark.parametrize("method, options", [("gradient_x_input", {}), ("occlusion", {"patch_size": 1, "stride": 1})])
def test_one_pixel_model_map_exact(method, options):
    saliency = saliency_map(PixelModel(ROW, COLUMN, strength=2.0), dot_image(), 1, method, **options)

    assert saliency.shape == (28, 28)
    assert saliency[ROW, COLUMN] > 0
    others = saliency.copy()
    others[ROW, COLUMN] = 0
    assert np.count_nonzero(others) == 0


def test_occlusion_default_patch_stays_local():
    saliency = occlusion(PixelModel(ROW, COLUMN, strength=2.0), dot_image(), 1)

    rows, columns = np.nonzero(saliency)
    assert saliency[ROW, COLUMN] > 0
    assert np.abs(rows - ROW).max() <= 3  # a 4 px patch reaches at most 3 px from the pixel it covers
    assert np.abs(columns - COLUMN).max() <= 3


def test_gradient_zero_without_ink(seven):
    model = load_cached(SHIPPED_DIR / "cnn.safetensors").model

    saliency = gradient_x_input(model, seven, 7)

    assert np.all(saliency[seven == 0] == 0)
    assert np.abs(saliency).max() > 0


@pytest.mark.parametrize("name", ["cnn", "capsnet", "vit"])
@pytest.mark.parametrize("method", list(METHODS))
def test_shipped_maps_finite(seven, name, method):
    model = load_cached(SHIPPED_DIR / f"{name}.safetensors").model

    saliency = saliency_map(model, seven, 7, method)

    assert saliency.shape == (28, 28)
    assert saliency.dtype == np.float32
    assert np.isfinite(saliency).all()
    assert np.abs(saliency).max() > 0


def test_gradient_inside_inference_mode(seven):
    # Streamlit pages and callers may hold inference mode; the gradient must still be computed.
    model = load_cached(SHIPPED_DIR / "cnn.safetensors").model
    outside = gradient_x_input(model, seven, 7)

    with torch.inference_mode():
        inside = gradient_x_input(model, seven, 7)

    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-7)


def test_gradient_leaves_parameters_alone(seven):
    model = load_cached(SHIPPED_DIR / "cnn.safetensors").model

    gradient_x_input(model, seven, 7)

    assert all(parameter.grad is None for parameter in model.parameters())


def test_ensemble_map_scaled_mean():
    strong, weak = PixelModel(ROW, COLUMN, strength=4.0), PixelModel(20, 5, strength=1.0)

    saliency = ensemble_saliency([strong, weak], dot_image(), 1, "gradient_x_input")

    assert saliency[ROW, COLUMN] == pytest.approx(0.5)  # each map is scaled to a maximum of 1 before the mean
    assert saliency[20, 5] == pytest.approx(0.5)
    assert np.count_nonzero(saliency) == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: saliency_map(PixelModel(0, 0), dot_image(), 1, "lime"), "unknown saliency method 'lime'"),
        (lambda: saliency_map(PixelModel(0, 0), np.zeros((20, 20)), 1, "occlusion"), "saliency needs a 28x28 image, got shape (20, 20)"),
        (lambda: occlusion(PixelModel(0, 0), dot_image(), 1, patch_size=4, stride=5), "occlusion patch 4 px with stride 5 px is invalid"),
    ],
)
def test_invalid_request_rejected(call, message):
    with pytest.raises(ConfigError) as error:
        call()

    assert message in str(error.value)


def test_overlay_figure_symmetric_scale():
    saliency = np.zeros((28, 28), dtype=np.float32)
    saliency[3, 4], saliency[5, 6] = 0.2, -0.5

    figure = saliency_figure(dot_image(), saliency, title="why <b>1</b>")

    base, overlay = figure.data
    assert (base.zmin, base.zmax) == (0, 1)
    assert (overlay.zmin, overlay.zmax) == (-0.5, 0.5)  # zero sits at the transparent middle of the scale
    assert figure.layout.title.text == "why &lt;b&gt;1&lt;/b&gt;"
