"""How fast the synthetic faces are made: generation alone, then generation + writing both caches.

    .venv/bin/python benchmarks/synthetic_speed.py                 # 128 px, 2 worker processes
    .venv/bin/python benchmarks/synthetic_speed.py --num_images 4000 --workers 2 --variant unaligned

Prints images per second; nothing is asserted (timings depend on the machine).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data import synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=3200)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variant", default="aligned", choices=["aligned", "unaligned"])
    args = parser.parse_args()
    spec = synthetic.SyntheticSpec(split="pretrain", num_images=args.num_images, variant=args.variant,
                                   size=args.image_size, seed=12345)
    rows = []
    t0 = time.perf_counter()
    n, first = 0, None
    for _, imgs, _ in synthetic.iter_rendered(spec, args.workers, encode=False):
        if first is None:  # steady state: from the first batch on, without the workers' start
            first, n_first = time.perf_counter(), len(imgs)
        n += len(imgs)
    end = time.perf_counter()
    rows.append(("generation (uint8 tensors)", n, end - t0))
    rows.append(("  the same, steady state", n - n_first, end - first))
    t0 = time.perf_counter()
    n = sum(len(imgs) for _, imgs, _ in synthetic.iter_rendered(spec, args.workers, encode=True))
    rows.append(("generation + PNG encoding", n, time.perf_counter() - t0))
    tmp = Path(tempfile.mkdtemp())
    try:
        seconds = synthetic.build(spec, tmp / "split", args.workers)
        rows.append(("generation + writing both caches", args.num_images, seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.num_images} images, {args.image_size} px, {args.variant}, {args.workers} worker processes "
          "(times include starting the workers)")
    for name, n, s in rows:
        print(f"  {name:34s} {n / s:7.1f} images/s  ({s:.1f} s)")


if __name__ == "__main__":
    main()
