"""Prepare a data set: generate (synthetic faces) or read it, build its uint8 tensor cache, and draw
a grid of samples with their landmarks.

    python prepare_data.py                                  # synthetic faces, every split, samples.png
    python prepare_data.py --variant unaligned --landmarks 68 --preview runs/data/unaligned.png
    python prepare_data.py --dataset mafl --data_dir data/celeba --splits train,test

Every other script prepares what it needs on first use; this one does it up front and shows it.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from common.cli import HelpWithDefaults, at_least, data_args, from_flags, run_cli
from common.data import DataSpec, load_tensors, synthetic
from common.errors import UserError
from common.viz import landmark_grid

logger = logging.getLogger("lead")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Prepare data and preview it", parents=[data_args()],
                                     formatter_class=HelpWithDefaults)
    g = parser.add_argument_group("Output")
    g.add_argument("--splits", default=None,
                   help=f"comma-separated splits; default: {','.join(synthetic.SPLITS)} for synthetic, train,val for "
                        "ptsfolder (it has no test split), train,test otherwise")
    g.add_argument("--preview", default="runs/data/samples.png", help="where to write the sample grid (PNG)")
    g.add_argument("--preview_split", default=None, help="split shown in the grid (default: the first of --splits)")
    g.add_argument("--preview_count", type=at_least(1), default=16, help="images in the grid")
    return parser


def main(args) -> dict:
    default = {"synthetic": ",".join(synthetic.SPLITS), "ptsfolder": "train,val"}.get(args.dataset, "train,test")
    splits = (args.splits or default).split(",")
    shown = args.preview_split or splits[0]
    if shown not in splits:
        raise UserError(f"--preview_split {shown} is not among --splits {','.join(splits)}")
    table = Table("split", "images", "size", "skipped", "seconds", title=f"{args.dataset} data")
    caches = {}
    for split in splits:
        t0 = time.perf_counter()
        caches[split] = cache = load_tensors(from_flags(DataSpec, vars(args)), split)
        table.add_row(split, str(len(cache)), f"{cache.size}px", str(len(cache.meta.get("skipped", []))),
                      f"{time.perf_counter() - t0:.1f}")
    Console().print(table)
    cache = caches[shown]
    n = min(args.preview_count, len(cache))
    idx = np.linspace(0, len(cache) - 1, n).round().astype(int)   # spread over the split: many identities
    lm = cache.landmarks[idx] if cache.landmarks.shape[1] else None
    grid = landmark_grid(cache.images[idx], lm, cache.visible[idx] if lm is not None else None)
    Path(args.preview).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.preview)
    logger.info("wrote %s (%d images of %s)", args.preview, n, shown)
    return {split: len(c) for split, c in caches.items()}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
