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


def pck(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, size: float, alpha: float = 0.05) -> torch.Tensor:
    """Share of visible points within alpha * size of the truth (CUB: 5 % of the image side)."""
    hit = ((pred - gt).norm(dim=-1) < alpha * size) & visible.bool()
    return hit.sum() / visible.bool().sum()


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


@torch.no_grad()
def match(ref_features: torch.Tensor, query_features: torch.Tensor, ref_points: torch.Tensor,
          image_size, chunk: int = 256, query_size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry reference points to the query: the descriptor at each reference point, cosine similarity
    with the query's feature map upsampled (bilinearly) to the input resolution, arg-max.
    Returns query points [N, P, 2] and their cosine scores [N, P]. Channels are processed in chunks,
    so a 3840-d hypercolumn at 96 px never needs its full-resolution copy in memory. image_size is the
    reference image's side or (height, width); query_size the query's (default: the same)."""
    n, c = query_features.shape[:2]
    qh, qw = _hw(query_size or image_size)
    desc = F.normalize(sample_at(ref_features.float(), ref_points, image_size), dim=-1)   # [N, P, C]
    dots = desc.new_zeros(n, qh * qw, ref_points.shape[1])
    norm2 = desc.new_zeros(n, qh * qw, 1)
    for a in range(0, c, chunk):
        # channels-last upsampling is ~10x faster on a CPU, and gives the [N, S*S, c] layout directly
        part = query_features[:, a:a + chunk].float().contiguous(memory_format=torch.channels_last)
        up = F.interpolate(part, size=(qh, qw), mode="bilinear", align_corners=False)
        up = rearrange(up, "n c h w -> n (h w) c")
        dots += up @ desc[..., a:a + chunk].transpose(1, 2)
        norm2 += (up * up).sum(-1, keepdim=True)
    dots, norm2 = dots.transpose(1, 2), norm2.transpose(1, 2)                             # [N, P, S*S]
    sim = dots / norm2.sqrt().clamp(min=1e-8)
    score, idx = sim.max(-1)
    pts = torch.stack([idx % qw, idx // qw], -1).float()
    return pts, score


@torch.no_grad()
def matching_errors(extract, ref_images: torch.Tensor, query_images: torch.Tensor, ref_points: torch.Tensor,
                    true_points: torch.Tensor) -> torch.Tensor:
    """Pixel error [N, P] of carrying ref_points to the query images with the features of
    `extract` (images [N, 3, S, S] -> feature maps [N, C, h, w] covering the image)."""
    size = ref_images.shape[-1]
    pred, _ = match(extract(ref_images), extract(query_images), ref_points, size)
    return (pred - true_points).norm(dim=-1)
