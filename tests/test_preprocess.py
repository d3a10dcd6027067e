"""Canvas and upload preprocessing: blank input, re-drawn MNIST digits, ink polarity, and image file errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.data import MEAN, STD, normalize
from core.errors import ImageError
from core.preprocess import MAX_IMAGE_PIXELS, ink_map, read_image, to_mnist
from tests.helpers import SHIPPED_CNN

CANVAS = 280
DIGITS = 200  # MNIST test digits per drawing style
MIN_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def shipped_cnn():
    from core.checkpoints import load_checkpoint

    if not SHIPPED_CNN.is_file():
        pytest.skip(f"{SHIPPED_CNN} is missing; train it with `make pretrained` to run the canvas accuracy tests")
    return load_checkpoint(SHIPPED_CNN).model


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test_images[:DIGITS]


def crop_to_ink(digit: torch.Tensor) -> torch.Tensor:
    """Return the bounding box of a uint8 MNIST digit's nonzero pixels as float ink in [0, 1]."""
    rows = torch.nonzero(digit.any(dim=1)).flatten()
    cols = torch.nonzero(digit.any(dim=0)).flatten()
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float() / 255.0


def draw(digit: torch.Tensor, *, box: int, top_left: tuple[int, int] | None = None, dilate: int = 0) -> np.ndarray:
    """Redraw a digit on a 280x280 ink map: longer side ``box`` pixels, centred unless ``top_left`` is given.

    ``dilate`` widens every stroke by that many pixels on each side (a max filter).
    """
    ink = crop_to_ink(digit)
    scale = box / max(ink.shape)
    size = (max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale)))
    patch = F.interpolate(ink[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    if dilate:
        patch = F.max_pool2d(F.pad(patch[None, None], (dilate,) * 4), 2 * dilate + 1, stride=1)[0, 0]

    canvas = torch.zeros(CANVAS, CANVAS)
    top, left = top_left or ((CANVAS - patch.shape[0]) // 2, (CANVAS - patch.shape[1]) // 2)
    canvas[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return canvas.numpy()


def as_rgba(ink: np.ndarray, style: str) -> np.ndarray:
    """Encode an ink map as a uint8 RGBA canvas in one of three styles."""
    value = np.round(ink * 255).astype(np.uint8)
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    if style == "white on black":  # the app's canvas: white strokes on an opaque black background
        rgba[..., :3] = value[..., None]
        rgba[..., 3] = 255
    elif style == "dark on white":
        rgba[..., :3] = 255 - value[..., None]
        rgba[..., 3] = 255
    elif style == "alpha only":
        rgba[..., 3] = value
    else:
        raise ValueError(style)
    return rgba


DRAWINGS = {
    "small in corner": lambda d: as_rgba(draw(d, box=40, top_left=(6, 6)), "white on black"),
    "large": lambda d: as_rgba(draw(d, box=264), "white on black"),
    "thick strokes": lambda d: as_rgba(draw(d, box=180, dilate=6), "white on black"),
    "dark on white": lambda d: as_rgba(draw(d, box=180), "dark on white"),
    "alpha only": lambda d: as_rgba(draw(d, box=180), "alpha only"),
}


def predict(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).argmax(dim=1)


@pytest.mark.parametrize("style", list(DRAWINGS))
def test_redrawn_digits_keep_class(shipped_cnn, digits, style):
    expected = predict(shipped_cnn, normalize(digits))
    prepared = [to_mnist(DRAWINGS[style](digit)) for digit in digits]

    assert all(p is not None for p in prepared)
    predicted = predict(shipped_cnn, torch.cat([p.tensor for p in prepared]))
    agreement = (predicted == expected).float().mean().item()
    assert agreement >= MIN_AGREEMENT, f"{style}: {agreement:.1%} of {DIGITS} digits keep their class"


def test_mnist_digit_is_fixed_point(digits):
    # MNIST digits already fill a 20x20 box centred by mass, so preprocessing should barely change them.
    for digit in digits[:50]:
        prepared = to_mnist(digit.numpy())
        original = digit.numpy().astype(np.float32) / 255.0

        assert np.abs(prepared.image - original).mean() < 0.02


def test_output_is_mnist_shaped(digits):
    prepared = to_mnist(as_rgba(draw(digits[0], box=200), "white on black"))
    image = prepared.image
    rows = np.flatnonzero(image.max(axis=1) > 0.1)
    cols = np.flatnonzero(image.max(axis=0) > 0.1)
    longer_side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    ys, xs = np.indices(image.shape)
    center_y = float((ys * image).sum() / image.sum())
    center_x = float((xs * image).sum() / image.sum())

    assert image.shape == (28, 28)
    assert image.dtype == np.float32
    assert image.max() <= 1.0
    assert image.min() >= 0.0
    assert longer_side in (19, 20, 21)
    # MNIST's own centres of mass lie within half a pixel of (14, 14).
    assert abs(center_y - 14.0) <= 0.5, center_y
    assert abs(center_x - 14.0) <= 0.5, center_x
    assert prepared.tensor.shape == (1, 1, 28, 28)
    assert prepared.tensor.dtype == torch.float32
    assert torch.allclose(prepared.tensor[0, 0], (torch.from_numpy(image) - MEAN) / STD)


@pytest.mark.parametrize(
    "canvas",
    [
        np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8),
        np.full((CANVAS, CANVAS, 4), 255, dtype=np.uint8),
        np.zeros((CANVAS, CANVAS), dtype=np.uint8),
        np.full((CANVAS, CANVAS, 3), 128, dtype=np.uint8),
    ],
    ids=["transparent", "opaque white", "black gray", "mid gray"],
)
def test_blank_canvas_returns_none(canvas):
    assert to_mnist(canvas) is None


def test_faint_speck_returns_none():
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    canvas[100, 100] = 20  # below a tenth of full ink

    assert to_mnist(canvas) is None


def test_tiny_dot_is_digit():
    canvas = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    canvas[140:143, 140:143, 3] = 255

    prepared = to_mnist(canvas)

    assert prepared is not None
    assert prepared.image.max() == pytest.approx(1.0)


def test_one_pixel_line_is_digit():
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    canvas[20:260, 140] = 255

    prepared = to_mnist(canvas)

    assert prepared is not None
    assert prepared.image.shape == (28, 28)


def test_ink_map_white_on_black():
    gray = np.zeros((10, 10), dtype=np.uint8)
    gray[4:6, 4:6] = 255

    ink = ink_map(gray)

    assert ink[5, 5] == pytest.approx(1.0)
    assert ink[0, 0] == pytest.approx(0.0)


def test_ink_map_dark_on_white():
    rgb = np.full((10, 10, 3), 255, dtype=np.uint8)
    rgb[4:6, 4:6] = 0

    ink = ink_map(rgb)

    assert ink[5, 5] == pytest.approx(1.0)
    assert ink[0, 0] == pytest.approx(0.0)


def test_ink_map_prefers_alpha():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 200  # uniform colour, so only alpha carries the strokes
    rgba[4:6, 4:6, 3] = 255

    ink = ink_map(rgba)

    assert ink[5, 5] == pytest.approx(1.0)
    assert ink[0, 0] == pytest.approx(0.0)


def test_ink_map_float_input():
    gray = np.zeros((10, 10), dtype=np.float64)
    gray[5, 5] = 1000.0  # e.g. a 16-bit scan: scaled by its maximum

    assert ink_map(gray)[5, 5] == pytest.approx(1.0)


def test_ink_map_rejects_4d():
    with pytest.raises(ImageError, match="shape"):
        ink_map(np.zeros((2, 10, 10, 3), dtype=np.uint8))


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid signature and IHDR chunk for ``width`` x ``height`` grayscale pixels, and no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_read_png_file(tmp_path):
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[10:20, 10:20] = 255
    path = tmp_path / "digit.png"
    path.write_bytes(png_bytes(rgba))

    array = read_image(path)

    assert array.shape == (30, 40, 4)
    assert np.array_equal(array, rgba)
    assert np.array_equal(read_image(path.read_bytes()), rgba)


def test_read_jpeg_grayscale():
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 200, dtype=np.uint8)).save(buffer, format="JPEG")

    array = read_image(buffer.getvalue())

    assert array.shape == (16, 16)


def test_read_16bit_png():
    deep = np.zeros((8, 8), dtype=np.uint16)
    deep[2:4, 2:4] = 60000

    array = read_image(png_bytes(deep))

    assert array.dtype == np.float32
    assert array.max() == pytest.approx(1.0)


def test_read_palette_png():
    image = Image.fromarray(np.eye(8, dtype=np.uint8) * 255).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")

    array = read_image(buffer.getvalue())

    assert array.shape == (8, 8, 4)


def test_not_an_image_rejected():
    with pytest.raises(ImageError, match="not an image"):
        read_image(b"%PDF-1.7 this is not a picture")


def test_empty_bytes_rejected():
    with pytest.raises(ImageError, match="is empty"):
        read_image(b"")


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")

    with pytest.raises(ImageError, match="is empty"):
        read_image(path)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        read_image(tmp_path / "missing.png")


def test_truncated_png_rejected():
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    data = png_bytes(noise)

    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_image(data[: len(data) // 2])


@pytest.mark.parametrize("side", [20000, 5000])
def test_huge_image_rejected_from_header(monkeypatch, side):
    from PIL import ImageFile

    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))

    with pytest.raises(ImageError) as caught:
        read_image(png_header(side, side))

    message = str(caught.value)
    assert f"{MAX_IMAGE_PIXELS:,}" in message
    assert "scale it down" in message
    assert decoded == []


def test_largest_allowed_header_accepted_until_decode():
    # 4096x4096 passes the size check; this file has no pixel data, so decoding fails next.
    with pytest.raises(ImageError, match="could not be decoded|truncated"):
        read_image(png_header(4096, 4096))
