"""Pictures: image grids with their landmarks drawn."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def palette(k: int) -> list[tuple[int, int, int]]:
    """k distinct, bright colours (hue wheel), so point i has the same colour in every picture."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(k, 1), 0.9, 1.0)) for i in range(k)]


def draw_points(img: Image.Image, points, visible=None, scale: float = 1.0, radius: float = 2.0) -> Image.Image:
    """Points (x, y) at pixel centres of the original image, drawn on a copy scaled by `scale`;
    visible points filled, hidden ones as rings."""
    out = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC) if scale != 1 else img.copy()
    draw = ImageDraw.Draw(out)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    visible = np.ones(len(points), bool) if visible is None else np.asarray(visible, bool)
    for (x, y), vis, col in zip(points, visible, palette(len(points))):
        if not np.isfinite([x, y]).all():                      # a point that is not there (e.g. invisible truth)
            continue
        cx, cy = (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=col if vis else None, outline=(0, 0, 0) if vis else col)
    return out


def landmark_grid(images: np.ndarray, landmarks=None, visible=None, cols: int = 8, scale: float = 2.0,
                  truth=None) -> Image.Image:
    """uint8 images [N, 3, S, S] (with optional landmarks [N, K, 2], visible [N, K]) in one picture; `truth`
    [N, K, 2]: the true points too, as rings of the same colours (the landmarks are then predictions)."""
    n, _, h, w = images.shape
    rows = -(-n // cols)
    tile_w, tile_h = round(w * scale), round(h * scale)
    grid = Image.new("RGB", (cols * tile_w, rows * tile_h), (255, 255, 255))
    for i in range(n):
        tile = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)))
        if truth is not None:
            tile = draw_points(tile, truth[i], np.zeros(len(truth[i]), bool), scale, radius=3.0)
            scale_i, points = 1.0, (np.asarray(landmarks[i]) + 0.5) * scale - 0.5
            grid.paste(draw_points(tile, points, None, scale_i), ((i % cols) * tile_w, (i // cols) * tile_h))
            continue
        tile = draw_points(tile, landmarks[i], None if visible is None else visible[i], scale) \
            if landmarks is not None else tile.resize((tile_w, tile_h), Image.BICUBIC)
        grid.paste(tile, ((i % cols) * tile_w, (i // cols) * tile_h))
    return grid
