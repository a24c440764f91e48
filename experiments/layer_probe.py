"""Which layers of a stage-1 encoder match across identities? The matching probe on hypercolumns
built from subsets of layers 1-4 (each L2-normalised), trained vs. the same network untrained:

    .venv/bin/python experiments/layer_probe.py runs/x_pixel_a/final --size 64 --pairs 100
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import data_args, from_flags  # noqa: E402
from common.data import DataSpec, load_tensors  # noqa: E402
from common.models import ResNetEncoder  # noqa: E402
from common.probe import matching_probe, photo_probe  # noqa: E402

SUBSETS = ((0, 1, 2, 3), (1, 2, 3), (2, 3), (3,), (0,), (1,))


def extractor(net: ResNetEncoder, keep: tuple[int, ...]):
    @torch.no_grad()
    def extract(x: torch.Tensor) -> torch.Tensor:
        maps = net.layers(x)
        size = maps[0].shape[-2:]
        return torch.cat([F.normalize(F.interpolate(maps[i], size=size, mode="bilinear", align_corners=False), dim=1)
                          for i in keep], 1)
    return extract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, parents=[data_args()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a stage-1 final/ folder")
    parser.add_argument("--size", type=int, default=64, help="probe image side (the run's --crop_size)")
    parser.add_argument("--pairs", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cache = load_tensors(from_flags(DataSpec, vars(args)), "val")
    trained = ResNetEncoder.from_pretrained(args.model).eval()
    torch.manual_seed(0)
    random = ResNetEncoder(trained.arch, last_stride=trained.last_stride).eval()
    print("| layers | network | same % IOD | different % IOD (>1 IOD) | astronaut px |")
    print("| --- | --- | --- | --- | --- |")
    for keep in SUBSETS:
        for name, net in (("trained", trained), ("untrained", random)):
            f = extractor(net, keep)
            r = {**matching_probe(f, cache, args.size, pairs=args.pairs),
                 **photo_probe(f, args.size, pairs=args.pairs // 2)}
            print(f"| {'+'.join(str(i + 1) for i in keep)} | {name} | {r['same_iod']:.1f} | "
                  f"{r['diff_iod']:.1f} ({100 * r['diff_miss']:.0f} %) | {r['photo_px']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
