"""Throughput of the training steps of stage 1 and stage 2, ours against the usual pipeline of the field.

    .venv/bin/python benchmarks/throughput.py --stage 1 --arch resnet18 --size 64 --batch 64 --baseline
    .venv/bin/python benchmarks/throughput.py --stage 2 --arch resnet18 --size 64 --batch 32 --baseline
    python benchmarks/throughput.py --stage 1 --arch resnet50 --size 96 --batch 256 --baseline

The precision is the scripts' default, --mixed_precision auto (common.precision: bf16 where the device computes it
fast); the baseline always runs in fp32, as the usual pipeline does.

Ours is what the scripts run: the uint8 tensor cache (synthetic faces, rendered here) -> a batch of rows ->
the device (the scripts' local_batch: pinned, non-blocking) -> both views augmented there in batch -> the
script's own train_step (autocast, channels-last, fused optimiser and EMA, no host sync per step).
The baseline (--baseline), in the same process, on the same model and batch: the same images as JPEG files
in a temporary folder, PIL decode and torchvision v2 transforms per sample in DataLoader workers, fp32,
NCHW, an EMA by a Python loop over the parameters and the loss read back every step.

Prints samples/s of the full step, peak memory, FLOPs per step (torch.utils.flop_counter), achieved TFLOP/s
and its share of the device's peak: a large matrix product in the step's precision measured here, or
--peak_tflops. Nothing is asserted: the figures depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import byol_pretrain  # noqa: E402
import dense_distill  # noqa: E402
from common.views import ViewConfig, view_configs  # noqa: E402
from common.data.cache import TensorCache  # noqa: E402
from common.data.synthetic import SyntheticSpec, render_uint8, sample_params  # noqa: E402
from common.losses import auto_chunk  # noqa: E402
from common.models import ResNetEncoder  # noqa: E402
from common.optim import effective_lr, schedule_steps, warmup_cosine_schedule  # noqa: E402
from common.precision import PRECISIONS, device_type, run_precision  # noqa: E402
from common.training import local_batch, make_accelerator  # noqa: E402


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, default=1, choices=[1, 2])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="view side")
    parser.add_argument("--image_size", type=int, default=None, help="side of the cached images (default 4/3 size)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup steps)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=512, help="distinct images in the cache and the JPEG folder")
    parser.add_argument("--mixed_precision", default="auto", choices=PRECISIONS,
                        help="our step's precision (default auto, as the scripts); the baseline is fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (measure before using)")
    parser.add_argument("--proj_hidden", type=int, default=4096, help="stage 1 projector width")
    parser.add_argument("--baseline", action="store_true", help="also time the usual pipeline, same model and batch")
    parser.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers (default: all cores)")
    parser.add_argument("--profile", type=int, default=0,
                        help="also run our step this many times under torch.profiler and print where its time goes")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's peak in the step's precision (default: measured on a matrix product)")
    parser.add_argument("--flags", default="",
                        help="more flags of the stage's script, as one string (a recipe's: '--objective lead+dve "
                             "--unfreeze_encoder ...'); they shape our step, the network alone and the baseline")
    parser.add_argument("--network", action="store_true",
                        help="stage 2: also time the network alone on the same flags (the teacher's forward, the "
                             "student's forward and backward through a plain mean, the optimiser) on fixed views: "
                             "what the step costs beyond it is augmentation, loss and bookkeeping")
    b = parser.parse_args(argv)
    if b.network and b.stage != 2:
        parser.error("--network times stage 2's network alone (stage 1's loss is its network's output)")
    b.flags = b.flags.split()
    b.image_size = b.image_size or round(b.size * 4 / 3)
    return b


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: torch.device) -> float:
    """The allocator's peak on CUDA; elsewhere the process's peak resident set (it only grows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """What this device sustains on a large square matrix product in `dtype`: the ceiling a step can reach."""
    n = 8192 if device.type == "cuda" else 1024
    a, c = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ c
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ c
        reps += 1
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls of step(i) after `warmup` calls; the device is synchronised at both ends only."""
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    return time.perf_counter() - t0


def count_flops(step, i: int) -> int:
    with FlopCounterMode(display=False) as counter:
        step(i)
    return counter.get_total_flops()


# ------------------------------------------------------------------ ours: the scripts' own steps
def script_args(b, extra: list[str]):
    if b.stage == 1:
        return byol_pretrain.get_args_parser().parse_args(
            ["--arch", b.arch, "--crop_size", str(b.size), "--batch_size", str(b.batch), "--max_steps", "1000",
             "--mixed_precision", b.precision, "--proj_hidden", str(b.proj_hidden)] + extra)
    return dense_distill.get_args_parser().parse_args(
        ["--init_from", "unused", "--crop_size", str(b.size), "--batch_size", str(b.batch), "--max_steps", "1000",
         "--mixed_precision", b.precision] + extra)


def script_lr(args) -> float:
    return effective_lr(args.lr, args.batch_size, args.grad_accum)


def ours(b, cache: torch.Tensor, teacher: ResNetEncoder | None):
    """The step the stage's script runs, fed as its loop feeds it (common.training.local_batch on a tensor
    cache held in memory). Returns step(i) and the device."""
    accelerator, _ = make_accelerator(b.precision, 1)
    dev = accelerator.device
    n = len(cache)
    rows = TensorCache(Path("."), {"images": cache.numpy(), "landmarks": np.zeros((n, 0, 2), np.float32),
                                   "visible": np.zeros((n, 0), bool), "identity": np.arange(n),
                                   "rows": np.arange(n)}, {})
    args = script_args(b, b.flags)
    if b.stage == 1:
        model, target, opt = byol_pretrain.build(args, script_lr(args))
    else:
        model, opt = dense_distill.build(args, teacher, script_lr(args))
        teacher = teacher.to(dev, memory_format=torch.channels_last).eval().requires_grad_(False)
        chunk = auto_chunk(2 * b.batch, (b.size // 4) ** 2)
    total, warmup = schedule_steps(args.max_steps, args.epochs, args.warmup_epochs, 100)
    sched = warmup_cosine_schedule(opt, warmup, total)
    if b.compile:
        model = torch.compile(model)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    if b.stage == 1:
        target.to(dev).train()

    def step(i: int):
        images = local_batch(rows, b.batch, i, args.seed, accelerator)
        if b.stage == 1:
            return byol_pretrain.train_step(accelerator, model, target, opt, sched, images, args, i, total)
        return dense_distill.train_step(accelerator, model, teacher, opt, sched, images, args, i, chunk)
    return step, dev


def network_alone(b, teacher: ResNetEncoder):
    """Stage 2's network on the same flags and fixed views, nothing else: the teacher's forward where the step runs
    it, the student's forward and backward through a plain mean of its outputs, the optimiser. step(i), device."""
    accelerator, _ = make_accelerator(b.precision, 1)
    dev = accelerator.device
    args = script_args(b, b.flags)
    model, opt = dense_distill.build(args, teacher, script_lr(args))
    model, opt = accelerator.prepare(model, opt)
    teacher = teacher.to(dev, memory_format=torch.channels_last).eval().requires_grad_(False)
    views = torch.rand(2 * b.batch, 3, b.size, b.size, device=dev).contiguous(memory_format=torch.channels_last)
    needs_teacher = dense_distill.needs_teacher_maps(args)

    def step(i: int):
        maps = None
        with accelerator.autocast(), torch.no_grad():
            if needs_teacher:
                maps = teacher.layers(views)
        with accelerator.autocast():
            features, f = model(views, maps)
        accelerator.backward(features.float().mean() + f.float().mean())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, dev


# ------------------------------------------------------------------ the usual pipeline
class JpegViews(Dataset):
    """Decode one JPEG with PIL and apply each view's transforms to it, per sample (in a worker)."""

    def __init__(self, files: list[Path], transforms):
        self.files, self.transforms = files, transforms

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as f:
            img = f.convert("RGB")
        return tuple(t(img) for t in self.transforms)


def usual_transforms(cfg: ViewConfig):
    """BYOL's view pipeline as its PyTorch ports write it, with torchvision v2 on PIL images; blur sigma and
    kernel scaled from 224 px as ours are."""
    from torchvision.transforms import v2
    k, s = 2 * max(1, round(11 * cfg.size / 224)) + 1, cfg.size / 224
    return v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter),
        v2.RandomGrayscale(cfg.grey),
        v2.RandomApply([v2.GaussianBlur(k, (0.1 * s, 2.0 * s))], p=cfg.blur),
        v2.RandomSolarize(128, p=cfg.solarize),
        v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])


def write_jpegs(cache: torch.Tensor, folder: Path) -> list[Path]:
    files = []
    for i, img in enumerate(cache):
        files.append(folder / f"{i:06d}.jpg")
        Image.fromarray(rearrange(img, "c h w -> h w c").numpy()).save(files[-1], quality=95)
    return files


def forever(loader):
    while True:
        yield from loader


def baseline(b, files: list[Path], teacher: ResNetEncoder | None):
    """The usual step: fp32, NCHW, plain optimiser, EMA by a loop, loss.item() every step."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = b.workers if b.workers is not None else len(os.sched_getaffinity(0))
    loader = DataLoader(JpegViews(files, [usual_transforms(c) for c in view_configs(b.size)]), batch_size=b.batch,
                        shuffle=True, num_workers=workers, drop_last=True, pin_memory=dev.type == "cuda",
                        persistent_workers=workers > 0)
    batches = forever(loader)
    if b.stage == 1:
        args = script_args(b, b.flags + ["--no_channels_last", "--mixed_precision", "no"])
        model, target, opt = byol_pretrain.build(args, script_lr(args))
        total, _ = schedule_steps(args.max_steps, args.epochs, args.warmup_epochs, 100)
        model, target = model.to(dev).train(), target.to(dev).train()
        pairs = list(zip(*byol_pretrain.ema_pairs(model, target)))
    else:
        args = script_args(b, b.flags + ["--mixed_precision", "no"])
        model, opt = dense_distill.build(args, teacher, script_lr(args))
        model = model.to(dev, memory_format=torch.contiguous_format).train()
        teacher = teacher.to(dev, memory_format=torch.contiguous_format).eval().requires_grad_(False)
        chunk = auto_chunk(2 * b.batch, (b.size // 4) ** 2)

    def step(i: int):
        v1, v2 = (v.to(dev, non_blocking=True) for v in next(batches))
        if b.stage == 1:
            loss = model(v1, v2, target)
        else:
            views = torch.cat([v1, v2])
            with torch.no_grad():
                maps = teacher.layers(views)
                h = rearrange(teacher.hypercolumn_of(maps), "b c h w -> b (h w) c")
            loss = dense_distill.pair_loss(model(views, maps)[1], h, "views", args.tau, chunk)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if b.stage == 1:
            m = byol_pretrain.target_momentum(args, i, total)
            with torch.no_grad():
                for t, o in pairs:
                    t.mul_(m).add_(o, alpha=1 - m)
        return loss.item()
    return step, dev, workers, loader


def profile(step, steps: int, dev: torch.device, rows: int = 20) -> str:
    """The operators our step spends its time in (self time, the device's where it has one), over `steps` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for i in range(steps):
            step(1000 + i)
        sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def figures(b, seconds: float, flops: int, peak: float, memory: float) -> dict:
    achieved = flops * b.steps / seconds / 1e12
    return {"rate": b.steps * b.batch / seconds, "ms_per_step": seconds / b.steps * 1e3, "tflops": achieved,
            "gflops_per_step": flops / 1e9, "peak_tflops": peak, "peak_share": achieved / peak, "memory_gib": memory}


def line(name: str, stage: int, f: dict, dev) -> str:
    unit = "pairs/s" if stage == 1 else "images/s"
    return (f"{name:9s} {f['rate']:9.1f} {unit}  {f['ms_per_step']:7.0f} ms/step  {f['tflops']:8.3f} TFLOP/s "
            f"({100 * f['peak_share']:5.1f} % of {f['peak_tflops']:.3g})  "
            f"peak memory {f['memory_gib']:.2f} GiB ({dev})")


def measure(b, say=print) -> dict:
    """Time our step (and with b.baseline the usual one); {"ours": figures, "baseline": figures or None, ...}."""
    b.precision, reason = run_precision(b.mixed_precision, device_type())
    say(f"stage {b.stage}, {b.arch}, views {b.size} px from {b.image_size} px, batch {b.batch}, "
        f"{b.precision} ({reason}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    cache = render_uint8(sample_params(SyntheticSpec("pretrain", b.images, size=b.image_size)), b.image_size)
    teacher = ResNetEncoder(b.arch, input_size=b.size) if b.stage == 2 else None
    step, dev = ours(b, cache, teacher)
    flops = count_flops(step, 0)
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[b.precision]
    peak = b.peak_tflops or matmul_peak_tflops(dev, dtype)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    say(f"model FLOPs per step {flops / 1e9:.1f} G ({flops / b.batch / 1e9:.2f} G per sample); "
        f"device peak {peak:.3g} TFLOP/s ({'given' if b.peak_tflops else 'measured, matrix product'}, {dtype})")
    result = {"precision": b.precision, "flops_per_sample": flops / b.batch, "device": str(dev), "baseline": None,
              "ours": figures(b, timed(step, b.steps, b.warmup, dev), flops, peak, peak_memory_gib(dev))}
    say(line("ours", b.stage, result["ours"], dev))
    if b.profile:
        say(profile(step, b.profile, dev))
    if b.network:
        net, _ = network_alone(b, teacher)
        net_flops = count_flops(net, 0)
        result["network"] = figures(b, timed(net, b.steps, b.warmup, dev), net_flops, peak, peak_memory_gib(dev))
        say(line("network", b.stage, result["network"], dev))
        say(f"ours / network alone: {result['ours']['rate'] / result['network']['rate']:.2f} of its rate; "
            f"the network is {net_flops / flops:.2f} of our step's FLOPs")
    if not b.baseline:
        return result
    fp32_peak = b.peak_tflops if dtype == torch.float32 else matmul_peak_tflops(dev, torch.float32)
    del step                                     # ours' model and optimiser: not in the baseline's peak memory
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(cache, Path(tmp))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        step, dev, workers, loader = baseline(b, files, teacher)
        seconds = timed(step, b.steps, b.warmup, dev)
        result["baseline"] = figures(b, seconds, flops, fp32_peak or peak, peak_memory_gib(dev))
        del loader
    say(line("baseline", b.stage, result["baseline"], dev))
    say(f"ours / baseline: {result['ours']['rate'] / result['baseline']['rate']:.2f}x  (baseline: JPEG + PIL + "
        f"torchvision v2 per sample, {workers} DataLoader workers, fp32, NCHW)")
    return result


def main(argv: list[str] | None = None) -> dict:
    return measure(get_args(argv))


if __name__ == "__main__":
    main()
