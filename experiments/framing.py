"""Where the framing constants of the real-face crops come from, from training labels only (never a test split).

    python experiments/framing.py --data ../shared/data

1. FRAME_SIDE, FRAME_DROP (common/data/readers.py): the 300-W protocol's crop (box_300w, DVE's crop of the 68
   points' box) of the AFW and HELEN training faces, measured against their 5 points (eye centres = the mean of each
   eye's six contour points, nose tip 30, mouth corners 48 and 54): its side over max(inter-ocular, eye-centre to
   mouth-centre distance), and how far its centre lies below the 5 points' mean, in that distance. MTFL's training
   photos, which have only 5 points, are cropped with these, so that they are framed as 300-W frames a face.
Prints medians and quartiles. (The detectors' framing of that crop, common/detect.py's FRAMING: experiments/detectors.py.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.faces import mafl_points  # noqa: E402
from common.data.readers import _read_pts, box_300w  # noqa: E402


def w300_framing(folders: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Per face: box_300w's side and its centre's drop below the 5 points' mean, in max(IOD, eye-to-mouth)."""
    side, drop = [], []
    for folder in folders:
        for path in sorted(folder.rglob("*.pts")):
            pts = _read_pts(path)
            five = mafl_points(torch.from_numpy(pts), torch.ones(68, dtype=torch.bool))[0].numpy()
            size = max(np.linalg.norm(five[0] - five[1]),
                       np.linalg.norm(five[:2].mean(0) - five[3:].mean(0)))
            box = np.array(box_300w([*(pts + 1).min(0), *(pts + 1).max(0)]))       # 1-based, as 300-W's boxes
            side.append((box[2] - box[0]) / size)
            drop.append(((box[1] + box[3]) / 2 - five[:, 1].mean()) / size)
    return np.array(side), np.array(drop)


def quartiles(x: np.ndarray) -> str:
    q1, q2, q3 = np.percentile(x, [25, 50, 75])
    return f"median {q2:.3f} (quartiles {q1:.3f}-{q3:.3f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="holds afw/, helen_train/ and mtfl/")
    args = parser.parse_args(argv)
    root = Path(args.data)
    folders = [root / f for f in ("afw", "helen_train") if (root / f).is_dir()]
    if not folders:
        raise SystemExit(f"error: --data {root}: neither afw/ nor helen_train/ is there")
    side, drop = w300_framing(folders)
    print(f"300-W framing of {len(side)} faces ({', '.join(f.name for f in folders)}), in max(IOD, eye-to-mouth):")
    print(f"  side {quartiles(side)}; centre below the 5 points' mean {quartiles(drop)}")

if __name__ == "__main__":
    main()
