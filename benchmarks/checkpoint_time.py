"""What resuming costs: the time to write and read one stage-1 checkpoint (common/checkpoint.py: model, EMA
target and optimiser state as safetensors, the rest as JSON), and its size.

    .venv/bin/python benchmarks/checkpoint_time.py --arch resnet50 --optimizer sgd

The state is the paper's stage 1 (ResNet-50, projector 4096 -> 256) after one step, so the optimiser's
buffers exist. Prints figures; nothing is asserted (they depend on the machine and its disk).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import byol_pretrain  # noqa: E402
from common.checkpoint import load_state, save_state  # noqa: E402
from common.optim import warmup_cosine_schedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "lars", "adam"])
    parser.add_argument("--repeats", type=int, default=3)
    cli = parser.parse_args()
    args = byol_pretrain.get_args_parser().parse_args(["--arch", cli.arch, "--optimizer", cli.optimizer,
                                                       "--batch_size", "4", "--crop_size", "64"])
    model, target, opt = byol_pretrain.build(args, 1e-3)
    sched = warmup_cosine_schedule(opt, 2, 10)
    loss = model(torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64), target)   # one step: optimiser buffers
    loss.backward()
    opt.step()
    sched.step()
    modules = {"model": model, "target": target}
    with tempfile.TemporaryDirectory() as tmp:
        writes, reads = [], []
        for i in range(cli.repeats):
            folder = Path(tmp) / f"step_{i}"
            t0 = time.perf_counter()
            save_state(folder, modules, opt, sched, {"step": 1})
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_state(folder, modules, opt, sched, "cpu")
            reads.append(time.perf_counter() - t0)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"{cli.arch} stage 1, {cli.optimizer}: checkpoint {size:.0f} MB, write {min(writes):.2f} s, "
          f"read {min(reads):.2f} s (best of {cli.repeats})")


if __name__ == "__main__":
    main()
