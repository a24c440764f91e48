"""Objectives shared by the stages."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z), averaged over the batch: 0 for aligned vectors,
    4 for opposite ones. `target` comes from the EMA network and carries no gradient."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()
