"""The precision of a run. `--mixed_precision auto` (the default) computes in bf16 where the device does it fast
and in fp32 elsewhere; fp16 is never chosen for the user (it needs a loss scale and overflows where bf16 does not).

- CUDA: bf16 where the GPU computes it natively (Ampere and later; not where torch only emulates it), else fp32.
- CPU: a short measured probe, because the model name does not tell: an AMD EPYC with `avx512_bf16` ran the
  stage-1 step 1.6x faster in bf16, an earlier EPYC without bf16 arithmetic about ten times slower. The probe
  times the forward and backward pass of a small convolution block, the bulk of a training step, in both
  precisions, and takes bf16 only where it is at least MIN_SPEEDUP times faster. LEAD_CPU_BF16=1 (or 0) gives
  its answer without measuring: for processes that must agree, or a machine busy with other work.
"""
import functools
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

PRECISIONS = ("auto", "no", "bf16", "fp16")
MIN_SPEEDUP = 1.2          # bf16 must win clearly: a tie is not worth its rounding


def precision_name(precision: str) -> str:
    """A precision as people say it: Accelerate's "no" is fp32."""
    return "fp32" if precision == "no" else precision


def recorded_precision(saved: dict) -> str:
    """The precision a run's args.json says it trained in (folders from before `auto` have only mixed_precision)."""
    return saved.get("precision", saved.get("mixed_precision", "no"))


def _block_seconds(bf16: bool, repeats: int, budget_s: float = 2.0) -> float:
    """Best time of one forward + backward pass of a conv-BN-ReLU block (batch 8, 64 channels, 32 x 32,
    channels-last, as the training steps run). Stops early once `budget_s` is spent: a slow bf16 shows at once."""
    g = torch.Generator().manual_seed(0)
    block = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1, bias=False)).to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 32, 32, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    best, spent = float("inf"), 0.0
    for i in range(repeats + 1):                       # the first pass warms oneDNN's kernel cache up: not timed
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            block(x).float().square().mean().backward()
        took = time.perf_counter() - t
        spent += took
        if i:
            best = min(best, took)
        if spent > budget_s and i:
            break
    return best


@functools.cache
def cpu_bf16_speedup(repeats: int = 5) -> float:
    """How many times faster the probe block runs in bf16 than in fp32 on this CPU (< 1: slower)."""
    return _block_seconds(False, repeats) / _block_seconds(True, repeats)


def auto_precision(device_type: str) -> tuple[str, str]:
    """(precision, reason) that --mixed_precision auto chooses on a device of this type."""
    if device_type == "cuda":
        index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()     # this process's GPU
        name = torch.cuda.get_device_name(index)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"{name} computes bf16"
        return "no", f"{name} has no native bf16"
    if device_type == "cpu":
        forced = os.environ.get("LEAD_CPU_BF16")
        if forced is not None:
            if forced not in ("0", "1"):
                raise UserError(f"LEAD_CPU_BF16={forced}: 1 (bf16) or 0 (fp32), or unset to measure")
            return ("bf16", "no")[forced == "0"], f"LEAD_CPU_BF16={forced}"
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            return "no", "several processes on CPUs do not probe (LEAD_CPU_BF16=1: bf16 for all)"
        speedup = cpu_bf16_speedup()
        verdict = "bf16" if speedup >= MIN_SPEEDUP else "no"
        return verdict, f"the CPU probe ran bf16 at {speedup:.2f}x the speed of fp32 (bf16 from {MIN_SPEEDUP}x)"
    return "no", f"fp32 on {device_type}"


def device_type() -> str:
    """Where an Accelerator of this process will compute: cuda, unless there is none or Accelerate is told the CPU."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def run_precision(requested: str, device_type: str, resumed: Path | None = None) -> tuple[str, str]:
    """(precision, reason) of a training run: an explicit --mixed_precision wins; with `auto`, a precision given to
    `accelerate launch` (bf16, fp16: its "no" is only its default), else auto_precision.
    A resumed run (`resumed`: its folder) keeps the precision it began with; asking for another is an error."""
    if resumed is not None:
        before = json.loads((resumed / "args.json").read_text())
        began = recorded_precision(before)
        if requested not in ("auto", began):
            raise UserError(f"--resume with --mixed_precision {requested}: {resumed} began in {began}; resume "
                            "with auto or that value")
        return began, f"{before.get('precision_reason') or '--mixed_precision'}; kept on resume"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if requested == "auto" and launcher in ("bf16", "fp16"):      # accelerate launch --mixed_precision, or its config
        return launcher, "accelerate launch's --mixed_precision (or accelerate config)"
    if requested == "auto":
        return auto_precision(device_type)
    return requested, "--mixed_precision"
