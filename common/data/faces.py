"""Procedural faces with exact landmarks: the embedded default data set.

A face is a few ellipsoids (head, nose bridge and tip, ears, neck, shoulders, a hair shell) posed in
3-D (yaw, pitch, roll, scale, shift) and ray-cast orthographically, so shading, silhouettes and
foreshortening follow the pose. Eyes, brows, lips, teeth, nostrils, beard and glasses are painted
in the face's own frame (u, v) = the hit point's (X, Y), by the same curves that place the 68
landmarks; a landmark is that (u, v) lifted onto the surface and projected with the same camera,
so points and pixels cannot disagree. Everything is batched torch on whole images.

Face frame: X right (image left to right in a frontal view), Y down, Z towards the viewer; the head
is about 1.5 units wide. Image: (x, y) pixels at pixel centres (see common/data/images.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange

GENERATOR_VERSION = 1  # bump when the pictures change: it is part of the cache key
MAX_SCALE = 0.42       # the largest face scale (pixels per face unit) per pixel of image size
T = torch.Tensor

# ---------------------------------------------------------------------------------- parameters
SKIN = torch.tensor([[0.96, 0.80, 0.69], [0.86, 0.66, 0.53], [0.72, 0.52, 0.38],
                     [0.55, 0.37, 0.25], [0.36, 0.23, 0.16]])
HAIR = torch.tensor([[0.05, 0.04, 0.04], [0.17, 0.11, 0.07], [0.35, 0.23, 0.14],
                     [0.48, 0.24, 0.12], [0.76, 0.62, 0.40], [0.62, 0.60, 0.58]])
HAIR_P = torch.tensor([0.30, 0.28, 0.18, 0.07, 0.10, 0.07])
IRIS = torch.tensor([[0.18, 0.10, 0.05], [0.32, 0.20, 0.10], [0.40, 0.35, 0.18],
                     [0.25, 0.38, 0.25], [0.28, 0.42, 0.60], [0.45, 0.48, 0.50]])
IRIS_P = torch.tensor([0.35, 0.25, 0.12, 0.08, 0.14, 0.06])


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> T:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coin(g: torch.Generator, n: int, p: float) -> T:
    return (torch.rand(n, generator=g) < p).float()


def _palette(g: torch.Generator, n: int, colours: T, probs: T, jitter: float) -> T:
    idx = torch.multinomial(probs, n, replacement=True, generator=g)
    return (colours[idx] + jitter * (torch.rand(n, 3, generator=g) - 0.5)).clamp(0, 1)


def sample_identities(n: int, g: torch.Generator) -> dict[str, T]:
    """What stays fixed for a person: shape, colours, feature geometry, hair style, accessories."""
    p = {"head_a": _u(g, n, 0.74, 0.84), "head_b": _u(g, n, 0.98, 1.06), "head_c": _u(g, n, 0.80, 0.92)}
    p["jaw_p"] = _u(g, n, 1.7, 3.0)           # 2 = round jaw, 3 = square
    p["chin_v"] = _u(g, n, 0.84, 0.96)
    p["eye_x"] = _u(g, n, 0.26, 0.32)
    p["eye_v"] = _u(g, n, -0.08, 0.0)
    p["eye_w"] = _u(g, n, 0.12, 0.145)
    p["eye_h"] = _u(g, n, 0.045, 0.062)
    p["eye_hl"] = p["eye_h"] * _u(g, n, 0.6, 0.8)
    p["eye_tilt"] = _u(g, n, -0.12, 0.05)  # < 0 lifts the outer corners
    p["iris_r"] = p["eye_w"] * _u(g, n, 0.38, 0.44)
    p["brow_dv"] = _u(g, n, 0.11, 0.15)
    p["brow_t"] = _u(g, n, 0.03, 0.05)
    p["brow_arch"] = _u(g, n, 0.015, 0.045)
    p["brow_len"] = _u(g, n, 0.15, 0.19)
    p["tip_v"] = _u(g, n, 0.20, 0.28)
    p["nose_w"] = _u(g, n, 0.075, 0.10)
    p["nose_out"] = _u(g, n, 0.10, 0.16)
    p["mouth_v"] = torch.minimum(_u(g, n, 0.48, 0.56), p["chin_v"] - 0.28)
    p["mouth_w"] = _u(g, n, 0.16, 0.21)
    p["lip_up"] = _u(g, n, 0.022, 0.04)
    p["lip_lo"] = _u(g, n, 0.03, 0.05)
    t = _u(g, n, 0, 1) * (len(SKIN) - 1)  # natural skin tones only: a line through a palette
    i0 = t.floor().long().clamp(max=len(SKIN) - 2)
    p["skin"] = torch.lerp(SKIN[i0], SKIN[i0 + 1], (t - i0)[:, None]) + 0.04 * (torch.rand(n, 3, generator=g) - 0.5)
    p["lip"] = p["skin"] * torch.tensor([0.86, 0.60, 0.60]) + 0.04 * (torch.rand(n, 3, generator=g) - 0.5)
    p["hair"] = _palette(g, n, HAIR, HAIR_P, 0.06)
    p["iris"] = _palette(g, n, IRIS, IRIS_P, 0.06)
    bald = _coin(g, n, 0.08)
    p["hairline"] = torch.lerp(_u(g, n, -0.75, -0.52), torch.full((n,), -3.0), bald)
    p["fringe"] = _coin(g, n, 0.35) * _u(g, n, 0.1, 0.32) * (1 - bald)
    p["side_v"] = torch.lerp(_u(g, n, -0.15, 1.1), torch.full((n,), -3.0), bald)
    p["hair_vol"] = _u(g, n, 1.05, 1.16)
    p["beard"] = _coin(g, n, 0.18) * _u(g, n, 0.5, 1.0)
    p["stubble"] = (1 - p["beard"].sign()) * _coin(g, n, 0.15) * _u(g, n, 0.2, 0.45)
    p["glasses"] = _coin(g, n, 0.2)
    p["glass_r"] = _u(g, n, 0.15, 0.185)
    p["glass_t"] = _u(g, n, 0.010, 0.022)
    p["glass_col"] = _u(g, n, 0.02, 0.5)[:, None].repeat(1, 3) * torch.tensor([1.0, 0.95, 0.9])
    p["ear_s"] = _u(g, n, 0.9, 1.1)
    p["tex_off"] = torch.rand(n, 4, generator=g)
    return p


def sample_images(ident: dict[str, T], ids: T, g: torch.Generator, variant: str,
                  zoom_out: tuple[float, float], size: int) -> dict[str, T]:
    """Per-image pose, expression, light, background and camera noise; `ids` picks identity rows."""
    m = len(ids)
    p = {k: v[ids] for k, v in ident.items()}
    aligned = variant == "aligned"
    yaw, pitch, roll = (25, 12, 8) if aligned else (45, 20, 30)
    p["yaw"] = torch.deg2rad(_u(g, m, -yaw, yaw))
    p["pitch"] = torch.deg2rad(_u(g, m, -pitch, pitch))
    p["roll"] = torch.deg2rad(_u(g, m, -roll, roll))
    if zoom_out[0] < 1:
        raise ValueError(f"zoom_out must be >= 1, got {zoom_out}")
    zoom = _u(g, m, 1.0, 1.06) if aligned else _u(g, m, *zoom_out)
    p["scale"] = size * 0.39 / zoom * _u(g, m, 0.94, 1.06)  # pixels per face unit, < MAX_SCALE * size
    room = size * (0.03 if aligned else 0.5 * (1 - 0.9 / zoom.clamp(min=1)))
    p["tx"] = size / 2 - 0.5 + room * _u(g, m, -1, 1)
    p["ty"] = size * 0.47 - 0.5 + room * _u(g, m, -1, 1)
    p["open"] = _coin(g, m, 0.45) * _u(g, m, 0.02, 0.16)
    p["smile"] = _coin(g, m, 0.5) * _u(g, m, 0, 1)
    p["blink"] = torch.where(torch.rand(m, generator=g) < 0.06, _u(g, m, 0.1, 0.4), _u(g, m, 0.75, 1.05))
    p["gaze"] = torch.stack([_u(g, m, -0.45, 0.45), _u(g, m, -0.25, 0.25)], 1)
    p["brow_up"] = _u(g, m, -0.015, 0.03)
    az, el = _u(g, m, -1.1, 1.1), _u(g, m, -0.2, 0.9)
    p["light"] = torch.stack([torch.sin(az) * torch.cos(el), -torch.sin(el), torch.cos(az) * torch.cos(el)], 1)
    p["ambient"] = _u(g, m, 0.30, 0.55)
    p["tint"] = 1 + 0.1 * (torch.rand(m, 3, generator=g) - 0.5)
    p["bg"] = _natural_colours(g, m, 3)
    p["bg_off"] = torch.rand(m, 4, generator=g)
    p["bg_freq"] = _u(g, m, 1.5, 5.0)
    p["clutter"] = torch.rand(m, 5, 5, generator=g)  # x, y, w, h, angle
    p["clutter_rgb"] = _natural_colours(g, m, 5)
    p["cloth"] = _natural_colours(g, m, 1)[:, 0]
    p["blur"] = _u(g, m, 0, 1) ** 2
    p["noise"] = _u(g, m, 0, 0.03)
    p["tone"] = _u(g, m, -0.25, 0.25)
    p["contrast"] = _u(g, m, 0.85, 1.15)
    return p


def _natural_colours(g: torch.Generator, m: int, k: int) -> T:
    """Muted colours (walls, foliage, fabric): moderate saturation, any hue."""
    h = torch.rand(m, k, generator=g)
    s = 0.1 + 0.45 * torch.rand(m, k, generator=g) ** 1.5
    v = 0.15 + 0.8 * torch.rand(m, k, generator=g)
    rgb = (h[..., None] * 6 + torch.tensor([0.0, 4.0, 2.0])) % 6  # hsv -> rgb
    rgb = 1 - (torch.minimum(rgb, 4 - rgb).clamp(0, 1))
    return v[..., None] * (1 - s[..., None] * rgb)


# ---------------------------------------------------------------------------------- landmarks
def _b(x: T, nd: int) -> T:
    """Per-image scalars [M] -> [M, 1, ...] that broadcast over `nd` trailing dims."""
    return x.reshape(-1, *([1] * nd))


def eye_frame(p: dict[str, T], u: T, v: T, side: int, nd: int) -> tuple[T, T]:
    """(u, v) -> eye coordinates: x outward from the eye centre, y down, tilted; side -1 = image left."""
    cx, cy, t = _b(side * p["eye_x"], nd), _b(p["eye_v"], nd), _b(p["eye_tilt"], nd)
    x, y = (u - cx) * side, v - cy
    return x * torch.cos(t) + y * torch.sin(t), -x * torch.sin(t) + y * torch.cos(t)


def eye_lids(p: dict[str, T], x: T, nd: int) -> tuple[T, T]:
    """Upper and lower lid heights over eye x (in eye coordinates)."""
    w = _b(p["eye_w"], nd)
    s = (1 - (x / w) * (x / w)).clamp(min=0)
    s = s * (1.25 - 0.25 * s)  # a fuller lid curve than the parabola
    return -_b(p["eye_h"] * p["blink"], nd) * s, _b(p["eye_hl"] * (0.6 + 0.4 * p["blink"]), nd) * s


def mouth_curves(p: dict[str, T], t: T, nd: int) -> tuple[T, T, T, T]:
    """Outer-upper, inner-upper, inner-lower, outer-lower lip v over t in [-1, 1] (corner to corner)."""
    t2 = t * t
    s = 1 - t2
    mid = _b(p["mouth_v"], nd) - _b(p["smile"], nd) * (0.045 * t2 - 0.012)
    op = _b(p["open"], nd)
    cupid = 1 - 0.35 * (1 - t2 / 0.06).clamp(min=0) ** 2  # the dip of Cupid's bow
    iu = mid - 0.25 * op * s
    il = mid + 0.75 * op * s
    root = s.clamp(min=0).sqrt()
    ou = iu - _b(p["lip_up"], nd) * root * cupid
    ol = il + _b(p["lip_lo"], nd) * root
    return ou, iu, il, ol


def jaw_shape(p: dict[str, T], nd: int) -> tuple[T, T, T, T]:
    """Top (ear level) v, half-width, height and exponent of the superellipse jaw outline."""
    top = _b(p["eye_v"] + 0.06, nd)
    width = _b(p["head_a"] * 0.97, nd)
    height = _b(p["chin_v"] + 0.6 * p["open"], nd) - top
    return top, width, height, _b(p["jaw_p"], nd)


def canonical_landmarks(p: dict[str, T]) -> T:
    """68 points in 300-W order in the face frame (u, v): [M, 68, 2]."""
    m = len(p["yaw"])
    top, width, height, e = jaw_shape(p, 1)
    phi = torch.linspace(-math.pi / 2, math.pi / 2, 17)[None]
    jaw = torch.stack([width * torch.sign(torch.sin(phi)) * torch.sin(phi).abs() ** (2 / e),
                       top + height * torch.cos(phi).abs() ** (2 / e)], -1)
    pts = [jaw]
    s = torch.linspace(-1, 1, 5)[None]  # brows 17-21 and 22-26, each left to right in the image
    for side in (-1, 1):
        x = _b(side * (p["eye_x"] + 0.02), 1) + s * _b(p["brow_len"], 1)
        y = _b(p["eye_v"] - p["brow_dv"] - p["brow_up"], 1) - _b(p["brow_arch"], 1) * (1 - s ** 2)
        pts.append(torch.stack([x, y], -1))
    tip, ev = _b(p["tip_v"], 1), _b(p["eye_v"], 1)
    bridge = ev - 0.02 + (tip - ev + 0.02) * torch.linspace(0, 1, 4)[None]
    pts.append(torch.stack([torch.zeros_like(bridge), bridge], -1))             # 27-30
    nx = torch.tensor([-1.0, -0.5, 0, 0.5, 1.0])[None] * _b(p["nose_w"], 1) * 0.85
    ny = tip + 0.045 + torch.tensor([0.0, 0.012, 0.018, 0.012, 0.0])[None]
    pts.append(torch.stack([nx, ny], -1))                                       # 31-35
    for side in (-1, 1):  # eyes 36-41 and 42-47: left corner, upper lid, right corner, lower lid
        xi = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])[None] * _b(p["eye_w"], 1)
        up, lo = eye_lids(p, xi, 1)  # lids are symmetric in x; corners (x = +-w) sit at y = 0
        pts.append(_eye_to_face(p, side * xi, torch.cat([up[:, :3], lo[:, 3:]], 1), side))
    t_out = torch.tensor([-1.0, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1.0])[None].expand(m, 7)
    ou, _, _, ol = mouth_curves(p, t_out, 1)
    t_in = torch.tensor([-0.92, -0.4, 0, 0.4, 0.92])[None].expand(m, 5)
    _, iu, il, _ = mouth_curves(p, t_in, 1)
    mw = _b(p["mouth_w"], 1)
    pts.append(torch.stack([t_out * mw, ou], -1))                                 # 48-54
    back = [5, 4, 3, 2, 1]
    pts.append(torch.stack([t_out[:, back] * mw, ol[:, back]], -1))               # 55-59
    pts.append(torch.stack([t_in * mw, iu], -1))                                 # 60-64
    pts.append(torch.stack([t_in[:, [3, 2, 1]] * mw, il[:, [3, 2, 1]]], -1))     # 65-67
    return torch.cat(pts, 1)


def _eye_to_face(p: dict[str, T], x: T, y: T, side: int) -> T:
    """Inverse of eye_frame for points: [M, K] eye coordinates -> [M, K, 2] face (u, v)."""
    t = _b(p["eye_tilt"], 1)
    xr, yr = x * torch.cos(t) - y * torch.sin(t), x * torch.sin(t) + y * torch.cos(t)
    return torch.stack([_b(side * p["eye_x"], 1) + side * xr, _b(p["eye_v"], 1) + yr], -1)


MAFL_FROM_68 = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,))


def mafl_points(lm68: T, vis68: T) -> tuple[T, T]:
    """The 5 MAFL points (left eye centre, right eye centre, nose tip, mouth corners) from 68."""
    lm = torch.stack([lm68[..., list(i), :].mean(-2) for i in MAFL_FROM_68], -2)
    vis = torch.stack([vis68[..., list(i)].all(-1) for i in MAFL_FROM_68], -1)
    return lm, vis


# ---------------------------------------------------------------------------------- geometry
def sq(x: T) -> T:
    return x * x  # cheaper than ** 2 on CPU


def _rot(axis: int, a: T) -> T:
    """Rotation matrices [M, 3, 3] about x (0), y (1) or z (2)."""
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    rows = {0: [[o, z, z], [z, c, -s], [z, s, c]],
            1: [[c, z, s], [z, o, z], [-s, z, c]],
            2: [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def camera(p: dict[str, T]) -> T:
    """Face frame -> camera rotation [M, 3, 3]; image = scale * (R P)[:2] + (tx, ty)."""
    return _rot(2, p["roll"]) @ _rot(1, p["yaw"]) @ _rot(0, p["pitch"])


def scene(p: dict[str, T]) -> dict[str, tuple[T, T, T]]:
    """The ellipsoids: name -> (centre [M, 3], radii [M, 3], local->face rotation [M, 3, 3])."""
    m, z, one = len(p["yaw"]), torch.zeros(len(p["yaw"])), torch.ones(len(p["yaw"]))
    a, b, c = p["head_a"], p["head_b"], p["head_c"]
    eye = torch.eye(3).expand(m, 3, 3)
    st = lambda *xs: torch.stack(xs, -1)  # noqa: E731
    head_z = lambda u, v: c * (1 - sq(u / a) - sq(v / b)).clamp(min=0).sqrt()  # noqa: E731
    ev, tip, vol = p["eye_v"], p["tip_v"], p["hair_vol"]
    bridge_len = (tip - ev) / 2 + 0.03
    out = {
        "body": (st(z, b + 0.95, -0.45 * one), st(1.6 * one, 0.6 * one, 0.6 * one), eye),
        "neck": (st(z, 0.85 * b, -0.22 * one), st(0.48 * a, 0.55 * one, 0.36 * one), eye),
        "head": (st(z, z, z), st(a, b, c), eye),
        # the bridge leans forward (its bottom towards the viewer); the tip is a flattened ball
        "bridge": (st(z, ev + bridge_len, head_z(z, ev + bridge_len) - 0.06),
                   st(0.045 * one, bridge_len, 0.06 + 0.35 * p["nose_out"]), _rot(0, 0.42 * one)),
        "tip": (st(z, tip - 0.02, head_z(z, tip) + p["nose_out"] - 0.6 * p["nose_w"]),
                st(p["nose_w"] * 0.75, p["nose_w"] * 0.75, p["nose_w"] * 0.6), eye),
        "hair": (st(z, -0.05 - 0.06 * vol + 0.4 * (p["side_v"] - 0.2).clamp(min=0), -0.07 * one),
                 st(a * vol, b * vol + 0.4 * (p["side_v"] - 0.2).clamp(min=0), c * vol), eye),
    }
    for name, side in (("ear_l", -1), ("ear_r", 1)):
        out[name] = (st(side * a * 0.95, ev + 0.12, -0.08 * one), torch.tensor([0.06, 0.15, 0.1]) * p["ear_s"][:, None],
                     _rot(1, side * 0.5 * one))
    return out


def _dot(xs: list[T], ws: list[T]) -> T:
    """sum_i xs[i] * ws[i] with per-image weights ws[i] [M, 1, ...], fused (one pass per term)."""
    out = xs[0] * ws[0]
    for x, w in zip(xs[1:], ws[1:]):
        out.addcmul_(x, w)
    return out


def cast(obj: tuple[T, T, T], R: T, xs: T, ys: T, nd: int) -> dict[str, T]:
    """Orthographic rays along camera z through camera-plane points (xs, ys) (face units, already
    un-shifted and un-scaled) against one ellipsoid. Returns depth t (larger = nearer), rho (distance
    of the ray from the centre in radii: < 1 hits) and the hit point on the unit sphere (ns)."""
    centre, radii, q = obj
    rq = R @ q                                                       # local -> camera  [M, 3, 3]
    o0 = -(q.transpose(1, 2) @ centre[..., None])[..., 0] / radii    # ray origin at (0, 0), local
    a1, a2, d = rq[:, 0] / radii, rq[:, 1] / radii, rq[:, 2] / radii  # per unit x, per unit y, dir
    # on an image grid xs is [M, 1, W] and ys [M, H, 1]: add the small terms first
    o = [(_b(a1[:, i], nd) * xs + _b(o0[:, i], nd)) + _b(a2[:, i], nd) * ys for i in range(3)]
    dd = [_b(d[:, i], nd) for i in range(3)]
    inv_a = _b(1 / (d * d).sum(1), nd)
    half_b = _dot(o, dd)
    rho2 = _dot(o, o) - half_b * half_b * inv_a
    t = ((1 - rho2).clamp_(min=0).div_(inv_a).sqrt_() - half_b).mul_(inv_a)
    ns = [torch.addcmul(o[i], t, dd[i]) for i in range(3)]
    return {"t": t, "rho": rho2.clamp_(min=0).sqrt_(), "ns": ns, "obj": obj, "rq": rq}


def to_face(hit: dict[str, T], nd: int) -> list[T]:
    """Hit points back in the face frame: [X, Y]."""
    centre, radii, q = hit["obj"]
    qr = q * radii[:, None, :]
    return [_dot(hit["ns"], [_b(qr[:, i, j], nd) for j in range(3)]).add_(_b(centre[:, i], nd))
            for i in range(2)]


def shade(hit: dict[str, T], p: dict[str, T], nd: int, spec: float = 0.0) -> T:
    """Wrapped Lambert (+ optional Blinn specular) from the image's light; [M, ...]. The unit-sphere
    hit point stands in for the normal (exact for a sphere, close enough for these ellipsoids)."""
    n = hit["ns"]
    to_local = hit["rq"].transpose(1, 2)
    light = (to_local @ p["light"][..., None])[..., 0]
    amb = _b(p["ambient"], nd)
    out = _dot(n, [_b(light[:, i], nd) for i in range(3)]).add_(0.3).clamp_(min=0).mul_((1 - amb) / 1.3).add_(amb)
    if spec:
        h = F.normalize(p["light"] + torch.tensor([0.0, 0.0, 1.0]), dim=1)
        hl = (to_local @ h[..., None])[..., 0]
        x = _dot(n, [_b(hl[:, i], nd) for i in range(3)]).clamp_(0, 1)
        x = x * x
        x = x * x
        x = x * x                                      # (n.h)^8
        out.addcmul_(x * x, x, value=spec)             # + spec (n.h)^24
    return out


def edge(d: T, px: T) -> T:
    """Anti-aliased coverage from a signed distance d (face units, > 0 inside) and pixels per unit."""
    return (0.5 + d * px).clamp(0, 1)


def project(p: dict[str, T], uv: T) -> tuple[T, T]:
    """Lift face-frame (u, v) [M, K, 2] onto the front surface and project: pixels [M, K, 2] and
    visibility [M, K] (facing the camera and not hidden behind the nose)."""
    objs = scene(p)
    m = len(p["yaw"])
    eye = torch.eye(3).expand(m, 3, 3)
    u, v = uv[..., 0], uv[..., 1]
    front = [cast(objs[k], eye, u, v, 1) for k in ("head", "bridge", "tip")]  # along face z
    # the head's t is its surface, or its rim where a point lies just outside it (jaw corners)
    z = torch.stack([front[0]["t"]] + [torch.where(h["rho"] < 1, h["t"], front[0]["t"]) for h in front[1:]]).amax(0)
    xyz = torch.stack([u, v, z], -1)
    R = camera(p)
    cam = xyz @ R.transpose(1, 2)
    px = _b(p["scale"], 1)[..., None] * cam[..., :2] + torch.stack([p["tx"], p["ty"]], -1)[:, None]
    # visible: nothing nearer along the camera ray, and the head surface faces the camera there
    hits = [cast(objs[k], R, cam[..., 0], cam[..., 1], 1) for k in ("head", "bridge", "tip")]
    nearest = torch.stack([torch.where(h["rho"] < 1, h["t"], torch.full_like(u, -9)) for h in hits]).amax(0)
    visible = nearest <= cam[..., 2] + 0.02
    return px, visible


# ---------------------------------------------------------------------------------- textures
@lru_cache(maxsize=1)
def noise_bank() -> T:
    """Tileable noise [4, 256, 256] from a fixed seed: 0 cloudy fBm, 1 fine fBm, 2-3 very fine."""
    g = torch.Generator().manual_seed(1234)
    white = torch.randn(4, 256, 256, generator=g)
    f = torch.fft.fftfreq(256)
    r = (sq(f[:, None]) + sq(f[None])).sqrt().clamp(min=1 / 256)
    beta = torch.tensor([1.9, 1.2, 0.6, 0.6])[:, None, None]
    x = torch.fft.ifft2(torch.fft.fft2(white) * r ** -beta).real
    x = (x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)
    return (0.5 + 0.2 * x).clamp(0, 1)


def sample(u: T, v: T, channels: list[int]) -> T:
    """Noise at tile coordinates (2 = one tile, mirrored beyond it, so seamless): -> [M, C, H, W]."""
    m = u.shape[0]
    grid = torch.stack(torch.broadcast_tensors(u, v), -1)
    out = F.grid_sample(noise_bank()[channels][None], rearrange(grid, "m h w c -> 1 (m h) w c"),
                        mode="bilinear", padding_mode="reflection", align_corners=False)
    return rearrange(out, "1 c (m h) w -> m c h w", m=m)


def _c(x: T) -> T:
    """Per-image colours [M, 3] -> [M, 3, 1, 1]."""
    return x[:, :, None, None]


def _lerp(col: T, new: T, alpha: T) -> T:
    return torch.lerp(col, new.expand_as(col), alpha[:, None])


def paint_eyes(p: dict[str, T], u: T, v: T, px: T, col: T) -> T:
    """Both eyes in one pass: the eye frame of each half of the face is mirrored onto |u|."""
    side = torch.sign(u)
    x, y = eye_frame(p, u.abs(), v, 1, 2)
    up, lo = eye_lids(p, x, 2)
    w, h, ri = _b(p["eye_w"], 2), _b(p["eye_h"], 2), _b(p["iris_r"], 2)
    socket = (1 - sq(x / (1.4 * w)) - sq((y + 0.2 * h) / (2.6 * h))).clamp(min=0)  # within 0.21 of the eye
    col = col * (1 - 0.14 * socket[:, None])
    inside = torch.minimum(torch.minimum(y - up, lo - y), w - x.abs())
    gx = _b(p["gaze"][:, 0], 2) * side * (w - ri)
    gy = _b(p["gaze"][:, 1], 2) * h * 0.5
    r = (sq(x - gx) + sq(y - gy)).sqrt()
    sclera = torch.tensor([0.93, 0.90, 0.86])[None, :, None, None] * (1 - 0.3 * (x / w) ** 4)[:, None]
    iris = _c(p["iris"]) * (1.25 - 0.7 * (r / ri).clamp(0, 1) ** 3)[:, None]
    eye = _lerp(sclera, iris, edge(ri - r, px))
    eye = eye * (1 - edge(0.42 * ri - r, px))[:, None]  # pupil
    glint = (sq(x - gx + side * 0.3 * ri) + sq(y - gy + 0.35 * ri)).sqrt()
    eye = eye + 0.8 * edge(0.13 * ri - glint, px)[:, None]
    eye = eye * (0.55 + 0.45 * ((y - up) / (0.5 * h)).clamp(0, 1))[:, None]  # lid shadow
    col = _lerp(col, eye, edge(inside, px))
    lash = torch.minimum(0.006 + 0.006 * (x / w).clamp(0, 1) - (y - up).abs(), w * 1.08 - x.abs())
    crease = torch.minimum(0.004 - (y - 1.9 * up + 0.01).abs(), w - x.abs())
    dark = 1 - 0.9 * edge(lash, px) - 0.15 * edge(crease, px)
    return col * dark.clamp(min=0.08)[:, None]


def paint_brows(p: dict[str, T], u: T, v: T, px: T, col: T) -> T:
    off = p["tex_off"]
    strands = sample(u * 6 + _b(off[:, 2], 2), v * 0.8 + _b(off[:, 3], 2), [3])[:, 0]
    s = (u.abs() - _b(p["eye_x"] + 0.02, 2)) / _b(p["brow_len"], 2)   # -1 inner end, +1 outer end
    yc = _b(p["eye_v"] - p["brow_dv"] - p["brow_up"], 2) - _b(p["brow_arch"], 2) * (1 - sq(s))
    thick = _b(p["brow_t"], 2) * (1 - 0.45 * s.clamp(min=0))
    d = torch.minimum(thick / 2 - (v - yc).abs(), (1 - s.abs()) * _b(p["brow_len"], 2))
    return _lerp(col, _c(p["hair"]) * 0.7, edge(d, px) * (0.55 + 0.45 * strands))


def paint_mouth(p: dict[str, T], u: T, v: T, px: T, col: T) -> T:
    t = u / _b(p["mouth_w"], 2)
    ou, iu, il, ol = mouth_curves(p, t.clamp(-1, 1), 2)
    side = (1 - t.abs()) * _b(p["mouth_w"], 2)
    soft = px * 0.6  # lips have soft borders
    lip = _c(p["lip"])
    col = _lerp(col, lip * 0.82, edge(torch.minimum(torch.minimum(v - ou, iu - v), side), soft))
    shine = 1 + 0.25 * (1 - sq((v - (il + ol) / 2) / 0.015) - sq(t / 0.6)).clamp(min=0)
    col = _lerp(col, lip * shine[:, None], edge(torch.minimum(torch.minimum(v - il, ol - v), side), soft))
    inner = torch.minimum(torch.minimum(v - iu, il - v), side)
    teeth = torch.tensor([0.92, 0.88, 0.80])[None, :, None, None] * (
        0.75 + 0.25 * torch.cos(t * 9 * math.pi).abs() ** 0.3)[:, None] * (1 - 0.5 * t.abs())[:, None]
    mouth = _lerp(torch.tensor([0.16, 0.05, 0.05])[None, :, None, None].expand_as(col), teeth,
                  edge(0.032 - (v - iu), px))
    col = _lerp(col, mouth, edge(inner, px))
    seam = torch.minimum(0.005 - (v - (iu + il) / 2).abs(), side)
    return _lerp(col, lip * 0.4, 0.8 * edge(seam, px))


def paint_glasses(p: dict[str, T], u: T, v: T, px: T, col: T) -> T:
    R, th = _b(p["glass_r"], 2), _b(p["glass_t"], 2)
    ex, cy = _b(p["eye_x"], 2), _b(p["eye_v"], 2) + 0.01
    dx, dy = u.abs() - ex, v - cy
    rho = ((dx / R) ** 4 + (dy / (0.78 * R)) ** 4) ** 0.25
    col = col * (1 - 0.12 * edge((1 - rho) * R, px))[:, None]  # tinted lens
    bridge = torch.minimum(th / 2 - (dy + 0.05).abs(), ex - R * 0.95 - u.abs())
    temple = torch.minimum(th / 2 - (dy + 0.03).abs(), torch.minimum(dx - R * 0.98, R + 0.25 - dx))
    frame = torch.maximum(th / 2 - (rho - 1).abs() * R, torch.maximum(bridge, temple))
    return _lerp(col, _c(p["glass_col"]), edge(frame, px))


def paint_nose(p: dict[str, T], u: T, v: T, px: T, col: T) -> T:
    tip = _b(p["tip_v"], 2)
    d = sq((u.abs() - 0.42 * _b(p["nose_w"], 2)) / 0.026) + sq((v - tip - 0.04) / 0.012)
    under = (1 - sq(u / 0.14) - sq((v - tip - 0.06) / 0.03)).clamp(min=0)  # shadow under the nose
    return col * (1 - 0.7 * edge((1 - d) * 0.012, px) - 0.15 * under)[:, None]  # and nostrils


def paint_beard(p: dict[str, T], u: T, v: T, px: T, col: T) -> T:
    off = p["tex_off"]
    n = sample(u * 6 + _b(off[:, 2], 2), v * 0.8 + _b(off[:, 3], 2), [1, 3])
    d = u.abs()  # the top edge: moustache, down over the cheeks, back up along the jaw to the ears
    top = 0.07 + 0.22 * (1 - sq((d - 0.36) / 0.22)).clamp(min=0) - 0.25 * ((d - 0.58) / 0.12).clamp(0, 1)
    start = v - _b(p["tip_v"], 2) - top - 0.04 * n[:, 0]
    beard = _b(p["beard"], 2) * (start / 0.05).clamp(0, 1) * (0.3 + 0.7 * n[:, 1])
    stubble = _b(p["stubble"], 2) * ((start - 0.02) / 0.04).clamp(0, 1) * n[:, 1]
    return _lerp(col, _c(p["hair"]) * 0.8, (beard + stubble).clamp(0, 1))


def paint_at(fn, p: dict[str, T], R: T, cu: T, cv: T, half: float, face: dict[str, T], col: T,
             on: T | None = None) -> None:
    """Run painter `fn` (in place) only in a window around face point (cu, cv), for the images
    where `on` holds: features are small, so this saves most of the per-pixel work."""
    idx = torch.arange(len(R)) if on is None else on.nonzero()[:, 0]
    if len(idx) == 0:
        return
    q = p if on is None else {k: x[idx] for k, x in p.items()}
    cu, cv = cu[idx], cv[idx]
    z = q["head_c"] * (1 - sq(cu / q["head_a"]) - sq(cv / q["head_b"])).clamp(min=0).sqrt()
    w = window(q, R[idx], torch.stack([cu, cv, z], 1), half, col.shape[-1])
    w["mi"] = idx[:, None, None]
    put(col, w, fn(q, take(face["u"], w), take(face["v"], w), _b(q["scale"], 2), take(col, w)))


def face_albedo(p: dict[str, T], R: T, face: dict[str, T]) -> T:
    """Skin, features and accessories at face coordinates (u, v): [M, 3, H, W]."""
    u, v, off = face["u"], face["v"], p["tex_off"]
    n = sample(u * 3 + _b(off[:, 0], 2), v * 3 + _b(off[:, 1], 2), [0, 2])
    col = _c(p["skin"]) * (0.92 + 0.16 * n[:, :1] + 0.08 * (n[:, 1:] - 0.5))
    cheek = (1 - (sq(u.abs() - 0.34) + sq(v - 0.28)) / 0.03).clamp(min=0)
    col = col * (1 - cheek[:, None] * torch.tensor([0.0, 0.07, 0.06])[None, :, None, None])
    paint_at(paint_beard, p, R, 0 * p["tip_v"], p["chin_v"] * 0.7, 1.0, face, col,
             on=(p["beard"] > 0) | (p["stubble"] > 0))
    ex, ev = p["eye_x"], p["eye_v"]
    for side in (-1, 1):
        paint_at(paint_brows, p, R, side * (ex + 0.02), ev - p["brow_dv"] - 0.03, 0.25, face, col)
        paint_at(paint_eyes, p, R, side * ex, ev, 0.22, face, col)
    paint_at(paint_nose, p, R, 0 * ev, p["tip_v"] + 0.05, 0.17, face, col)
    paint_at(paint_mouth, p, R, 0 * ev, p["mouth_v"] + 0.4 * p["open"], 0.3, face, col)
    paint_at(paint_glasses, p, R, 0 * ev, ev, 0.8, face, col, on=p["glasses"] > 0)
    return col


def hair_alpha(p: dict[str, T], hit: dict[str, T], X: T, Y: T) -> T:
    """Where the hair shell carries hair: above the hairline in front, down to side_v at the sides."""
    front = hit["ns"][2]
    fringe = _b(p["fringe"], 2) * (1 - sq(X / 0.4)).clamp(min=0)
    limit_front = _b(p["hairline"], 2) + fringe
    limit = torch.lerp(_b(p["side_v"], 2), limit_front, ((front - 0.25) / 0.3).clamp(0, 1))
    return limit - Y


def background(p: dict[str, T], size: int) -> T:
    """Indoor/outdoor-like clutter over a cloudy gradient: [M, 3, S, S]."""
    m, s = len(p["yaw"]), size
    y, x = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    x, y = x.expand(m, s, s), y.expand(m, s, s)
    c = p["bg"]
    f, off = _b(p["bg_freq"], 2), p["bg_off"]
    n = sample(x * f / 2 + _b(off[:, 0], 2), y * f / 2 + _b(off[:, 1], 2), [0, 1])
    grad = (x * _b(off[:, 2] - 0.5, 2) + y * _b(off[:, 3] - 0.5, 2) + 0.5).clamp(0, 1)
    col = _lerp(_c(c[:, 0]).expand(m, 3, s, s), _c(c[:, 1]), grad)
    col = _lerp(col, _c(c[:, 2]), ((n[:, 0] - 0.45) * 6).clamp(0, 1))
    for k in range(p["clutter"].shape[1]):
        q = p["clutter"][:, k]
        ang = _b(q[:, 4] * math.pi, 2)
        dx, dy = x - _b(q[:, 0], 2), y - _b(q[:, 1], 2)
        lx, ly = dx * torch.cos(ang) + dy * torch.sin(ang), -dx * torch.sin(ang) + dy * torch.cos(ang)
        w, h = _b(0.05 + 0.35 * q[:, 2], 2), _b(0.05 + 0.35 * q[:, 3], 2)
        if k < 3:  # ellipses, then rectangles
            d = 1 - (sq(lx / w) + sq(ly / h)).sqrt()
        else:
            d = torch.minimum(w - lx.abs(), h - ly.abs()) / torch.minimum(w, h)
        shade = (0.8 + 0.4 * (ly / h + 0.5).clamp(0, 1))[:, None]
        col = _lerp(col, _c(p["clutter_rgb"][:, k]) * shade, (d * 12).clamp(0, 1))
    return col * (0.85 + 0.3 * n[:, 1:])


# ---------------------------------------------------------------------------------- render
@dataclass
class Canvas:
    """A rectangle of the image (the same for the whole batch) that a part is rendered in."""
    y0: int
    y1: int
    x0: int
    x1: int

    def of(self, x: T) -> T:
        return x[..., self.y0:self.y1, self.x0:self.x1]

    def grid(self, p: dict[str, T]) -> tuple[T, T]:
        """Camera-plane coordinates (face units) of the pixel centres: [M, 1, w] and [M, h, 1]."""
        x = torch.arange(self.x0, self.x1, dtype=torch.float32)[None, None, :]
        y = torch.arange(self.y0, self.y1, dtype=torch.float32)[None, :, None]
        return (x - _b(p["tx"], 2)) / _b(p["scale"], 2), (y - _b(p["ty"], 2)) / _b(p["scale"], 2)


def canvas(p: dict[str, T], R: T, objs: list[tuple[T, T, T]], size: int) -> Canvas:
    """The batch's union of the exact projected bounding boxes of some ellipsoids (+ 2 px of edge)."""
    lo, hi = torch.full((2,), float(size)), torch.full((2,), 0.0)
    for centre, radii, q in objs:
        rq = R @ q
        half = ((rq[:, :2] * radii[:, None]) ** 2).sum(-1).sqrt()           # [M, 2] face units
        c = (R @ centre[..., None])[:, :2, 0]
        shift = torch.stack([p["tx"], p["ty"]], 1)
        lo = torch.minimum(lo, ((c - half) * p["scale"][:, None] + shift).amin(0))
        hi = torch.maximum(hi, ((c + half) * p["scale"][:, None] + shift).amax(0))
    (x0, y0), (x1, y1) = (lo - 2).floor().clamp(0, size).int().tolist(), (hi + 3).ceil().clamp(0, size).int().tolist()
    return Canvas(y0, max(y1, y0 + 1), x0, max(x1, x0 + 1))


def window(p: dict[str, T], R: T, centre: T, half: float, size: int) -> dict[str, T]:
    """A square of pixels per image around a small part's projected centre, large enough for a
    ball of radius `half` (face units) at the largest scale any image can have (so the square, and
    hence the picture, does not depend on the batch), moved inside the size x size image."""
    c = _b(p["scale"], 1) * (centre[:, None] @ R.transpose(1, 2))[:, 0, :2] + torch.stack([p["tx"], p["ty"]], 1)
    k = min(size, math.ceil(2 * half * MAX_SCALE * size) + 3)
    x0 = (c[:, 0] - k / 2).round().clamp(0, size - k).long()
    y0 = (c[:, 1] - k / 2).round().clamp(0, size - k).long()
    ar = torch.arange(k)
    ix, iy = _b(x0, 2) + ar[None, None], _b(y0, 2) + ar[None, :, None]   # [M, 1, K], [M, K, 1]
    return {"mi": torch.arange(len(c))[:, None, None], "ix": ix, "iy": iy,
            "xs": (ix - _b(p["tx"], 2)) / _b(p["scale"], 2), "ys": (iy - _b(p["ty"], 2)) / _b(p["scale"], 2)}


def take(x: T, w: dict[str, T]) -> T:
    if x.dim() == 3:
        return x[w["mi"], w["iy"], w["ix"]]
    return rearrange(x[w["mi"], :, w["iy"], w["ix"]], "m h w c -> m c h w")


def put(x: T, w: dict[str, T], val: T) -> None:
    if x.dim() == 3:
        x[w["mi"], w["iy"], w["ix"]] = val
    else:
        x[w["mi"], :, w["iy"], w["ix"]] = rearrange(val, "m c h w -> m h w c")


def paint_ears(p: dict[str, T], R: T, objs: dict, col: T) -> T:
    """Ears over the neck (in place); returns their depth (-9 where none) for the head's z-test."""
    size = col.shape[-1]
    ear_t = torch.full((len(R), size, size), -9.0)
    for k in ("ear_l", "ear_r"):
        w = window(p, R, objs[k][0], 0.2, size)
        hit = cast(objs[k], R, w["xs"], w["ys"], 2)
        cov = edge((1 - hit["rho"]) * 0.1, _b(p["scale"], 2))
        inner = (1 - (sq(hit["ns"][1]) + sq(hit["ns"][2])) / 0.6).clamp(min=0)
        c = _c(p["skin"]) * (1 - 0.3 * inner[:, None]) * shade(hit, p, 2)[:, None] * _c(p["tint"])
        put(col, w, _lerp(take(col, w), c, cov))
        put(ear_t, w, torch.where(cov > 0.5, torch.maximum(take(ear_t, w), hit["t"]), take(ear_t, w)))
    return ear_t


def add_nose(p: dict[str, T], R: T, objs: dict, face: dict[str, T]) -> None:
    """Nose bridge and tip win over the head where they stand out of it (in place, in a window)."""
    w = window(p, R, (objs["bridge"][0] + objs["tip"][0]) / 2, 0.36, face["u"].shape[-1])
    local = {k: take(x, w) for k, x in face.items()}
    px = _b(p["scale"], 2)
    for k in ("bridge", "tip"):
        hit = cast(objs[k], R, w["xs"], w["ys"], 2)
        Xn = to_face(hit, 2)
        a = edge((1 - hit["rho"]) * 0.05, px) * edge(hit["t"] - local["t"], px) * (hit["t"] >= local["ear_t"])
        local["u"], local["v"] = torch.lerp(local["u"], Xn[0], a), torch.lerp(local["v"], Xn[1], a)
        local["shade"] = torch.lerp(local["shade"], shade(hit, p, 2, spec=0.15), a)
        local["alpha"] = torch.maximum(local["alpha"], a)
    for k in ("u", "v", "shade", "alpha"):
        put(face[k], w, local[k])


def paint_head(p: dict[str, T], R: T, objs: dict, col: T) -> None:
    """Ears, head and nose with their face texture, in place."""
    cv = Canvas(0, col.shape[-2], 0, col.shape[-1])  # the whole image: windows must not depend on the batch
    (xs, ys), px = cv.grid(p), _b(p["scale"], 2)
    ear_t = paint_ears(p, R, objs, col)
    head = cast(objs["head"], R, xs, ys, 2)
    X = to_face(head, 2)
    top, width, height, e = jaw_shape(p, 2)
    below = (X[1] - top).clamp(min=0) / height
    jaw = 1 - ((X[0].abs() / width) ** e + below ** e) ** (1 / e)
    alpha = edge((1 - head["rho"]) * 0.75, px) * edge(jaw * torch.minimum(width, height), px) * (head["t"] >= ear_t)
    face = {"u": X[0], "v": X[1], "shade": shade(head, p, 2, spec=0.12), "alpha": alpha,
            "t": head["t"], "ear_t": ear_t}
    add_nose(p, R, objs, face)
    albedo = face_albedo(p, R, face)
    col.lerp_(albedo * face["shade"][:, None] * _c(p["tint"]), face["alpha"][:, None])


def paint_hair(p: dict[str, T], R: T, objs: dict, col: T) -> None:
    cv = canvas(p, R, [objs["hair"]], col.shape[-1])
    hair = cast(objs["hair"], R, *cv.grid(p), 2)
    X = to_face(hair, 2)
    px = _b(p["scale"], 2)
    strands = sample(torch.atan2(hair["ns"][0], hair["ns"][2]) * 1.8 + _b(p["tex_off"][:, 2], 2),
                     hair["ns"][1] * 0.24 + _b(p["tex_off"][:, 3], 2), [2, 3])
    cover = edge((1 - hair["rho"]) * 0.8, px)
    alpha = cover * edge(hair_alpha(p, hair, X[0], X[1]) - 0.08 * (strands[:, 1] - 0.5), px)
    colour = _c(p["hair"]) * (0.55 + 0.9 * strands[:, :1]) * shade(hair, p, 2)[:, None]
    cv.of(col).lerp_(colour * _c(p["tint"]), alpha[:, None])


def paint_body(p: dict[str, T], R: T, objs: dict, col: T) -> None:
    """Shoulders (cloth) and neck, in place, on their canvas."""
    cv = canvas(p, R, [objs["body"], objs["neck"]], col.shape[-1])
    (xs, ys), px, sub = cv.grid(p), _b(p["scale"], 2), cv.of(col)
    body, neck = cast(objs["body"], R, xs, ys, 2), cast(objs["neck"], R, xs, ys, 2)
    cloth = _c(p["cloth"]) * (0.8 + 0.4 * sample(xs * 4, ys * 4, [1]))
    sub = _lerp(sub, cloth * shade(body, p, 2)[:, None], edge((1 - body["rho"]) * 0.6, px))
    sub = _lerp(sub, _c(p["skin"]) * 0.85 * shade(neck, p, 2)[:, None], edge((1 - neck["rho"]) * 0.3, px))
    cv.of(col)[:] = sub


def backdrop(p: dict[str, T], R: T, objs: dict, size: int) -> T:
    """Background, shoulders and neck: smooth, so drawn at half size (a half-size camera) and
    upsampled, which also gives the soft focus of a portrait's background."""
    half = {**p, "tx": (p["tx"] - 0.5) / 2, "ty": (p["ty"] - 0.5) / 2, "scale": p["scale"] / 2}
    col = background(p, size // 2)
    paint_body(half, R, objs, col)
    return F.interpolate(col, size=(size, size), mode="bilinear", align_corners=False)


def render(p: dict[str, T], size: int) -> T:
    """Images [M, 3, S, S] in [0, 1] for the parameters of sample_images."""
    R, objs = camera(p), scene(p)
    col = backdrop(p, R, objs, size)
    paint_head(p, R, objs, col)
    paint_hair(p, R, objs, col)
    return finish(p, col)


def box3(x: T) -> T:
    """3x3 box blur with replicated borders, by in-place shifted adds (4x faster here than a
    stride-1 avg_pool2d, which runs at ~20 ns a pixel on this CPU)."""
    h = x.clone()
    h[..., 1:-1] += x[..., :-2]
    h[..., 1:-1] += x[..., 2:]
    h[..., 0] += x[..., 0] + x[..., 1]
    h[..., -1] += x[..., -1] + x[..., -2]
    v = h.clone()
    v[..., 1:-1, :] += h[..., :-2, :]
    v[..., 1:-1, :] += h[..., 2:, :]
    v[..., 0, :] += h[..., 0, :] + h[..., 1, :]
    v[..., -1, :] += h[..., -1, :] + h[..., -2, :]
    return v / 9


def finish(p: dict[str, T], col: T) -> T:
    """Camera: blur, contrast, tone curve, sensor noise (from the fixed bank, so images do not depend
    on the batch they were drawn in)."""
    s = col.shape[-1]
    col = torch.lerp(col, box3(col), _b(p["blur"], 3))
    c, k = _b(p["contrast"], 3), _b(p["tone"], 3)
    col = torch.addcmul(0.5 * (1 - c), col, c).clamp_(0, 1)
    idx = (torch.arange(s)[None] + (p["bg_off"][:, :1] * 256).long()) % 256
    grain = (noise_bank()[2, idx[:, :, None], idx[:, None, :]] - 0.5) * (5 * _b(p["noise"], 2))  # [M, S, S]
    col = col * torch.addcmul(1 + k, col, -k)  # the tone curve c + k c (1 - c)
    return col.add_(grain[:, None]).clamp_(0, 1)
