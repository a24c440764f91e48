"""Is the evaluation path where a lead+dve student loses same-face precision? Its 64 channels are two halves trained
by two losses (LEAD's first, DVE's last --dve_channels), and matching reads them as one cosine. This reads them
whole, each half alone, and each half normalised on its own (ContrastLandmark's per-layer normalisation of a
hypercolumn), with match.py --benchmark's protocol on MTFL's validation split only (issue 30).

    python experiments/eval_path.py --model runs/scaling/resnet18_64_x0.5/distill/final --data ../shared/data/mtfl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data import DataSpec, load_tensors  # noqa: E402
from common.features import load_source  # noqa: E402
from common.probe import matching_probe, photo_probe  # noqa: E402


def read_ways(source, dve_channels: int) -> dict:
    """Each way of reading the student's features: images [N, 3, s, s] in [0, 1] -> maps [N, C', h, w]."""
    k = source.dim - dve_channels

    @torch.no_grad()
    def whole(x):
        return source(x).float()

    def unit_halves(x):
        return torch.cat([F.normalize(h, dim=1) for h in whole(x).split(k, 1)], 1)

    return {"whole (match.py)": whole, "LEAD's channels alone": lambda x: whole(x)[:, :k],
            "DVE's channels alone": lambda x: whole(x)[:, k:], "each half scaled to unit length first": unit_halves}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a stage-2 final/ trained with --objective lead+dve")
    p.add_argument("--data", required=True, help="MTFL as shipped (its validation split is read)")
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    dve = json.loads((Path(args.model).parent / "args.json").read_text()).get("dve_channels", 0)
    if not dve:
        sys.exit(f"error: {args.model} was not trained with --dve_channels: it has one half")
    source = load_source(args.model).eval()
    cache = load_tensors(DataSpec(dataset="mtfl", data_dir=args.data, image_size=128), "val")
    print(f"| {args.model}, read as | same identity, % IOD | different identity, % IOD | photo, px |")
    print("| --- | --- | --- | --- |")
    for name, way in read_ways(source, dve).items():
        r = {**matching_probe(way, cache, args.size, pairs=args.pairs), **photo_probe(way, args.size, args.pairs // 2)}
        print(f"| {name} | {r['same_iod']:.2f} | {r['diff_iod']:.2f} | {r['photo_px']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
