"""Optimisation, one rule for every stage: the learning rate from a base rate per 256 images, the steps and the
warm-up and cosine schedule (common.training.Run builds them once for a stage), BYOL's EMA target and the LARS
optimiser."""
from __future__ import annotations

import math

import torch

LR_RULE = ("--lr is the rate for 256 images per optimiser update; the rate used is --lr x --batch_size x "
           "--grad_accum / 256 (MAE's rule), logged and written to args.json as effective_lr")


def effective_lr(base_lr: float, batch_size: int, grad_accum: int = 1) -> float:
    """MAE's linear scaling rule: the base rate is for 256 images per update; an update sees the global batch of
    every accumulated step."""
    return base_lr * batch_size * grad_accum / 256


def schedule_steps(max_steps: int | None, epochs: int, warmup_epochs: float, steps_per_epoch: int) -> tuple[int, int]:
    """(total, warm-up) steps of a run: --max_steps, else --epochs of `steps_per_epoch`; the warm-up is
    --warmup_epochs of them, at most half the run."""
    total = max_steps or epochs * steps_per_epoch
    return total, min(int(warmup_epochs * steps_per_epoch), total // 2)


def warmup_cosine_schedule(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Every stage's schedule: the lr of each of opt's groups times warmup_cosine(step), stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def ema_momentum(step: int, total: int, base: float) -> float:
    """BYOL's target momentum: base at the start, rising along a cosine to 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2


@torch.no_grad()
def ema_update(target: list[torch.Tensor], online: list[torch.Tensor], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, in one fused call (no Python loop)."""
    torch._foreach_lerp_(target, online, 1 - momentum)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), BYOL's optimiser:
    a group with `adapt` scales each tensor's step d = g + wd * w by trust * |w| / |d|. Build the
    groups with `lars_groups`: biases and BatchNorm parameters get neither the scaling nor weight
    decay, as in BYOL and DINO."""

    def __init__(self, params, lr: float, momentum: float = 0.9, trust: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, trust=trust, weight_decay=0.0, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        # foreach ops: a handful of kernels per group, not several per tensor (161 tensors in a ResNet-50)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            d = torch._foreach_add([p.grad for p in params], params, alpha=group["weight_decay"])
            if group["adapt"]:
                w_norm, d_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(d))
                ok = (w_norm > 0) & (d_norm > 0)
                torch._foreach_mul_(d, torch.where(ok, group["trust"] * w_norm / d_norm, 1.0).unbind())
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, d)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])


def lars_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weights (2-d and up): adapted and decayed; biases and norm parameters (1-d): neither."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "adapt": True},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "adapt": False}]
