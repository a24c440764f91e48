"""Training throughput of stage 2: the full LEAD step (uint8 batch -> two views on the device ->
frozen teacher's layers and hypercolumn -> FPN decoder and head -> LEAD loss -> optimiser), in
images per second (each image gives two views).

    .venv/bin/python benchmarks/distill_throughput.py --arch resnet18 --size 64 --batch 32
    .venv/bin/python benchmarks/distill_throughput.py --arch resnet50 --size 96 --batch 256 --mixed_precision bf16

The teacher is an untrained network of the given arch (the cost does not depend on its weights).
Prints figures; nothing is asserted (they depend on the machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dense_distill  # noqa: E402
from common.losses import auto_chunk  # noqa: E402
from common.models import ResNetEncoder  # noqa: E402
from common.training import make_accelerator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="view side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--pairs", default="views", choices=dense_distill.PAIRS)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    b = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ResNetEncoder(b.arch).save_pretrained(tmp)
        args = dense_distill.get_args_parser().parse_args(
            ["--init_from", tmp, "--crop_size", str(b.size), "--batch_size", str(b.batch), "--max_steps", "1000",
             "--pairs", b.pairs, "--mixed_precision", b.mixed_precision])
        teacher = dense_distill.load_teacher(tmp)
    accelerator = make_accelerator(b.mixed_precision, 1)
    model, opt, sched, _ = dense_distill.build(args, teacher, steps_per_epoch=100)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    teacher = teacher.to(accelerator.device, memory_format=torch.channels_last).eval().requires_grad_(False)
    chunk = auto_chunk(b.batch, (b.size // 4) ** 2)
    source = round(b.size * 4 / 3)  # the cached images are larger than the views
    images = torch.randint(0, 256, (b.batch, 3, source, source), dtype=torch.uint8).to(accelerator.device)
    for step in range(b.steps + 2):
        if step == 2:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = dense_distill.train_step(accelerator, model, teacher, opt, sched, images, args, step, chunk)
    loss.item()
    seconds = time.perf_counter() - t0
    print(f"{b.arch} views {b.size} px, batch {b.batch}, pairs {b.pairs}, {b.mixed_precision}, chunk {chunk}, "
          f"{accelerator.device} ({torch.get_num_threads()} threads): {b.steps * b.batch / seconds:.1f} images/s, "
          f"{seconds / b.steps * 1e3:.0f} ms/step")


if __name__ == "__main__":
    main()
