"""Training throughput of stage 1: the full BYOL step (uint8 batch -> both views on the device ->
online forward/backward -> optimiser -> EMA of the target), in image pairs per second.

    .venv/bin/python benchmarks/byol_throughput.py --arch resnet18 --size 64 --batch 64
    .venv/bin/python benchmarks/byol_throughput.py --arch resnet50 --size 96 --batch 32 --mixed_precision bf16

Prints figures; nothing is asserted (they depend on the machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import byol_pretrain  # noqa: E402
from common.training import make_accelerator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="view side")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--no_channels_last", action="store_true")
    parser.add_argument("--objective", default="byol", choices=byol_pretrain.OBJECTIVES)
    parser.add_argument("--proj_hidden", type=int, default=4096)
    b = parser.parse_args()
    args = byol_pretrain.get_args_parser().parse_args(
        ["--arch", b.arch, "--crop_size", str(b.size), "--batch_size", str(b.batch), "--max_steps", "1000",
         "--mixed_precision", b.mixed_precision, "--objective", b.objective, "--proj_hidden", str(b.proj_hidden)]
        + (["--no_channels_last"] if b.no_channels_last else []))
    accelerator = make_accelerator(b.mixed_precision, 1)
    model, target, opt, sched, total = byol_pretrain.build(args, steps_per_epoch=100)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    target.to(accelerator.device).train()
    source = round(b.size * 4 / 3)  # the cached images are larger than the views
    images = torch.randint(0, 256, (b.batch, 3, source, source), dtype=torch.uint8).to(accelerator.device)
    for step in range(b.steps + 2):
        if step == 2:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = byol_pretrain.train_step(accelerator, model, target, opt, sched, images, args, step, total)
    loss.item()
    seconds = time.perf_counter() - t0
    layout = "NCHW" if b.no_channels_last else "channels-last"
    print(f"{b.arch} views {b.size} px, batch {b.batch}, {b.mixed_precision}, {layout}, {accelerator.device} "
          f"({torch.get_num_threads()} threads): {b.steps * b.batch / seconds:.1f} pairs/s, "
          f"{seconds / b.steps * 1e3:.0f} ms/step")


if __name__ == "__main__":
    main()
