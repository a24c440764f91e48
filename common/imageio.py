"""Images in, RGB out: what every script needs, without the data layer's imports
(datasets), so that a command-line tool such as match.py starts fast.

Coordinates across the project: (x, y) in pixels, 0-based, at pixel centres (the centre of the
top-left pixel is (0, 0); the image spans [-0.5, W - 0.5]). Readers of 1-based formats subtract 1.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import UserError

MIN_SIDE = 8
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")     # what a folder of photos holds


class BadImage(Exception):
    """One image that cannot be used; the caller skips and counts it."""


def require(path: str | Path, expected: str) -> Path:
    """Return `path` if it exists, else raise a one-line UserError naming it and what was expected."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (expected {expected})")
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


def crop_resize(img: Image.Image, box, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop `box` (x0, y0, x1, y1; pixel-centre coordinates, edges; may leave the image: zero
    padding, as DVE does) and resize to size x size with antialiasing. Returns the uint8 array
    [3, S, S] and the affine map (scale [2], offset [2]) that takes image points to cache points."""
    x0, y0, x1, y1 = (float(v) for v in box)
    # PIL's boxes use pixel edges (the image spans [0, W]); ours use centres (it spans [-0.5, W - 0.5])
    ex0, ey0, ex1, ey1 = x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5
    ix0, iy0 = int(np.floor(ex0)), int(np.floor(ey0))
    ix1, iy1 = int(np.ceil(ex1)), int(np.ceil(ey1))
    region = img.crop((ix0, iy0, ix1, iy1))  # zero-pads outside the image
    out = region.resize((size, size), Image.BILINEAR, box=(ex0 - ix0, ey0 - iy0, ex1 - ix0, ey1 - iy0),
                        reducing_gap=None)
    scale = np.array([size / (x1 - x0), size / (y1 - y0)], np.float32)
    # x_cache + 0.5 = (x + 0.5 - ex0) * scale  (edges map to edges)
    offset = (0.5 - np.array([ex0, ey0], np.float32)) * scale - 0.5
    return np.asarray(out, np.uint8).transpose(2, 0, 1), scale, offset
