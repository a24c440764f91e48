"""Objectives shared by the stages."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from common.views import cell_centres, view_correspondence


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z), averaged over the batch: 0 for aligned vectors,
    4 for opposite ones. `target` comes from the EMA network and carries no gradient."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """MoCo's InfoNCE: for each query q [B, C] its key k [B, C] (the positive, from the key encoder, no gradient)
    against the K queued keys [K, C] (the negatives): the cross-entropy of softmax([q.k, q.queue] / t) at the
    positive, averaged over the batch. Vectors are L2-normalised here; fp32."""
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(key.detach().float(), dim=-1)
    positive = (q * k).sum(-1, keepdim=True)                               # [B, 1]
    negative = q @ F.normalize(queue.detach().float(), dim=-1).T          # [B, K]
    logits = torch.cat([positive, negative], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, positions: torch.Tensor,
               valid: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-level BYOL (PixPro's pixel propagation without the propagation module): the online
    prediction [B, C, g, g] of view 1 against the target's map [B, C, h, w] of view 2, sampled
    bilinearly at `positions` [B, g*g, 2] (where each cell of view 1 lies in view 2, normalised
    coordinates); 2 - 2 cos averaged over the cells inside view 2 (`valid` [B, g*g]). Positions in
    the outer half cell of the target map take its edge cells (border padding), not a blend with 0.
    `count` replaces valid's own count as the divisor (see mean_divisor: the global batch's mean under
    data parallelism)."""
    z = F.grid_sample(target.detach().float(), positions[:, :, None].to(target.device, torch.float32),
                      mode="bilinear", padding_mode="border", align_corners=False)[..., 0]  # [B, C, g*g]
    cos = F.cosine_similarity(prediction.flatten(2).float(), z, dim=1)                # [B, g*g]
    valid = valid.to(cos.device, cos.dtype)
    return ((2 - 2 * cos) * valid).sum() / (valid.sum() if count is None else count).clamp_min(1)


def mean_divisor(valid: torch.Tensor) -> torch.Tensor:
    """The divisor that makes a masked mean over this process's cells the mean over the global batch's: the
    valid cells of all processes divided by their number (gradients are averaged over processes). One
    all-reduce of a scalar on the device, no host sync; valid's own count in a single process."""
    count = valid.sum().float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        count = count / torch.distributed.get_world_size()
    return count


def lead_loss(f_i: torch.Tensor, f_j: torch.Tensor, h_i: torch.Tensor, h_j: torch.Tensor, tau: float = 0.05,
              chunk: int | None = None, teacher_tau: float | None = None) -> torch.Tensor:
    """LEAD's dense distillation (Sec. 3.3, Eq. 2-3). For each position u of image i, p and q are the softmax
    over the positions k of image j of cos(., .) / tau, from the teacher's hypercolumns h [B, N, C_h] (p, no
    gradient) and from the compact student features f [B, N, C_f] (q); the loss is the cross-entropy
    -sum_k p log q, averaged over B and u. Its minimum, the entropy of p, is where the student's
    similarities equal the teacher's, whatever C_f. teacher_tau (default: tau, the paper's) divides the
    teacher's similarities instead: below tau it sharpens p, as DINO's teacher temperature does.

    Everything here runs in at least fp32 with autocast off, h's similarities included: computed in a bf16 h's
    own dtype they moved 5 % of the target's arg-maxes at teacher_tau 0.02 and cost same-face precision, for ~3 %
    of the recipe's FLOPs saved (experiments/bf16.md). `chunk` (see auto_chunk) bounds the memory: the rows u
    are taken `chunk` at a time, each under activation checkpointing, so forward and backward hold
    [B, chunk, N] matrices instead of [B, N, N], for the price of computing each chunk twice (teacher included)."""
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows or None, not {chunk}")
    taus = (tau, tau if teacher_tau is None else teacher_tau)
    batch, n = f_i.shape[:2]
    dtype = torch.promote_types(f_i.dtype, torch.float32)
    with torch.autocast(f_i.device.type, enabled=False):
        f_i, f_j = F.normalize(f_i.to(dtype), dim=-1), F.normalize(f_j.to(dtype), dim=-1)
        h_i, h_j = F.normalize(h_i.detach().to(dtype), dim=-1), F.normalize(h_j.detach().to(dtype), dim=-1)
        if chunk is None or chunk >= n:
            total = _lead_rows(f_i, f_j, h_i, h_j, *taus)
        else:
            total = sum(checkpoint(_lead_rows, f_i[:, s:s + chunk], f_j, h_i[:, s:s + chunk], h_j, *taus,
                                   use_reentrant=False) for s in range(0, n, chunk))
    return total / (batch * n)


def _lead_rows(f_u: torch.Tensor, f_j: torch.Tensor, h_u: torch.Tensor, h_j: torch.Tensor,
               tau: float, teacher_tau: float) -> torch.Tensor:
    """lead_loss's cross-entropy summed over the rows u given: f_u [B, n, C_f] against f_j [B, N, C_f], h_u
    [B, n, C_h] against h_j [B, N, C_h], all unit vectors. Builds the [B, n, N] matrices."""
    sim_h = torch.einsum("buc,bkc->buk", h_u, h_j).div_(teacher_tau)
    p = F.softmax(sim_h, dim=-1)                                              # [B, n, N]
    log_q = F.log_softmax(torch.einsum("buc,bkc->buk", f_u / tau, f_j), dim=-1)
    return -(p * log_q).sum()


def auto_chunk(batch: int, n: int, budget_bytes: int = 2**30) -> int | None:
    """lead_loss's `chunk` for B = batch images of n positions: None (the full path) when one [B, n, n] fp32
    matrix fits in `budget_bytes`, else the most rows whose [B, chunk, n] fp32 matrix does, at least 1. The
    loss holds a few such matrices at once (logits, p, log q, their gradients), so give it a fraction of the
    free memory."""
    row_bytes = batch * n * 4
    if row_bytes * n <= budget_bytes:
        return None
    return max(1, budget_bytes // row_bytes)


def dve_loss(f1: torch.Tensor, f2: torch.Tensor, fa: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
             cells: torch.Tensor, tau: float = 0.05, power: float = 0.5) -> torch.Tensor:
    """Dense visual equivariance with vector exchange (DVE, Thewlis et al. 2019): each position u of
    view 1 is first described by the features of an auxiliary image (another identity): the soft-match of
    f1(u) over fa's positions gives a convex mix of fa's vectors; that mix is then soft-matched over view 2,
    and the loss is the expected distance^power between the matched position and where u truly lies in view
    2. Matching through another face rewards features that are shared across identities, which plain
    equivariance between two views of one image does not.

    f1, f2, fa: [B, N, C] features of view 1, view 2 and the auxiliary image at N cell positions; cells [N, 2]
    those positions and target [B, N, 2] where each cell of view 1 lies in view 2, in one unit (e.g. cells);
    valid [B, N] the cells of view 1 that lie inside view 2. Softmaxes of cosine / tau, in fp32."""
    with torch.autocast(f1.device.type, enabled=False):
        f1, f2, fa = (F.normalize(f.float(), dim=-1) for f in (f1, f2, fa))
        via_a = F.softmax(torch.einsum("buc,bkc->buk", f1, fa) / tau, dim=-1)        # [B, N, N] u -> aux
        mixed = torch.einsum("buk,bkc->buc", via_a, fa)                                # f1 told in fa's words
        q = F.softmax(torch.einsum("buc,bvc->buv", mixed, f2) / tau, dim=-1)          # [B, N, N] u -> view 2
        dist = torch.cdist(target.float(), cells.float()[None].expand(len(f1), -1, -1)).pow(power)
        per_u = (q * dist).sum(-1)                                                     # [B, N] expected distance
        valid = valid.to(per_u.dtype)
        return (per_u * valid).sum() / valid.sum().clamp_min(1)


def cl_loss(features: torch.Tensor, stride: float, tau: float = 1 / 7, power: float = 0.5) -> torch.Tensor:
    """The dense loss ContrastLandmark's code trains its projector with (dense_corr_loss of its
    train_feature_projector.py): within each image, every position u soft-matches all positions v of the same
    map (softmax over v of cos / tau), and pays the expected distance^power, in input pixels, to where it
    matched. It pulls each descriptor's matches towards its own neighbourhood: features that vary smoothly and
    tell positions apart. features [B, C, h, w], `stride` input pixels per cell; the mean over positions and
    images, in fp32."""
    with torch.autocast(features.device.type, enabled=False):
        f = F.normalize(rearrange(features.float(), "b c h w -> b (h w) c"), dim=-1)
        p = F.softmax(torch.einsum("buc,bvc->buv", f, f) / tau, dim=-1)            # [B, N, N]
        h, w = features.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=f.device), torch.arange(w, device=f.device), indexing="ij")
        pos = torch.stack([xs, ys], -1).reshape(-1, 2).float() * stride             # [N, 2] input pixels
        dist = torch.cdist(pos, pos).pow(power)                                     # [N, N]
        return (p * dist).sum(-1).mean()


def dve_views(features: torch.Tensor, p1: dict, p2: dict, tau: float, power: float) -> torch.Tensor:
    """DVE's loss between the two views (both directions), each matched through the same view of the previous
    image of the batch, another face. features: the two views stacked [2B, C, g, g]; p1, p2: the views' crops."""
    g = features.shape[-1]
    f1, f2 = rearrange(features, "b c h w -> b (h w) c").chunk(2)
    cells = cell_centres(g, features.device) * g / 2                     # normalised -> units of one cell
    total = 0.0
    for fa, fb, pa, pb in ((f1, f2, p1, p2), (f2, f1, p2, p1)):
        target, valid = view_correspondence(pa, pb, g)
        total = total + dve_loss(fa, fb, fa.roll(1, 0), target.to(features.device) * g / 2,
                                 valid.to(features.device), cells, tau, power)
    return total / 2
