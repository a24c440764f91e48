"""Objectives shared by the stages."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z), averaged over the batch: 0 for aligned vectors,
    4 for opposite ones. `target` comes from the EMA network and carries no gradient."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, positions: torch.Tensor,
               valid: torch.Tensor) -> torch.Tensor:
    """Pixel-level BYOL (PixPro's pixel propagation without the propagation module): the online
    prediction [B, C, g, g] of view 1 against the target's map [B, C, h, w] of view 2, sampled
    bilinearly at `positions` [B, g*g, 2] (where each cell of view 1 lies in view 2, normalised
    coordinates); 2 - 2 cos averaged over the cells inside view 2 (`valid` [B, g*g]). Positions in
    the outer half cell of the target map take its edge cells (border padding), not a blend with 0."""
    z = F.grid_sample(target.detach().float(), positions[:, :, None].to(target.device, torch.float32),
                      mode="bilinear", padding_mode="border", align_corners=False)[..., 0]  # [B, C, g*g]
    cos = F.cosine_similarity(prediction.flatten(2).float(), z, dim=1)                # [B, g*g]
    valid = valid.to(cos.device, cos.dtype)
    return ((2 - 2 * cos) * valid).sum() / valid.sum().clamp_min(1)
