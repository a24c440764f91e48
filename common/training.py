"""The training stages' run contract (Run: output folder, precision, steps, logs, checkpoints, final/) and its parts."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from .data import DataSpec, load_tensors
from .errors import UserError
from .hub import HubTarget
from .optim import effective_lr, schedule_steps, warmup_cosine_schedule
from .precision import device_type, precision_name, run_precision
from .probe import guarded, probe_all, probe_data, probe_line


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


def batch_indices(n: int, batch: int, step: int, seed: int) -> np.ndarray:
    """The global batch of a step: epoch e is a permutation drawn from (seed, e); the last partial
    batch of an epoch is dropped. Depends only on the step, so a resumed run continues exactly."""
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).numpy()
    return perm[k * batch:(k + 1) * batch]


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


# flags that change nothing any script computes: a resumed run may give them other values
FREE_ON_RESUME = {"resume", "overwrite", "argv", "data_workers", "push_to_hub", "hub_model_id", "hub_private"}
# and those of a training stage's run (make_accelerator checks the precision itself)
RUN_FREE_ON_RESUME = {"exit_after_steps", "log_every", "checkpoint_every", "checkpoints_total_limit", "report_to",
                      "probe_pairs", "eval_every", "mixed_precision", "precision", "precision_reason"}


def check_resume_args(flags: dict, out: Path, also_free: set = frozenset(), defaults: dict | None = None) -> None:
    """--resume continues the run of `out` with its own settings: another value of a flag that changes the
    result (a model from another architecture, other data, another schedule) is a one-line error, before
    anything is loaded or written. A flag added to the scripts since that run began (absent from its args.json)
    may keep its default (`defaults`, common.cli.flag_defaults) or an off value. FREE_ON_RESUME and `also_free`
    (the script's) may change."""
    if not (out / "args.json").is_file():
        raise UserError(f"{out}: nothing to resume (no args.json)")
    before = json.loads((out / "args.json").read_text())
    now = json.loads(json.dumps(flags, default=str))

    def default(k):
        return json.loads(json.dumps((defaults or {}).get(k), default=str))
    added = {k for k in now.keys() - before.keys() if now[k] in (None, False, [], 0, "", default(k))}
    # effective_lr follows from checked flags (named instead); a run that did not record it began before the rule,
    # and may have trained at another rate
    derived = {"effective_lr"} if "effective_lr" in before else set()
    free = FREE_ON_RESUME | also_free | added | derived
    changed = sorted(k for k in (now.keys() | before.keys()) - free if before.get(k) != now.get(k))
    if changed:
        rule = "" if derived else " (that run began before the one learning-rate rule)"
        raise UserError(f"--resume with other settings than {out}'s ({', '.join(changed)}){rule}: use a new "
                        "--output_dir, or --overwrite")


def save_args(flags: dict, out: Path) -> None:
    """args.json: the run's flags (vars(args)), what it derived from them (precision, effective lr) and its argv."""
    (out / "args.json").write_text(json.dumps({**flags, "argv": sys.argv}, indent=1, default=str))


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


@dataclass(frozen=True)
class RunSpec:
    """What a training stage's run and schedule flags decide (common.cli.run_args and schedule_args say what each
    means)."""
    output_dir: str
    lr: float
    batch_size: int
    epochs: int = 1
    max_steps: int | None = None
    warmup_epochs: float = 0.0
    bn_eval: bool = False
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    mixed_precision: str = "auto"
    grad_accum: int = 1
    log_every: int = 10
    report_to: str = "none"
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    exit_after_steps: int | None = None
    probe_pairs: int = 100


class Run:
    """The run contract of the training stages, in one place: the effective lr and the schedule's steps, the
    precision, the output folder (--resume, --overwrite), the pretraining images, args.json, the steps with their
    guard, logs, periodic probe and checkpoints, then final/ with its model card and upload. It takes specs, not
    flags (common.cli converts them). A stage builds its model between Run(...) and train(), and passes its step
    function:

        flags = vars(args)
        run = Run(from_flags(RunSpec, flags), from_flags(DataSpec, flags), "lead-byol", hub, flags,
                  flag_defaults(get_args_parser(), flags))
        ...  build the model on run.cache, with run.lr; sched = run.scheduler(opt); accelerator.prepare(...)
        step = run.train(step_fn, {"model": model}, opt, sched)
        if step == run.total:
            result = run.finish(model, card, probe, "LEAD stage 1")

    `record` (the flags) goes to args.json, and a resumed run's record must agree with it (check_resume_args,
    with `defaults` for flags added since)."""

    def __init__(self, spec: RunSpec, data: DataSpec, project: str, hub: HubTarget, record: dict,
                 defaults: dict | None = None):
        from accelerate.utils import set_seed                           # accelerate: imported when a run starts

        self.spec, self.data, self.project, self.out = spec, data, project, Path(spec.output_dir)
        self.hub = hub                                                     # checked by the caller, first
        self.lr = effective_lr(spec.lr, spec.batch_size, spec.grad_accum)
        self.accelerator, self.precision_reason = make_accelerator(
            spec.mixed_precision, spec.grad_accum, spec.report_to, self.out, resumed=self.out if spec.resume else None)
        self.precision = self.accelerator.mixed_precision                  # what auto chose
        self.flags = {**record, "effective_lr": self.lr, "precision": self.precision,
                      "precision_reason": self.precision_reason}
        prepare_output(self.out, spec.resume, spec.overwrite, self.accelerator.is_main_process)
        if spec.resume:
            check_resume_args(self.flags, self.out, RUN_FREE_ON_RESUME, defaults)
        self.accelerator.wait_for_everyone()
        set_seed(spec.seed)
        with self.accelerator.main_process_first():
            self.cache = load_tensors(data, "pretrain")
        check_batch(spec.batch_size, self.accelerator.num_processes, len(self.cache))
        self.steps_per_epoch = len(self.cache) // spec.batch_size
        self.total, self.warmup = schedule_steps(spec.max_steps, spec.epochs, spec.warmup_epochs, self.steps_per_epoch)
        logging.getLogger("lead").info("lr: %g per 256 images, %g for the update of %d images; %d steps, %d of "
                                       "warm-up", spec.lr, self.lr, spec.batch_size * spec.grad_accum, self.total,
                                       self.warmup)
        self.report = self.step = None

    def scheduler(self, opt):
        """The run's learning-rate schedule on `opt` (common.optim.warmup_cosine_schedule)."""
        return warmup_cosine_schedule(opt, self.warmup, self.total)

    def probe(self, extractors, size: int, *modules: torch.nn.Module) -> tuple[dict, str | None]:
        """The matching probe (common.probe.probe_all at --probe_pairs) on labelled validation faces
        (common.probe.probe_data says which) of extractors() (name -> images in [0, 1] -> feature maps), with
        `modules` in eval mode; (figures, what data), or ({}, None) when off, on other processes or failed: a probe
        is a diagnostic, and never costs a run its weights or its end."""
        if not self.spec.probe_pairs or not self.accelerator.is_main_process:
            return {}, None
        return guarded(self._probe, extractors, size, modules) or ({}, None)

    def _probe(self, extractors, size: int, modules) -> tuple[dict, str]:
        cache, what = probe_data(self.data)
        with contextlib.ExitStack() as stack:
            for m in modules:
                stack.enter_context(eval_mode(m))
            out = probe_all(extractors(), cache, size, self.spec.probe_pairs, self.spec.seed)
        logging.getLogger("lead").info("%s, on %s", probe_line(out), what)
        return out, what

    def freeze_batchnorm(self, *modules: torch.nn.Module) -> None:
        """--bn_eval: every BatchNorm layer of `modules` on its running statistics; nothing without it."""
        if self.spec.bn_eval:
            freeze_batchnorm(*modules)

    def precision_line(self) -> str:
        """The precision the run trains in and why, for its model card."""
        return f"{precision_name(self.precision)} ({self.precision_reason})"

    def train(self, step_fn, state: dict, opt, sched, rate: str = "images_per_s", probe=None,
              probe_every: int = 0) -> int:
        """Steps from the newest checkpoint (--resume) or 0 up to run.total (or --exit_after_steps more); the step
        reached. step_fn(images, step) -> the step's loss (a device scalar) runs one step on this process's share
        of the global batch (uint8 [B/processes, 3, S, S]); `state` (modules by name), opt and sched are what a
        checkpoint holds; `rate` names the throughput logged (images or pairs of views per second); probe() ->
        (figures, what data) runs every `probe_every` steps besides the end (0: only at the end)."""
        acc, spec, out, batch_size, total = self.accelerator, self.spec, self.out, self.spec.batch_size, self.total
        step = load_checkpoint(acc, out, state, opt, sched) if spec.resume else 0
        if not spec.resume and acc.is_main_process:
            save_args(self.flags, out)
        stop = total if spec.exit_after_steps is None else min(total, step + spec.exit_after_steps)
        self.report = Reporter(acc, out, self.project, self.flags, total, step)
        guard, t0, seen = FiniteGuard(acc.device), time.perf_counter(), 0
        while step < stop:
            loss = step_fn(local_batch(self.cache, batch_size, step, spec.seed, acc), step)
            step += 1
            guard.update(loss, step)
            seen += batch_size
            self.report.advance()
            if step % spec.log_every == 0 or step == stop:
                guard.check(acc, out)
                loss = acc.gather(loss[None]).mean().item()   # the only host sync, every log_every steps
                elapsed = time.perf_counter() - t0
                self.report.log(step, {"loss": loss, "lr": sched.get_last_lr()[0], rate: seen / elapsed,
                                       "elapsed_s": elapsed, "world_size": acc.num_processes})
            if probe is not None and probe_every and step % probe_every == 0 and step < total:
                self.log_probe(step, *probe())
                acc.wait_for_everyone()
            if step % spec.checkpoint_every == 0 or step == stop:
                guard.check(acc, out)
                save_checkpoint(acc, out, step, spec.checkpoints_total_limit, state, opt, sched)
        self.step = step
        if step < total:
            self.report.close()
            logging.getLogger("lead").info("stopped after step %d of %d; continue with --resume", step, total)
        return step

    def log_probe(self, step: int, result: dict, what: str | None) -> None:
        if result:
            self.report.log(step, {"probe": result, "probe_data": what})

    def finish(self, model, card, probe, message: str) -> dict:
        """After the last step: final/ (`model`'s config.json and model.safetensors, and card({}, None) as its
        README.md) written before the probe, so that a failed probe or upload loses nothing; then the probe, the
        card with its figures (card(figures, what data)) and the upload to the Hub (--push_to_hub)."""
        acc, out = self.accelerator, self.out
        if acc.is_main_process:
            model.save_pretrained(out / "final")
            (out / "final" / "README.md").write_text(card({}, None))
        acc.wait_for_everyone()
        result, what = probe()
        self.log_probe(self.step, result, what)
        self.report.close()
        if acc.is_main_process:
            (out / "final" / "README.md").write_text(card(result, what))
            self.hub.push(out / "final", message)
        acc.wait_for_everyone()
        return {"step": self.step, "probe": result}


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
