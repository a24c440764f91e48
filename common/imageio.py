"""Images in, RGB out, and the one-line user error: what every script needs, without the data layer's imports
(datasets), so that a command-line tool such as match.py starts fast.

Coordinates across the project: (x, y) in pixels, 0-based, at pixel centres (the centre of the
top-left pixel is (0, 0); the image spans [-0.5, W - 0.5]). Readers of 1-based formats subtract 1.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 8


class DataError(Exception):
    """A problem with the user's data or paths; scripts print it as one line and exit 2."""


class BadImage(Exception):
    """One image that cannot be used; the caller skips and counts it."""


def require(path: str | Path, expected: str) -> Path:
    """Return `path` if it exists, else raise a one-line DataError naming it and what was expected."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (expected {expected})")
    return path


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit and float images are rescaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # L, LA, RGBA, CMYK, YCbCr, 1 ...


def open_rgb(source: str | Path | bytes, exif: bool = False) -> Image.Image:
    """Decode fully and return RGB; raise BadImage with a short reason when it cannot be used.

    exif=True applies the EXIF orientation (for unlabelled photos; annotated data sets give
    coordinates in the stored pixel grid, so their readers leave it off).
    """
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        img.load()
    except FileNotFoundError:
        raise BadImage("missing file") from None
    except Exception as e:  # PIL raises many types for broken files
        raise BadImage(f"unreadable ({type(e).__name__}: {str(e)[:60]})") from None
    if min(img.size) < MIN_SIDE:
        raise BadImage(f"degenerate size {img.size[0]}x{img.size[1]}")
    if exif:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)
