"""Bad and unusual image uploads: core decoding, the CLI's predict command and the Draw page under AppTest.

Every file here is built in the test: real PNG, GIF, JPEG and TIFF encodings made
with Pillow, and decompression-bomb PNGs assembled from zlib-compressed rows.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.escaping import escape_markdown
from core.errors import ImageError
from core.preprocess import MAX_IMAGE_PIXELS, MAX_WORKING_SIDE, NO_DIGIT_MESSAGE, decode_image, read_image, to_mnist
from tests.helpers import REPO_ROOT, SHIPPED_CNN, python_env, run_cli

DRAW_PAGE = REPO_ROOT / "app" / "views" / "draw.py"


# -- building test files ----------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def scanned_digit(digit: np.ndarray, side: int = 140) -> Image.Image:
    """Turn a uint8 MNIST digit (white on black) into a dark-on-white grayscale scan ``side`` pixels wide."""
    return Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BILINEAR)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int, *, bit_depth: int = 1) -> bytes:
    """A complete grayscale PNG of ``width`` x ``height`` black pixels: a small file that inflates to a huge image."""
    row = b"\0" * (1 + (width * bit_depth + 7) // 8)  # filter byte, then the packed pixels
    data = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def digit(mnist) -> np.ndarray:
    """The first MNIST test digit (a 7) as a uint8 (28, 28) array, white ink on black."""
    return mnist.test_images[0].numpy()


@pytest.fixture(scope="module")
def digit_label(mnist) -> int:
    return int(mnist.test_labels[0])


@pytest.fixture(scope="module")
def reference(digit) -> np.ndarray:
    """The 28x28 model input for the 8-bit grayscale scan, which the other encodings must match."""
    return to_mnist(read_image(encode(scanned_digit(digit), "PNG"))).image


def animated(first: Image.Image, fmt: str) -> bytes:
    """Encode ``first`` followed by an all-black and an all-white frame as an animation."""
    others = [Image.new(first.mode, first.size, 0), Image.new(first.mode, first.size, 255)]
    return encode(first, fmt, save_all=True, append_images=others, duration=100, loop=0)


# -- core: decode_image and to_mnist -----------------------------------------


def test_text_file_not_an_image():
    with pytest.raises(ImageError) as caught:
        decode_image(b"Dear diary, today I drew a 7.", name="diary.png")

    message = str(caught.value)
    assert "'diary.png'" in message
    assert "not an image this tool can read" in message
    assert "use PNG, JPEG" in message


def test_empty_upload_names_file():
    with pytest.raises(ImageError) as caught:
        decode_image(b"", name="empty.png")

    assert "'empty.png' is empty (0 bytes)" in str(caught.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_png_named(digit, keep):
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)), "PNG")

    with pytest.raises(ImageError) as caught:
        decode_image(data[: int(len(data) * keep)], name="cut.png")

    message = str(caught.value)
    assert "'cut.png' is truncated or corrupt" in message
    assert "save it again" in message


def test_directory_path_cannot_be_read(tmp_path):
    with pytest.raises(ImageError, match=r"cannot read .*Is a directory"):
        decode_image(tmp_path)


@pytest.mark.parametrize(
    "width, height, bit_depth, pixels",
    [(20000, 20000, 1, "400,000,000 pixels"), (5000, 5000, 8, "5000x5000 pixels"), (1, 20_000_000, 1, "1x20000000 pixels")],
    ids=["20000x20000 bomb", "5000x5000", "one pixel wide"],
)
def test_bomb_rejected_before_decoding(monkeypatch, width, height, bit_depth, pixels):
    from PIL import ImageFile

    data = bomb_png(width, height, bit_depth=bit_depth)
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))

    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        decode_image(data, name="bomb.png")
    elapsed_s = time.perf_counter() - started

    message = str(caught.value)
    assert len(data) < 300_000  # the point of a bomb: a small file
    assert pixels in message
    assert f"up to {MAX_IMAGE_PIXELS:,} pixels" in message
    assert "scale it down first" in message
    assert decoded == []
    assert elapsed_s < 2.0


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    from core.errors import ImageError
    from core.preprocess import decode_image, to_mnist

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    results = {}
    for label, path in (("bomb", sys.argv[1]), ("largest", sys.argv[2])):
        data = open(path, "rb").read()
        before, started = peak_mb(), time.perf_counter()
        try:
            to_mnist(decode_image(data).pixels)
            outcome = "decoded"
        except ImageError as error:
            outcome = str(error)
        results[label] = {"outcome": outcome, "growth_mb": peak_mb() - before, "seconds": time.perf_counter() - started}
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_upload_memory_stays_small(tmp_path):
    # A fresh process, so the peak resident size is not already raised by MNIST or other tests.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(20000, 20000))
    largest = np.zeros((4096, 4096, 4), dtype=np.uint8)
    largest[..., 3] = 255
    largest[1000:3000, 1800:2200, :3] = 255
    largest_path = tmp_path / "largest.png"
    Image.fromarray(largest).save(largest_path)

    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(bomb), str(largest_path)],
        cwd=REPO_ROOT, env=python_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)

    assert "400,000,000 pixels" in measured["bomb"]["outcome"]
    assert measured["bomb"]["growth_mb"] < 20, measured
    assert measured["bomb"]["seconds"] < 2.0, measured
    assert measured["largest"]["outcome"] == "decoded"
    # The 4096x4096 RGBA pixels alone take 64 MiB; float copies at full size took about 500 MB.
    assert measured["largest"]["growth_mb"] < 250, measured


def test_large_image_downscaled(digit, reference):
    big = scanned_digit(digit, side=3000)

    decoded = decode_image(encode(big, "PNG"))

    assert max(decoded.pixels.shape[:2]) == MAX_WORKING_SIDE
    assert np.abs(to_mnist(decoded.pixels).image - reference).mean() < 0.03


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_uses_first_frame(digit, reference, fmt):
    if fmt == "WEBP" and not Image.registered_extensions().get(".webp"):
        pytest.skip("this Pillow build has no WebP support")
    data = animated(scanned_digit(digit).convert("RGB"), fmt)

    decoded = decode_image(data, name=f"digit.{fmt.lower()}")

    assert decoded.notes == [f"the uploaded file 'digit.{fmt.lower()}' has more than one frame; only the first frame is used"]
    prepared = to_mnist(decoded.pixels)
    assert prepared is not None
    # WebP and GIF are lossy or palette-reduced, so compare loosely; the other frames are blank.
    assert np.abs(prepared.image - reference).mean() < 0.05


def test_still_image_has_no_notes(digit):
    assert decode_image(encode(scanned_digit(digit), "GIF")).notes == []


def test_16bit_png_matches_8bit(digit, reference):
    deep = (np.asarray(scanned_digit(digit), dtype=np.uint16) * 257).astype(np.uint16)  # 0..255 -> 0..65535
    image = Image.fromarray(deep)
    assert image.mode.startswith("I;16")

    prepared = to_mnist(read_image(encode(image, "PNG")))

    assert prepared is not None
    assert np.abs(prepared.image - reference).mean() < 0.01


def test_cmyk_jpeg_matches_grayscale(digit, reference):
    data = encode(scanned_digit(digit).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    pixels = read_image(data)
    prepared = to_mnist(pixels)

    assert pixels.shape[2] == 3
    assert prepared is not None
    assert np.abs(prepared.image - reference).mean() < 0.03


def test_float_tiff_is_scaled(digit, reference):
    scan = np.asarray(scanned_digit(digit), dtype=np.float32) / 255.0  # values in [0, 1], not [0, 255]

    prepared = to_mnist(read_image(encode(Image.fromarray(scan, mode="F"), "TIFF")))

    assert prepared is not None
    assert np.abs(prepared.image - reference).mean() < 0.01


def test_exif_rotation_applied(digit):
    scan = scanned_digit(digit)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned, so the image must be rotated 90 degrees clockwise
    upright = np.asarray(scan.transpose(Image.Transpose.ROTATE_270))

    pixels = read_image(encode(scan, "PNG", exif=exif))

    assert np.array_equal(pixels, upright)


def test_wrong_extension_decoded_by_content(tmp_path, digit, reference):
    path = tmp_path / "digit.jpg"  # PNG bytes behind a JPEG name
    path.write_bytes(encode(scanned_digit(digit), "PNG"))

    prepared = to_mnist(read_image(path))

    assert prepared is not None
    assert np.array_equal(prepared.image, reference)


BLANK_IMAGES = {
    "white png": lambda: encode(Image.new("L", (200, 200), 255), "PNG"),
    "black png": lambda: encode(Image.new("L", (200, 200), 0), "PNG"),
    "white jpeg": lambda: encode(Image.new("RGB", (200, 200), (255, 255, 255)), "JPEG"),
    "black jpeg": lambda: encode(Image.new("RGB", (200, 200), (0, 0, 0)), "JPEG"),
    "black 16-bit": lambda: encode(Image.fromarray(np.zeros((64, 64), dtype=np.uint16)), "PNG"),
    "white 16-bit": lambda: encode(Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)), "PNG"),
    "transparent": lambda: encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),
}


@pytest.mark.parametrize("case", list(BLANK_IMAGES))
def test_blank_image_no_digit(case):
    assert to_mnist(read_image(BLANK_IMAGES[case]())) is None


# -- CLI: python -m core predict ---------------------------------------------


@pytest.fixture(scope="module")
def upload_files(tmp_path_factory, digit) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    scan = scanned_digit(digit)
    contents = {
        "empty.png": b"",
        "notes.png": b"shopping list: eggs, milk",
        "truncated.png": encode(scan, "PNG")[:300],
        "bomb.png": bomb_png(20000, 20000),
        "black.png": BLANK_IMAGES["black png"](),
        "white.jpg": BLANK_IMAGES["white jpeg"](),
        "deep.png": encode(Image.fromarray((np.asarray(scan, dtype=np.uint16) * 257).astype(np.uint16)), "PNG"),
        "cmyk.jpg": encode(scan.convert("CMYK"), "JPEG", quality=95),
        "animated.gif": animated(scan.convert("RGB"), "GIF"),
        "png-named.jpg": encode(scan, "PNG"),
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    paths["folder.png"] = folder / "folder.png"
    paths["folder.png"].mkdir()
    return paths


@pytest.fixture(scope="module")
def predicted(upload_files, tmp_path_factory):
    if not SHIPPED_CNN.is_file():
        pytest.skip(f"{SHIPPED_CNN} is missing; train it with `make pretrained`")
    store = tmp_path_factory.mktemp("predict") / "store"
    result = run_cli("predict", *map(str, upload_files.values()), "--model", "cnn", "--json", "--store", str(store))
    rows = {Path(row["file"]).name: row for row in json.loads(result.stdout)}
    return result, rows


CLI_ERRORS = {
    "empty.png": "is empty (0 bytes)",
    "notes.png": "is not an image this tool can read",
    "truncated.png": "is truncated or corrupt",
    "bomb.png": "has 400,000,000 pixels",
    "folder.png": "Is a directory",
    "black.png": NO_DIGIT_MESSAGE,
    "white.jpg": NO_DIGIT_MESSAGE,
}


def test_predict_exit_code_and_no_traceback(predicted):
    result, rows = predicted

    assert result.returncode == 1  # some files failed, the rest were classified
    assert "Traceback" not in result.stderr
    assert len(rows) == 11


@pytest.mark.parametrize("name", list(CLI_ERRORS))
def test_predict_bad_file_message(predicted, name):
    result, rows = predicted

    assert rows[name]["prediction"] is None
    assert rows[name]["probabilities"] is None
    assert CLI_ERRORS[name] in rows[name]["error"]
    assert CLI_ERRORS[name] in result.stderr


@pytest.mark.parametrize("name", ["deep.png", "cmyk.jpg", "animated.gif", "png-named.jpg"])
def test_predict_unusual_file_classified(predicted, digit_label, name):
    _, rows = predicted

    assert rows[name]["prediction"] == digit_label
    assert "error" not in rows[name]


def test_predict_animation_note(predicted):
    result, rows = predicted

    assert rows["animated.gif"]["notes"] == [f"{rows['animated.gif']['file']} has more than one frame; only the first frame is used"]
    assert "note: " in result.stderr
    assert rows["deep.png"]["notes"] == []


# -- Draw page under AppTest --------------------------------------------------


@pytest.fixture
def draw_page(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    if not list((REPO_ROOT / "checkpoints").glob("*.safetensors")):
        pytest.skip("checkpoints/ has no shipped models, so the Draw page stops before its uploader")
    return AppTest.from_file(str(DRAW_PAGE), default_timeout=60).run()


def unescape(markdown: str) -> str:
    """Undo escape_markdown, to compare page text with core's plain messages."""
    return re.sub(r"\\(.)", r"\1", markdown)


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    at.file_uploader(key="upload").set_value((name, data, mime)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def answers_shown(at: AppTest) -> bool:
    return any(s.value == "Answers" for s in at.subheader)


def test_draw_upload_digit_answers(draw_page, digit, digit_label):
    at = upload(draw_page, "seven.png", encode(scanned_digit(digit), "PNG"))

    assert not at.error
    assert answers_shown(at)
    assert any(f"says **{digit_label}**" in m.value for m in at.markdown)


DRAW_ERRORS = {
    "text.png": (lambda digit: b"not a picture at all", "the uploaded file 'text.png' is not an image this tool can read"),
    "empty.png": (lambda digit: b"", "the uploaded file 'empty.png' is empty (0 bytes)"),
    "truncated.png": (lambda digit: encode(scanned_digit(digit), "PNG")[:300], "the uploaded file 'truncated.png' is truncated or corrupt"),
    "bomb.png": (lambda digit: bomb_png(20000, 20000), "the uploaded file 'bomb.png' has 400,000,000 pixels"),
    "large.png": (lambda digit: bomb_png(5000, 5000, bit_depth=8), "the uploaded file 'large.png' is 5000x5000 pixels"),
}


@pytest.mark.parametrize("name", list(DRAW_ERRORS))
def test_draw_bad_upload_error(draw_page, digit, name):
    make_data, message = DRAW_ERRORS[name]

    at = upload(draw_page, name, make_data(digit))

    errors = [unescape(e.value) for e in at.error]
    assert len(errors) == 1, errors
    assert message in errors[0]
    assert not answers_shown(at)


@pytest.mark.parametrize("case", ["white png", "black png", "white jpeg", "black jpeg"])
def test_draw_blank_upload_warns(draw_page, case):
    name = "blank.jpg" if "jpeg" in case else "blank.png"

    at = upload(draw_page, name, BLANK_IMAGES[case](), "image/jpeg" if "jpeg" in case else "image/png")

    assert [unescape(w.value) for w in at.warning] == [f"{name}: {NO_DIGIT_MESSAGE}"]
    assert not at.error
    assert not answers_shown(at)


def test_draw_animated_gif_note(draw_page, digit, digit_label):
    at = upload(draw_page, "seven.gif", animated(scanned_digit(digit).convert("RGB"), "GIF"), "image/gif")

    notes = [unescape(i.value) for i in at.info]
    assert "the uploaded file 'seven.gif' has more than one frame; only the first frame is used" in notes
    assert answers_shown(at)
    assert any(f"says **{digit_label}**" in m.value for m in at.markdown)


@pytest.mark.parametrize("name, mime, fmt", [("digit.jpg", "image/jpeg", "PNG"), ("digit.png", "image/png", "JPEG")])
def test_draw_wrong_extension_decoded(draw_page, digit, digit_label, name, mime, fmt):
    at = upload(draw_page, name, encode(scanned_digit(digit).convert("RGB"), fmt), mime)

    assert not at.error
    assert answers_shown(at)


def test_draw_markdown_in_file_name_escaped(draw_page):
    name = "![x](http:__127.0.0.1:9_t.png) **bold** $x$.png"

    at = upload(draw_page, name, b"not an image")

    message = at.error[0].value
    assert escape_markdown(name) in message
    assert unescape(message).startswith(f"the uploaded file {name!r} is not an image")


def test_draw_forged_extension_refused(draw_page):
    # The browser's file picker offers only image types. A forged .txt upload is rejected by
    # Streamlit itself, which checks the name against the widget's types before the page runs.
    draw_page.file_uploader(key="upload").set_value(("notes.txt", b"hello", "text/plain")).run()

    assert any("Invalid file extension" in e.value for e in draw_page.exception)
    assert not answers_shown(draw_page)


def test_draw_run_name_escaped(draw_page, tmp_path, digit):
    from core.checkpoints import save_checkpoint
    from core.models import build_model, default_model_config
    from core.store import RunStore

    name = "**bold** ![x](http://127.0.0.1:9/x.png) $x$"
    store = RunStore(tmp_path / "store")
    run_id = store.create_run(default_model_config("dense"), {"epochs": 1}, name=name, status="running")
    config = default_model_config("dense")
    path = save_checkpoint(store.run_dir(run_id) / "model.safetensors", build_model(config), config, {})
    store.finish(run_id, "completed", checkpoint=str(path), test_accuracy=0.1, params=67_978)

    at = AppTest.from_file(str(DRAW_PAGE), default_timeout=60).run()  # a fresh page lists the new run
    at.multiselect(key="draw_models").set_value([f"run:{run_id}"]).run()
    at = upload(at, "seven.png", encode(scanned_digit(digit), "PNG"))

    answers = [m.value for m in at.markdown if " says **" in m.value]
    assert len(answers) == 1
    assert answers[0].startswith(f"**{escape_markdown(f'#{run_id} {name}')}** says **")
    assert "![x]" not in answers[0]
