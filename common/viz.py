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


def match_picture(ref: Image.Image, query: Image.Image, ref_points, query_points, heat=None, heat_index=None,
                  height: int = 256, boxes=(None, None)) -> Image.Image:
    """Both images side by side at `height` px, matched points numbered in the same colour and joined by lines;
    with `heat` (similarity [h, w] over the query image) the query is tinted by it, and point `heat_index` alone
    is drawn (as the paper's Fig. 3); `boxes`: each image's face crop (x0, y0, x1, y1) or None, outlined."""
    sr, sq = height / ref.height, height / query.height
    left = ref.resize((max(1, round(ref.width * sr)), height), Image.BICUBIC)
    right = query.resize((max(1, round(query.width * sq)), height), Image.BICUBIC)
    if heat is not None:
        from matplotlib import colormaps
        h = np.asarray(heat, dtype=np.float64)
        h = (h - h.min()) / max(h.max() - h.min(), 1e-8)
        tint = Image.fromarray((255 * colormaps["jet"](h)[..., :3]).astype(np.uint8)).resize(right.size, Image.BILINEAR)
        right = Image.blend(right, tint, 0.5)
    out = Image.new("RGB", (left.width + right.width, height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    draw = ImageDraw.Draw(out)
    for box, scale, left_edge in zip(boxes, (sr, sq), (0, left.width)):
        if box is not None:                        # edges in pixel-centre coordinates: +0.5 gives PIL's
            x0, y0, x1, y1 = ((v + 0.5) * scale for v in box)
            draw.rectangle((x0 + left_edge, y0, x1 + left_edge, y1), outline=(255, 255, 255), width=1)
    idx = range(len(ref_points)) if heat_index is None else [heat_index]
    colours = palette(len(ref_points))
    for i in idx:
        (x0, y0), (x1, y1) = ref_points[i], query_points[i]
        a = ((x0 + 0.5) * sr - 0.5, (y0 + 0.5) * sr - 0.5)
        b = ((x1 + 0.5) * sq - 0.5 + left.width, (y1 + 0.5) * sq - 0.5)
        draw.line([a, b], fill=colours[i], width=1)
        for cx, cy in (a, b):
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colours[i], outline=(0, 0, 0))
            draw.text((cx + 4, cy - 5), str(i), fill=colours[i])
    return out
