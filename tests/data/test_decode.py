"""Tests of pipeline/data/decode.py on tiny image files each test makes (bad data too)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decode import decode_image
from tests.data.conftest import SIZE, save_image


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("RGB", (10, 20, 30), (10, 20, 30)),
        # Fully transparent pixels are flattened on white; opaque ones keep their colour.
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("P", 0, (0, 0, 0)),
    ],
)
def test_modes_are_converted_to_rgb(tmp_path: Path, mode: str, fill: object, expected: tuple[int, ...]) -> None:
    path = tmp_path / "image.png"
    Image.new(mode, (4, 4), fill).save(path)

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=10**6)

    assert decoded.pixels.shape == (SIZE, SIZE, 3)
    assert decoded.pixels.dtype == np.uint8
    assert tuple(decoded.pixels[0, 0]) == expected
    assert decoded.original_mode == mode


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(path)

    decoded = decode_image(path, size=SIZE, color="grey", max_pixels=10**6)

    assert decoded.original_mode.startswith("I")
    assert decoded.pixels.shape == (SIZE, SIZE)
    assert int(decoded.pixels[0, 0]) == 40000 >> 8


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    # 4 wide, 2 high, left half black, right half white; EXIF orientation 6 = rotate 90 clockwise to view.
    pixels = np.zeros((2, 4), dtype=np.uint8)
    pixels[:, 2:] = 255
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)

    decoded = decode_image(path, size=4, color="grey", max_pixels=10**6)

    # Viewed upright the image is 2 wide and 4 high: the white half is now the bottom.
    assert decoded.pixels[0].tolist() == [0, 0, 0, 0]
    assert decoded.pixels[-1].tolist() == [255, 255, 255, 255]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"this is not a picture at all", "not an image Pillow can read (corrupt or unknown format)"),
    ],
)
def test_empty_and_corrupt_files_are_skipped(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=10**6)

    assert decoded.pixels is None
    assert decoded.reason == reason


def test_truncated_jpeg_is_skipped(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=10**6)

    assert decoded.pixels is None
    assert decoded.reason.startswith("cannot decode: image file is truncated")


def test_huge_png_is_skipped_without_reading_its_pixels(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    # Mode "1" keeps the 10000x10000 image at 12.5 MB while the test writes it.
    Image.new("1", (10_000, 10_000)).save(path)

    decoded = decode_image(path, size=SIZE, color="rgb", max_pixels=40_000_000)

    assert decoded.pixels is None
    assert decoded.reason == ("10000x10000 pixels is over data.max_image_pixels (40000000; decompression-bomb guard)")


def test_huge_jpeg_is_decoded_in_draft_mode(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("L", (10_000, 10_000), 200).save(path, quality=50)

    # 100 M pixels over the limit, but libjpeg decodes at 1/8 scale: 1250x1250 is under it.
    decoded = decode_image(path, size=SIZE, color="grey", max_pixels=2_000_000)

    assert decoded.original_size == (10_000, 10_000)
    assert decoded.pixels.shape == (SIZE, SIZE)
    assert abs(int(decoded.pixels[0, 0]) - 200) <= 2


@pytest.mark.parametrize("suffix", [".JPG", ".jpeg", ".PNG", ".bmp", ".gif", ".TIFF", ".tif", ".webp"])
def test_every_format_and_upper_case_extension(tmp_path: Path, suffix: str) -> None:
    path = save_image(tmp_path / f"image{suffix}", 128, mode="L" if suffix.lower() == ".gif" else "RGB")

    decoded = decode_image(path, size=SIZE, color="grey", max_pixels=10**6)

    assert decoded.pixels.shape == (SIZE, SIZE)
    assert abs(int(decoded.pixels[0, 0]) - 128) <= 2


def test_huge_jpeg_decodes_without_a_memory_spike(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("L", (10_000, 10_000), 90).save(path, quality=50)
    # A fresh process, so the 100 MB the test needed to write the file do not count; ru_maxrss is in KiB.
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from pipeline.data.decode import decode_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "decoded = decode_image(Path(sys.argv[1]), size=8, color='rgb', max_pixels=40_000_000)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(decoded.original_size, decoded.pixels.shape, after - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.startswith("(10000, 10000) (8, 8, 3) ")
    # Decoded at full scale the greys alone would take 100 MB (300 MB as RGB); at 1/8 scale about 1.5 MB.
    growth_kib = int(result.stdout.split()[-1])
    assert growth_kib < 20 * 1024, f"decoding grew the peak RSS by {growth_kib} KiB"
