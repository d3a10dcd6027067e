"""Turn a drawn or uploaded digit into a 28x28 MNIST-style input.

MNIST itself was made this way (LeCun, Cortes and Burges, the MNIST database
page). Each digit was scaled with anti-aliasing to fit a 20x20 box, keeping its
aspect ratio. It was then placed in a 28x28 frame with its centre of mass at
the centre. The same function serves the canvas, uploads and the CLI.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.data import MEAN, STD
from core.errors import ImageError

BOX_SIZE = 20
FRAME_SIZE = 28
INK_THRESHOLD = 0.1  # fraction of full ink below which a pixel counts as background
MAX_IMAGE_PIXELS = 4096 * 4096  # uploads above this are rejected from the header, before decoding
# Larger images are downscaled to this side before the ink search, because the digit ends up 20 pixels
# tall anyway. Without it, a 4096x4096 RGBA upload raised peak memory by about 500 MB (float copies).
MAX_WORKING_SIDE = 1024
NO_DIGIT_MESSAGE = (
    "no digit found: the image is blank, one flat shade or too faint; "
    "use an image of one digit with clear contrast, dark on light or light on dark"
)


@dataclass
class PreparedDigit:
    image: np.ndarray  # (28, 28) float32 in [0, 1], white ink on black: the model input
    tensor: torch.Tensor  # (1, 1, 28, 28) float32, normalised like training


def ink_map(pixels: np.ndarray) -> np.ndarray:
    """Return ink strength in [0, 1] per pixel for a grayscale (H, W), RGB or RGBA (H, W, C) array.

    Transparency wins when present: canvas strokes on a transparent background
    carry their shape in alpha, whatever their colour. Otherwise the border's
    brightness decides the polarity, so dark ink on white and white ink on
    black both come out as white ink on black.
    """
    array = np.asarray(pixels)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = array.astype(np.float32)
        if array.max(initial=0.0) > 1.0:
            array = array / array.max()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]

    if array.ndim == 3 and array.shape[2] == 4:
        alpha = array[..., 3]
        if alpha.min() < 0.99:
            return alpha
        array = array[..., :3]
    if array.ndim == 3:
        gray = array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114
    elif array.ndim == 2:
        gray = array
    else:
        raise ImageError(f"expected a 2-d grayscale or 3-d RGB/RGBA image array, got shape {array.shape}")

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = 1.0 - gray if background > 0.5 else gray
    ink_background = 1.0 - background if background > 0.5 else background
    if ink_background >= 0.99:
        return np.zeros_like(gray)
    return np.clip((ink - ink_background) / (1.0 - ink_background), 0.0, 1.0)


def to_mnist(pixels: np.ndarray) -> PreparedDigit | None:
    """Convert an image array to an MNIST-style digit, or return None when it has no ink."""
    ink = ink_map(pixels)
    peak = float(ink.max(initial=0.0))
    if peak < INK_THRESHOLD:
        return None
    ink = ink / peak

    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    # Scale the longer side to 20 pixels; antialias=True low-pass filters when shrinking.
    height, width = crop.shape
    scale = BOX_SIZE / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    patch = F.interpolate(torch.from_numpy(np.ascontiguousarray(crop))[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)
    patch = patch[0, 0].clamp_(0.0, 1.0).numpy()

    frame = _center_by_mass(patch)
    tensor = ((torch.from_numpy(frame) - MEAN) / STD)[None, None]
    return PreparedDigit(image=frame, tensor=tensor)


def _center_by_mass(patch: np.ndarray) -> np.ndarray:
    """Paste ``patch`` into a 28x28 frame with its centre of mass at the frame's centre."""
    total = patch.sum()
    ys, xs = np.indices(patch.shape)
    center_y = (ys * patch).sum() / total
    center_x = (xs * patch).sum() / total
    # MNIST's centres of mass sit at 14.0 (row and column index, std 0.29 over the first
    # 20,000 training images), not at the geometric centre 13.5 between pixels 13 and 14.
    middle = FRAME_SIZE / 2
    top = int(round(middle - center_y))
    left = int(round(middle - center_x))

    frame = np.zeros((FRAME_SIZE, FRAME_SIZE), dtype=np.float32)
    # Clip the paste to the frame: a lopsided digit may be shifted partly outside, as in MNIST.
    y0, x0 = max(0, top), max(0, left)
    y1 = min(FRAME_SIZE, top + patch.shape[0])
    x1 = min(FRAME_SIZE, left + patch.shape[1])
    frame[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return frame


@dataclass
class DecodedImage:
    pixels: np.ndarray  # (H, W), (H, W, 3) or (H, W, 4); uint8, or float32 in [0, 1] for 16- and 32-bit images
    notes: list[str]  # changes the user should know about, such as "only the first frame is used"


def decode_image(source: str | os.PathLike | bytes, *, name: str | None = None) -> DecodedImage:
    """Decode an image file (path or bytes) into a grayscale, RGB or RGBA array.

    The size is checked from the header before any pixel is decoded. Images with
    a side above MAX_WORKING_SIDE are downscaled, and EXIF orientation is applied.
    ``name`` labels uploaded bytes in messages (the file name the user chose).
    Every failure raises ImageError with a message for the user.
    """
    if isinstance(source, bytes):
        label = f"the uploaded file {name!r}" if name else "the uploaded file"
        if not source:
            raise ImageError(f"{label} is empty (0 bytes); choose a PNG or JPEG image of a digit")
        return _decode(io.BytesIO(source), label)

    label = str(source)
    try:
        with open(source, "rb") as stream:
            if os.fstat(stream.fileno()).st_size == 0:
                raise ImageError(f"{label} is empty (0 bytes); choose a PNG or JPEG image of a digit")
            return _decode(stream, label)
    except OSError as error:  # _decode turns decoding errors into ImageError, so this is open() or read()
        raise ImageError(f"cannot read {label}: {error.strerror or error}") from error


def read_image(source: str | os.PathLike | bytes, *, name: str | None = None) -> np.ndarray:
    """Decode an image file (path or bytes) into an array; see ``decode_image``."""
    return decode_image(source, name=name).pixels


def _decode(stream: io.IOBase, label: str) -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    notes: list[str] = []
    try:
        with Image.open(stream) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{label} is {width}x{height} pixels; images up to {MAX_IMAGE_PIXELS:,} pixels "
                    "(4096x4096) are accepted, so scale it down first"
                )
            # An animated GIF, PNG or WebP (or a multi-page TIFF) is classified by its first frame.
            if getattr(opened, "is_animated", False):
                notes.append(f"{label} has more than one frame; only the first frame is used")
            opened.seek(0)

            image = opened
            if image.mode in ("I;16", "I;16B", "I;16L"):
                image = image.convert("I")
            elif image.mode not in ("L", "RGB", "RGBA", "CMYK", "I", "F"):
                image = image.convert("RGBA")  # palette, 1-bit, LA and the rest: modes that ink_map and BOX resizing handle
            if max(image.size) > MAX_WORKING_SIDE:
                # In place: on a JPEG, thumbnail() decodes at a reduced scale (Pillow's draft mode).
                image.thumbnail((MAX_WORKING_SIDE, MAX_WORKING_SIDE), resample=Image.Resampling.BOX)
            image = ImageOps.exif_transpose(image)  # phone photos store "rotate 90" as a tag, not as pixels
            if image.mode == "CMYK":
                image = image.convert("RGB")
            image.load()
            pixels = np.asarray(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(_too_large_message(label, error)) from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{label} is not an image this tool can read; use PNG, JPEG, GIF, BMP or WebP") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageError(f"{label} is truncated or corrupt ({error}); save it again as PNG or JPEG") from error

    if pixels.dtype != np.uint8:  # 16-bit and 32-bit integer or float images
        pixels = np.clip(pixels.astype(np.float32), 0.0, None)
        pixels = pixels / max(float(pixels.max(initial=0.0)), 1e-12)
    return DecodedImage(pixels=pixels, notes=notes)


def _too_large_message(label: str, error: Exception) -> str:
    """Return the message for Pillow's DecompressionBombError, which Pillow raises from the header of a huge image."""
    # Pillow's message reads "Image size (400000000 pixels) exceeds limit of ..."; keep only the count.
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else "far too many pixels"
    return (
        f"{label} has {size}; images up to {MAX_IMAGE_PIXELS:,} pixels "
        "(4096x4096) are accepted, so scale it down first"
    )
