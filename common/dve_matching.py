"""DVE's landmark-matching protocol (the LEAD paper's Table 1), as its test_matching.py runs it, and
ContrastLandmark's reading of it. References: jamt9000/DVE@2085144 (test_matching.py, utils/tps.py) and
cvl-umass/contrast-landmark@6162dba (train_feature_projector.py).

    result = dve_matching(extract, cache, PROTOCOLS["dve"])      # cache: the split at the protocol's resize

- Pairs: the split's images in order, taken two by two, (0, 1), (2, 3), ...; the last one of an odd count is left
  out (test_matching.py lines 158-162: batch_size=2, shuffle=False, drop_last=True), whatever their identities.
- Views: each image, resized to `resize`, is warped twice by random thin-plate splines drawn from torch's generator
  seeded 0 (test_matching.py line 194), in DVE's order (per image: g1, then g2): view 2 = I o g1, view 1 = I o g1
  o g2 (tps.py lines 93-162, its "reverse the order"), each cut by the protocol's margin. Warps (test_matching.py
  lines 132-141): half of DVE's training strength, the TPS weights of a 10x10 control lattice N(0, 0.005^2) for a
  random half, N(0, 0.0005^2) for the rest; translation sd 0.05, scale sd 0.05, rotation sd 2.5 degrees
  (`draw_warp`, tps.py lines 50-64). Each landmark moves to the pixel whose sampling position is nearest to it
  (tps.py lines 164-171, a KD-tree there, an arg-min here).
- Same identity: image 2k's view-1 landmarks matched into its own view 2; different identity: into image 2k+1's
  view 2, whose own landmark of the same index is the truth (test_matching.py lines 213-229, 300-324).
- Match, `dve`: the source descriptor at the feature cell round(point / stride), the raw dot product with every cell
  of the target map, the arg-max cell times the stride (find_descriptor, lines 66-77; normalisation is off, lines
  253-260). `cl`: ContrastLandmark's: both maps upsampled bilinearly to the input size and L2-normalised group by
  group (a hypercolumn's layers; validate(), lines 556-575), the descriptor at the rounded pixel, the arg-max pixel.
- Error: the Euclidean distance in pixels of a 70 x 70 frame, averaged over every landmark of every pair: DVE
  scales by 70 / crop (compute_pixel_err, lines 39-63), ContrastLandmark by 69 / (crop - 1) (its lines 653-664).
Differences that remain: landmarks follow this repository's pixel-centre convention ((p + 0.5) x scale - 0.5, where
DVE scales 0-based p; < 0.2 px at 150 -> 100), the images are resized once by the tensor cache (PIL bilinear,
antialiased, as torchvision's Resize of a PIL image), and torch's generator draws what the torch of 2019 drew only
if its normal sampler has not changed since.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .metrics import match
from .protocols import Protocol

WARP = {"warpsd_all": 0.001 * 0.5, "warpsd_subset": 0.01 * 0.5, "transsd": 0.1 * 0.5, "scalesd": 0.1 * 0.5,
        "rotsd": 5 * 0.5}                     # test_matching.py lines 132-141: half of tps.Warper's defaults
CONTROL = 10                                  # a 10 x 10 lattice of control points (tps.py line 83)
FRAME = 70                                    # errors in pixels of a 70 x 70 frame


def lattice(h: int, w: int) -> torch.Tensor:
    """Points (x, y) of an h x w lattice spanning [-1, 1], row by row: [h * w, 2] (tps_grid)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def design(side: int) -> torch.Tensor:
    """[U(pixel, control) | 1 | x y] for every pixel of a side x side image: [side^2, CONTROL^2 + 3], with the
    kernel U = d^2 log(d^2 + 1e-5) (tps_U)."""
    pixels, ctrl = lattice(side, side), lattice(CONTROL, CONTROL)
    d2 = ((pixels[:, None] - ctrl[None]) ** 2).sum(-1)
    return torch.cat([d2 * torch.log(d2 + 1e-5), torch.ones(len(pixels), 1), pixels], 1)


def draw_warp(g: torch.Generator) -> torch.Tensor:
    """One warp's weights [CONTROL^2 + 3, 2], drawn as random_tps_weights draws them: kernel weights, then rotation,
    scale, translation x and y, the affine part in rows [tx ty; sc cos, -sc sin; sc sin, sc cos]."""
    w = torch.randn(CONTROL ** 2, 2, generator=g) * WARP["warpsd_all"]
    subset = torch.rand(w.shape, generator=g) > 0.5
    w[subset] = torch.randn(int(subset.sum()), generator=g) * WARP["warpsd_subset"]
    rot = torch.randn([], generator=g) * WARP["rotsd"] * math.pi / 180
    sc = 1.0 + torch.randn([], generator=g) * WARP["scalesd"]
    tx, ty = (torch.randn([], generator=g) * WARP["transsd"] for _ in range(2))
    cos, sin = sc * torch.cos(rot), sc * torch.sin(rot)
    aff = torch.tensor([[tx, ty], [cos, -sin], [sin, cos]])
    return torch.cat([w, aff])


def sampling_grid(weights: torch.Tensor, basis: torch.Tensor, side: int) -> torch.Tensor:
    """Where each output pixel reads its input, [N, side, side, 2] in [-1, 1] (align_corners=True), for weights
    [N, CONTROL^2 + 3, 2] and `design(side)`."""
    return rearrange(torch.einsum("pk,nkc->npc", basis, weights), "n (h w) c -> n h w c", h=side)


def warp_points(points: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each point [N, K, 2] (pixels) moved to the output pixel whose sampling position is nearest to it (DVE's
    warp_keypoints): integer pixel coordinates [N, K, 2]."""
    side = grid.shape[1]
    where = rearrange((grid + 1) / 2 * (side - 1), "n h w c -> n (h w) c").double()    # grid_unnormalize
    nearest = torch.cat([torch.cdist(points[i:i + 8].double(), where[i:i + 8]).argmin(-1)   # [N, K], 8 images at a
                         for i in range(0, len(points), 8)])                               # time: bounded memory
    return torch.stack([nearest % side, nearest // side], -1).float()


def views(images: torch.Tensor, landmarks: torch.Tensor, warps: torch.Tensor, basis: torch.Tensor, margin: int):
    """DVE's two views of each image: images uint8 [N, 3, S, S] and landmarks [N, K, 2] at the protocol's resize,
    warps [N, 2, CONTROL^2 + 3, 2] (g1, g2). Returns view 1 (I o g1 o g2) and view 2 (I o g1), uint8 and cut by
    `margin`, and their landmarks in the cut frame."""
    side = images.shape[-1]
    g1, g2 = (sampling_grid(warps[:, i], basis, side) for i in (0, 1))
    x = images.float() / 255 * 255                                  # DVE: to_tensor(im) * 255, not exact integers
    once = F.grid_sample(x, g1, mode="bilinear", padding_mode="zeros", align_corners=True)
    twice = F.grid_sample(once, g2, mode="bilinear", padding_mode="zeros", align_corners=True)
    kp_once = warp_points(landmarks, g1)
    kp_twice = warp_points(kp_once, g2)
    cut = slice(margin, side - margin)
    as_uint8 = lambda v: v[..., cut, cut].to(torch.uint8)             # noqa: E731 (DVE's .to(torch.uint8): truncation)
    return as_uint8(twice), as_uint8(once), kp_twice - margin, kp_once - margin


def match_cells(source: torch.Tensor, target: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    """DVE's find_descriptor for every point: feature maps [N, C, h, w], points [N, K, 2] in pixels of the
    size x size input -> the arg-max cells' top-left corners in pixels [N, K, 2]."""
    n, _, h, w = source.shape
    stride = size / w
    cell = torch.round(points / stride).long()
    cx, cy = cell[..., 0].clamp(0, w - 1), cell[..., 1].clamp(0, h - 1)
    desc = source[torch.arange(n)[:, None], :, cy, cx]                            # [N, K, C]
    best = torch.einsum("nkc,ncp->nkp", desc, target.flatten(2)).argmax(-1)
    return torch.stack([best % w, best // w], -1).float() * stride


def match_pixels(source: torch.Tensor, target: torch.Tensor, points: torch.Tensor, size: int,
                 groups: tuple[int, ...]) -> torch.Tensor:
    """ContrastLandmark's: both maps upsampled to size x size (bilinearly) and L2-normalised by channel group, the
    descriptor at the rounded pixel, the arg-max pixel [N, K, 2] (common.metrics.match computes exactly that without
    building the upsampled maps)."""
    return match(source, target, torch.round(points).clamp(0, size - 1), size, groups=groups)[0]


@torch.no_grad()
def dve_matching(extract, cache, protocol: Protocol, matcher: str = "dve", pairs: int | None = None, seed: int = 0,
                 batch: int = 64, groups: tuple[int, ...] | None = None) -> dict[str, float]:
    """Same- and different-identity matching of `extract` (images [N, 3, s, s] in [0, 1] -> feature maps covering
    the image) on the split `cache` (at protocol.resize), `pairs` pairs (default all). Errors in pixels of the
    70 x 70 frame, with the floor of leaving each point where it is; `groups`: cl's normalisation groups."""
    count = 2 * min(len(cache) // 2, pairs or len(cache))
    g = torch.Generator().manual_seed(seed)
    warps = torch.stack([torch.stack([draw_warp(g), draw_warp(g)]) for _ in range(count)])     # DVE's draw order
    basis = design(protocol.resize)
    units = FRAME / protocol.crop if matcher == "dve" else (FRAME - 1) / (protocol.crop - 1)
    errors: dict[str, list] = {"same": [], "diff": [], "same_floor": [], "diff_floor": []}
    for s in range(0, count, batch):
        b = cache.batch(range(s, min(s + batch, count)))
        one, two, kp_one, kp_two = views(b["images"], b["landmarks"], warps[s:s + len(b["images"])], basis,
                                         protocol.margin)
        feats = extract(torch.cat([one, two]).float() / 255).float()
        f_one, f_two = feats.split(len(one))
        src, kp_src = f_one[0::2], kp_one[0::2]
        for kind, target, truth in (("same", f_two[0::2], kp_two[0::2]), ("diff", f_two[1::2], kp_two[1::2])):
            pred = match_cells(src, target, kp_src, protocol.crop) if matcher == "dve" else \
                match_pixels(src, target, kp_src, protocol.crop, groups or (target.shape[1],))
            vis = b["visible"][0::2].bool() & (b["visible"][1::2].bool() if kind == "diff" else True)
            errors[kind].append(units * (pred - truth).norm(dim=-1)[vis])
            errors[kind + "_floor"].append(units * (kp_src - truth).norm(dim=-1)[vis])
    err = {k: torch.cat(v) for k, v in errors.items()}
    return {"same_px70": err["same"].mean().item(), "diff_px70": err["diff"].mean().item(),
            "same_floor_px70": err["same_floor"].mean().item(), "diff_floor_px70": err["diff_floor"].mean().item(),
            "pairs": count // 2, "points": len(err["same"])}
