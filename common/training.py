"""The training loop's shared parts: the output folder contract, schedules, EMA, checkpoints, logs."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_state, save_state
from .errors import UserError
from .hub import hub_args, push_to_hub
from .precision import PRECISIONS, device_type, precision_name, run_precision


TRACKERS = ("none", "tensorboard", "wandb")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Evaluate in eval mode, then give every submodule back its own mode (a module-level train(was)
    would switch on BatchNorm layers that --bn_eval or a frozen encoder keep in eval mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def freeze_batchnorm(*modules: torch.nn.Module) -> None:
    """--bn_eval: every BatchNorm layer on its running statistics (tiny per-process batches; runs with other
    numbers of processes that must agree exactly, since SyncBatchNorm has no CPU implementation)."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def run_args(output_dir: str) -> argparse.ArgumentParser:
    """The flags every training stage shares: output folder, resume, precision, logging, checkpoints, Hub."""
    from .data import at_least

    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("Run")
    g.add_argument("--output_dir", default=output_dir)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output_dir")
    g.add_argument("--overwrite", action="store_true", help="replace a used --output_dir")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--mixed_precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 where the device computes it fast (a CUDA GPU with bf16; a CPU where a "
                        "short probe finds bf16 faster), else fp32 (no); the choice and its reason go to args.json")
    g.add_argument("--grad_accum", type=at_least(1), default=1,
                   help="accumulate gradients over this many steps (each of --batch_size) per optimiser update; "
                        "--max_steps, the schedules and the lr scaling count steps, not updates")
    g.add_argument("--log_every", type=at_least(1), default=10, help="steps between metrics.jsonl lines")
    g.add_argument("--report_to", default="none", choices=TRACKERS,
                   help="also log to this Accelerate tracker (optional package; metrics.jsonl is always written)")
    g.add_argument("--checkpoint_every", type=at_least(1), default=500, help="steps between checkpoints")
    g.add_argument("--checkpoints_total_limit", type=at_least(1), default=2, help="checkpoints kept")
    g.add_argument("--exit_after_steps", type=at_least(1), default=None,
                   help="stop (checkpointed) after this many steps of this run, e.g. for time-limited jobs; "
                        "continue with --resume")
    g.add_argument("--probe_pairs", type=int, default=100, help="pairs of each kind for the matching probe (0: off)")
    hub_args(parser)
    return parser


def batch_indices(n: int, batch: int, step: int, seed: int) -> np.ndarray:
    """The global batch of a step: epoch e is a permutation drawn from (seed, e); the last partial
    batch of an epoch is dropped. Depends only on the step, so a resumed run continues exactly."""
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).numpy()
    return perm[k * batch:(k + 1) * batch]


def save_final(accelerator, out: Path, model, card: str) -> None:
    """The hand-off folder OUTPUT/final/ (config.json, model.safetensors, README.md model card), written by the
    main process as soon as training ends, before any probe or upload can fail."""
    if accelerator.is_main_process:
        model.save_pretrained(out / "final")
        (out / "final" / "README.md").write_text(card)
    accelerator.wait_for_everyone()


def publish_final(accelerator, out: Path, card: str, args, message: str) -> None:
    """The final model card (with the probe's figures), and the upload of final/ with --push_to_hub."""
    if accelerator.is_main_process:
        (out / "final" / "README.md").write_text(card)
        if args.push_to_hub:
            push_to_hub(out / "final", args.hub_model_id, args.hub_private, message)
    accelerator.wait_for_everyone()


def check_batch(batch_size: int, processes: int, images: int) -> None:
    """A global batch must split evenly over the processes and fit the data set."""
    if batch_size % processes or batch_size > images:
        raise UserError(f"--batch_size {batch_size} must divide by {processes} processes "
                        f"and not exceed the {images} images")


def local_batch(cache, batch_size: int, step: int, seed: int, accelerator) -> torch.Tensor:
    """This process's share of the step's global batch (batch_indices), uint8 on its device."""
    local = batch_size // accelerator.num_processes
    idx = batch_indices(len(cache), batch_size, step, seed)
    idx = idx[accelerator.process_index * local:(accelerator.process_index + 1) * local]
    images = cache.batch(idx)["images"]
    if accelerator.device.type == "cuda":          # page-locked: the copy runs while the device computes
        images = images.pin_memory()
    return images.to(accelerator.device, non_blocking=True)


def make_accelerator(mixed_precision: str, grad_accum: int, report_to: str = "none", project_dir=None,
                     resumed: Path | None = None):
    """(the Accelerator, the reason for its precision). `mixed_precision` may be auto (common.precision); a run
    resumed from `resumed` keeps its precision. With Accelerate's experiment tracker `report_to` (an optional
    package). Under torchrun on a machine without CUDA, Accelerate only forms a process group (gloo,
    MULTI_CPU) when told it runs on the CPU, so say so there."""
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"none": True, "tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    if not available[report_to]:
        raise UserError(f"--report_to {report_to} needs the {report_to} package: pip install {report_to}")
    cpu = int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available()
    if resumed is not None and not (resumed / "args.json").is_file():
        resumed = None                                  # check_resume_args says there is nothing to resume
    precision, reason = run_precision(mixed_precision, "cpu" if cpu else device_type(), resumed)
    # step_scheduler_with_optimizer=False: our schedules count global steps; Accelerate would otherwise
    # step them once per process
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=grad_accum,
                              step_scheduler_with_optimizer=False, project_dir=project_dir,
                              log_with=None if report_to == "none" else report_to)
    logging.getLogger("lead").info("precision: %s (%s)", precision_name(precision), reason)
    return accelerator, reason


def precision_line(args) -> str:
    """The precision a run trained in and why, for its model card (runs from before `auto` recorded neither)."""
    precision = getattr(args, "precision", args.mixed_precision)
    reason = getattr(args, "precision_reason", None)
    return precision_name(precision) + (f" ({reason})" if reason else "")


def prepare_output(out: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse to touch a used folder unless --resume (continue) or --overwrite (replace) says so."""
    used = out.exists() and any(out.iterdir())
    if used and not (resume or overwrite):
        raise UserError(f"{out} is not empty: pass --resume to continue that run or --overwrite to replace it")
    if resume and not checkpoint_dirs(out):
        raise UserError(f"{out}: nothing to resume (no finished checkpoint in checkpoints/)")
    if overwrite and used and not resume and is_main:
        shutil.rmtree(out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)


# flags that change nothing a run computes: a resumed run may give them other values
FREE_ON_RESUME = {"resume", "overwrite", "exit_after_steps", "log_every", "checkpoint_every",
                  "checkpoints_total_limit", "report_to", "push_to_hub", "hub_model_id", "hub_private",
                  "data_workers", "probe_pairs", "eval_every", "argv",
                  "mixed_precision", "precision", "precision_reason"}     # make_accelerator checks the precision


def check_resume_args(args, out: Path, free: set = FREE_ON_RESUME, parser=None) -> None:
    """--resume continues the run of `out` with its own settings: another value of a flag that changes the
    result (a model from another architecture, other data, another schedule) is a one-line error, before
    anything is loaded or written. A flag added to the scripts since that run began (absent from its args.json)
    may keep its default (`parser`'s) or an off value."""
    if not (out / "args.json").is_file():
        raise UserError(f"{out}: nothing to resume (no args.json)")
    before = json.loads((out / "args.json").read_text())
    now = json.loads(json.dumps(vars(args), default=str))

    def default(k):
        return json.loads(json.dumps(parser.get_default(k), default=str)) if parser is not None else None
    added = {k for k in now.keys() - before.keys() if now[k] in (None, False, [], 0, "", default(k))}
    changed = sorted(k for k in (now.keys() | before.keys()) - free - added if before.get(k) != now.get(k))
    if changed:
        raise UserError(f"--resume with other settings than {out}'s ({', '.join(changed)}): use a new "
                        "--output_dir, or --overwrite")


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


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a half-written one has a temporary name)."""
    found = [p for p in (out / "checkpoints").glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, out: Path, step: int, keep: int, modules: dict, opt, sched) -> None:
    """The training state after `step` steps (common.checkpoint: safetensors and JSON, no pickle), written by the
    main process to a temporary folder, then renamed into place: a kill during the write never leaves a
    'latest' that is half written. The newest `keep` are kept."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp, final = out / "checkpoints" / f".tmp_step_{step}", out / "checkpoints" / f"step_{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        state = {"step": step}
        if accelerator.scaler is not None:                     # fp16's loss scale
            state["scaler"] = accelerator.scaler.state_dict()
        save_state(tmp, {k: accelerator.unwrap_model(m) for k, m in modules.items()}, opt, sched, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, out: Path, modules: dict, opt, sched) -> int:
    """Restore the newest finished checkpoint of `out` into modules, optimizer and scheduler; its step."""
    state = load_state(checkpoint_dirs(out)[-1], {k: accelerator.unwrap_model(m) for k, m in modules.items()},
                       opt, sched, accelerator.device)
    if "scaler" in state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    return int(state["step"])


class FiniteGuard:
    """The first step whose loss was not finite, kept on the device, so watching every step costs no host sync;
    check() reads it (at logging steps and before each checkpoint) and stops the run, naming the step, before
    anything after it is saved."""

    def __init__(self, device):
        self.first = torch.tensor(-1, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), step, self.first)

    def check(self, accelerator, out: Path) -> None:
        first = int(accelerator.gather(self.first[None]).max())        # any process's
        if first >= 0:
            kept = checkpoint_dirs(out)
            raise UserError(f"the loss was not finite at step {first}: stopped, nothing after it saved (last good "
                            f"checkpoint: {kept[-1] if kept else 'none'}); lower --lr, or use --mixed_precision no")


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


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
    return out


class Reporter:
    """What a training loop reports, on the main process: metrics.jsonl (always), Accelerate's
    trackers (--report_to), and a rich progress bar with loss, lr, pairs/s and ETA; where the
    console is not a terminal (a batch job's log file) each record is also a log line."""

    SHOWN = (("loss", "loss"), ("lr", "lr"), ("pairs_per_s", "pairs/s"), ("images_per_s", "images/s"))

    def __init__(self, accelerator, out: Path, project: str, config: dict, total: int, start: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.json = JsonLog(out / "metrics.jsonl", self.main)
        self.lines = not Console().is_terminal
        accelerator.init_trackers(project, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                   for k, v in config.items()})
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), disable=not self.main or self.lines)
        self.task = self.bar.add_task(project, total=total, completed=start, stats="")
        self.bar.start()

    def advance(self) -> None:
        self.bar.advance(self.task)

    def log(self, step: int, record: dict) -> None:
        self.json.write({"step": step, **record})
        self.accelerator.log(_flat(record), step=step)
        stats = "  ".join(f"{label} {record[k]:.4g}" for k, label in self.SHOWN if k in record)
        if stats:
            self.bar.update(self.task, stats=stats)
        if self.lines and self.main and stats:
            logging.getLogger("lead").info("step %d  %s", step, stats)

    def close(self) -> None:
        """Stop the bar and finish the trackers (not accelerator.end_training(): that also tears down
        the process group, which the caller may still need)."""
        self.bar.stop()
        if self.main:
            for tracker in self.accelerator.trackers:
                tracker.finish()


class JsonLog:
    """metrics.jsonl: one JSON object per logged step, appended (resumed runs keep their history)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
