"""Landmark metrics: inter-ocular error, PCK, and dense matching (as DVE, ContrastLandmark and LEAD).

Coordinates are pixels at pixel centres. Errors are per image, so callers can average, bootstrap
or split them as they like.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

EYES = {5: (0, 1), 68: (36, 45)}  # eye centres (MAFL order); outer eye corners (300-W order)


def inter_ocular(gt: torch.Tensor, eye_idx: tuple[int, int] | None = None) -> torch.Tensor:
    """Distance between the eye points of [N, K, 2] landmarks: [N]. eye_idx gives their indices; by default
    the eye centres of 5-point sets and the outer eye corners of 68-point sets (EYES)."""
    if eye_idx is None and gt.shape[1] not in EYES:
        raise ValueError(f"no eye points defined for {gt.shape[1]} landmarks (know {sorted(EYES)}; pass eye_idx)")
    a, b = EYES[gt.shape[1]] if eye_idx is None else eye_idx
    return (gt[:, a] - gt[:, b]).norm(dim=-1)


def point_errors(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean error over the visible points of each image: [N] (nan where none is visible)."""
    err = (pred - gt).norm(dim=-1)
    vis = torch.ones_like(err, dtype=torch.bool) if visible is None else visible.bool()
    return torch.where(vis, err, 0.0).sum(1) / vis.sum(1)


def iod_error(pred: torch.Tensor, gt: torch.Tensor, eye_idx: tuple[int, int] | None = None,
              visible: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean point error as a percentage of the inter-ocular distance (see inter_ocular): [N]."""
    return 100 * point_errors(pred, gt, visible) / inter_ocular(gt, eye_idx)


def pck(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, size: float, alpha: float = 0.05,
        per_landmark: bool = False) -> torch.Tensor:
    """Share of the visible points of [N, K, 2] predictions within alpha * size of the truth (CUB: 5 % of the image
    side, regress.py's --pck_alpha of --crop): a point at or beyond the threshold is a miss. Over all visible
    points (a scalar), or with per_landmark one share per landmark over the images where it is visible ([K], nan
    where it never is)."""
    hit = torch.where(visible.bool(), ((pred - gt).norm(dim=-1) < alpha * size).float(), float("nan"))
    return hit.nanmean(0) if per_landmark else hit.nanmean()


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def sample_at(features: torch.Tensor, points: torch.Tensor, image_size) -> torch.Tensor:
    """Bilinear feature vectors at pixel points of the input image: [N, C, h, w], [N, P, 2] -> [N, P, C].
    The feature map covers the whole image (align_corners=False), whatever its stride; image_size is the
    image's side, or its (height, width)."""
    h, w = _hw(image_size)
    grid = (2 * points + 1) / points.new_tensor([w, h]) - 1
    out = F.grid_sample(features, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(out, "n c p 1 -> n p c")


def _taps(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where bilinear resizing (align_corners=False, as F.interpolate) reads along one axis: for each output
    index, the first of its two input indices (the second is the next one, clamped at the edge) and the
    weight of the second, by PyTorch's own formula."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    first = src.long().clamp(max=n_in - 1)
    return first, (src - first).clamp(0, 1)


@torch.no_grad()
def match(ref_features: torch.Tensor, query_features: torch.Tensor, ref_points: torch.Tensor,
          image_size, chunk: int = 256, query_size=None, groups: tuple[int, ...] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry reference points to the query: the descriptor at each reference point, cosine similarity
    with the query's feature map upsampled (bilinearly) to the input resolution, arg-max.
    Returns query points [N, P, 2] and their cosine scores [N, P]. image_size is the reference image's side
    or (height, width); query_size the query's (default: the same). `groups` (channel counts summing to C) makes
    the similarity the sum of each group's cosine (ContrastLandmark's layer-wise normalisation of a hypercolumn).

    The upsampled map is never built: each upsampled vector is a bilinear mix of (at most) four neighbouring
    cells, so its dot products with the descriptors are the upsampled low-resolution dot products, and its
    squared norm follows from the ten dot products among those four cells. Exact, and ~(stride^2) times less
    work than upsampling every channel. Channels are taken `chunk` at a time to bound the memory."""
    n, c, h, w = query_features.shape
    qh, qw = _hw(query_size or image_size)
    (iy, ty), (ix, tx) = _taps(h, qh, query_features.device), _taps(w, qw, query_features.device)
    wy, wx = torch.stack([1 - ty, ty]), torch.stack([1 - tx, tx])                          # [2, qh], [2, qw]
    weight = rearrange(wy[:, None, :, None] * wx[None, :, None, :], "a b y x -> (a b) y x")  # [4, qh, qw]
    pairs = [(k, m) for k in range(4) for m in range(k, 4)]
    pair_w = torch.stack([weight[k] * weight[m] * (1 if k == m else 2) for k, m in pairs])  # [10, qh, qw]
    sim, start = 0, 0
    for size in groups or (c,):
        desc = F.normalize(sample_at(ref_features[:, start:start + size].float(), ref_points, image_size), dim=-1)
        dots = desc.new_zeros(n, ref_points.shape[1], h, w)
        grams = desc.new_zeros(n, 10, h, w)              # <corner k, corner l> for k <= l, at each top-left cell
        for a in range(0, size, chunk):
            part = query_features[:, start + a:start + min(a + chunk, size)].float()
            dots += torch.einsum("nchw,npc->nphw", part, desc[..., a:a + chunk])
            pad = F.pad(part, (0, 1, 0, 1), mode="replicate")             # the clamped neighbours at the edges
            corners = [pad[..., :h, :w], pad[..., :h, 1:], pad[..., 1:, :w], pad[..., 1:, 1:]]   # 00, 01, 10, 11
            grams += torch.stack([(corners[k] * corners[m]).sum(1) for k, m in pairs], 1)
        norm2 = (grams[:, :, iy][..., ix] * pair_w).sum(1)                                 # [N, qh, qw]
        up = F.interpolate(dots, size=(qh, qw), mode="bilinear", align_corners=False)      # [N, P, qh, qw]
        sim = sim + up / norm2.clamp_min(0).sqrt().clamp(min=1e-8)[:, None]
        start += size
    score, idx = rearrange(sim, "n p h w -> n p (h w)").max(-1)
    pts = torch.stack([idx % qw, idx // qw], -1).float()
    return pts, score
