"""One image file decoded into the stored layout: a square uint8 array, grey or RGB, EXIF rotation applied.

Why one function for the cache and for predictions: `tl-predict` must read a file exactly as the
prepare stage stored the training images, or the model sees other pixels than it learned from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

Color = Literal["rgb", "grey"]


@dataclass(frozen=True)
class Decoded:
    """One decoded image, or why it could not be decoded."""

    pixels: np.ndarray | None
    original_size: tuple[int, int] | None = None
    original_mode: str | None = None
    reason: str | None = None


def decode_image(path: Path, *, size: int, color: Color, max_pixels: int) -> Decoded:
    """Decodes one file into a (size, size[, 3]) uint8 array, EXIF rotation applied.

    Why: a dataset mixes modes (grey, RGB, RGBA, palette, 16-bit) and orientations; each is brought to one
    layout here so the cache holds one array shape. JPEGs are decoded at a reduced scale (draft mode)
    when they are much larger than `size`, and other images above `max_pixels` are refused before their
    pixels are read, so a huge file cannot make memory spike.

    Args:
        path: The image file.
        size: Side of the stored square image.
        color: "rgb" (3 channels) or "grey" (no channel axis).
        max_pixels: Largest width x height decoded at full scale.

    Returns:
        The pixels with the original size and mode, or the reason it was skipped.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return Decoded(None, reason="empty file (0 bytes)")
        with warnings.catch_warnings():
            # Our own pixel limit below decides; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                original_size, original_mode = image.size, image.mode
                target_mode = "RGB" if color == "rgb" else "L"
                if image.format == "JPEG":
                    # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale: the full-size pixels never exist.
                    image.draft(target_mode, (size, size))
                if image.size[0] * image.size[1] > max_pixels:
                    return Decoded(
                        None,
                        original_size,
                        original_mode,
                        reason=f"{original_size[0]}x{original_size[1]} pixels is over data.max_image_pixels "
                        f"({max_pixels}; decompression-bomb guard)",
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
                image = _to_mode(image, target_mode)
                image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
                return Decoded(np.asarray(image, dtype=np.uint8), original_size, original_mode)
    except Image.DecompressionBombError as error:
        return Decoded(None, reason=f"decompression bomb: {error}")
    except UnidentifiedImageError:
        return Decoded(None, reason="not an image Pillow can read (corrupt or unknown format)")
    except (OSError, SyntaxError, ValueError) as error:
        # Truncated or damaged data surfaces as OSError ("image file is truncated") or a decoder error.
        return Decoded(None, reason=f"cannot decode: {error}")


def _to_mode(image: Image.Image, target_mode: str) -> Image.Image:
    """Converts any Pillow mode to "RGB" or "L"; 16-bit is scaled down, transparency flattened on white."""
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own conversion clips 16-bit values at 255; scaling keeps the picture.
        values = np.asarray(image, dtype=np.uint32)
        shift = 8 if mode != "I" or values.max(initial=0) > 255 else 0
        image = Image.fromarray((values >> shift).clip(0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P" or mode == "PA" or mode == "LA" or mode == "RGBA" or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(target_mode)
