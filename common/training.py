"""The training loop's shared parts: the output folder contract, schedules, EMA, checkpoints, logs."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

from .data.images import DataError


def make_accelerator(mixed_precision: str, grad_accum: int):
    """The Accelerator. Under torchrun on a machine without CUDA, Accelerate only forms a process
    group (gloo, MULTI_CPU) when told it runs on the CPU, so say so there."""
    from accelerate import Accelerator

    cpu = int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available()
    # step_scheduler_with_optimizer=False: our schedules count global steps; Accelerate would otherwise
    # step them once per process
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       step_scheduler_with_optimizer=False)


def prepare_output(out: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse to touch a used folder unless --resume (continue) or --overwrite (replace) says so."""
    used = out.exists() and any(out.iterdir())
    if used and not (resume or overwrite):
        raise DataError(f"{out} is not empty: pass --resume to continue that run or --overwrite to replace it")
    if resume and not checkpoint_dirs(out):
        raise DataError(f"{out}: nothing to resume (no finished checkpoint in checkpoints/)")
    if overwrite and used and not resume and is_main:
        shutil.rmtree(out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)


def save_args(args, out: Path) -> None:
    (out / "args.json").write_text(json.dumps({**vars(args), "argv": sys.argv}, indent=1, default=str))


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


class Counter:
    """The step count, saved and restored with the rest of the Accelerate state."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a half-written one has a temporary name)."""
    found = [p for p in (out / "checkpoints").glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    """Write the Accelerate state to a temporary folder, then rename it into place (a kill during
    the write never leaves a 'latest' that is half written); keep the newest `keep`."""
    tmp = out / "checkpoints" / f".tmp_step_{step}"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = out / "checkpoints" / f"step_{step}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class JsonLog:
    """metrics.jsonl: one JSON object per logged step, appended (resumed runs keep their history)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
