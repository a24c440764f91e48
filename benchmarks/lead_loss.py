"""LEAD's loss (common.losses.lead_loss), full [B, N, N] path against checkpointed chunks of query rows:
time per forward + backward, and peak memory.

    .venv/bin/python benchmarks/lead_loss.py --device cuda                     # B,N,C_h = 16,576,3840 and 2,3136,3840
    .venv/bin/python benchmarks/lead_loss.py --device cuda --h_dtype bf16 --chunks 64 512
    .venv/bin/python benchmarks/lead_loss.py --sizes 2,64,128 --chunks 16      # seconds on a CPU

Peak memory is measured on CUDA (torch.cuda.max_memory_allocated, above what the inputs already hold). On the CPU
nothing measures it here: the figure printed is the size of one [B, rows, N] fp32 matrix, of which the loss holds
a few at once. Prints figures; nothing is asserted (they depend on the machine).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.losses import auto_chunk, lead_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def size(text: str) -> tuple[int, int, int]:
    batch, n, c_h = (int(v) for v in text.split(","))
    return batch, n, c_h


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(inputs: list[torch.Tensor], chunk: int | None, repeats: int, device: torch.device) -> tuple[float, int]:
    """Median seconds of forward + backward, after one warm-up, and the peak bytes above the inputs (CUDA only)."""
    f_i, f_j, h_i, h_j = inputs
    times, peak = [], -1
    for step in range(repeats + 1):
        f_i.grad = f_j.grad = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        sync(device)
        t0 = time.perf_counter()
        lead_loss(f_i, f_j, h_i, h_j, chunk=chunk).backward()
        sync(device)
        if step:
            times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device) - base)
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=size, nargs="+", default=[(16, 576, 3840), (2, 3136, 3840)],
                        help="B,N,C_h triples: batch, positions per image (24x24 = 576, 56x56 = 3136), teacher width")
    parser.add_argument("--c_f", type=int, default=64, help="student feature width")
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256], help="query rows per chunk to time")
    parser.add_argument("--h_dtype", default="fp32", choices=list(DTYPES), help="teacher features' dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (after one warm-up), median reported")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"lead_loss forward + backward on {device} ({where}), C_f {args.c_f}, h {args.h_dtype}, "
          f"median of {args.repeats}")
    print("peak: " + ("measured, torch.cuda.max_memory_allocated above the inputs" if device.type == "cuda" else
                      "not measured on the CPU; 'matrix' is one [B, rows, N] fp32 tensor, the loss holds a few"))
    for batch, n, c_h in args.sizes:
        g = torch.Generator(device).manual_seed(0)
        f_i, f_j = (torch.randn(batch, n, args.c_f, device=device, generator=g, requires_grad=True) for _ in range(2))
        h_i, h_j = (torch.randn(batch, n, c_h, device=device, generator=g).to(DTYPES[args.h_dtype]) for _ in range(2))
        print(f"B {batch}, N {n}, C_h {c_h} (auto_chunk with 1 GiB: {auto_chunk(batch, n)})")
        for chunk in [None] + [c for c in args.chunks if c < n]:
            seconds, peak = run([f_i, f_j, h_i, h_j], chunk, args.repeats, device)
            matrix = batch * min(chunk or n, n) * n * 4 / 2**20
            memory = f"peak {peak / 2**20:8.1f} MiB, " if peak >= 0 else ""
            print(f"  {'full' if chunk is None else f'chunk {chunk}':>10}: {seconds * 1e3:8.1f} ms, {memory}"
                  f"matrix {matrix:8.3g} MiB")


if __name__ == "__main__":
    main()
