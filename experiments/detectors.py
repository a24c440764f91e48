"""Which face detector for regress.py --predict: how often each candidate finds the annotated face, and how close its
framed box comes to the crop the regressors were trained on. Training labels only choose; test faces are reported.

    python experiments/detectors.py --data ../shared/data          # ~15 min on 2 cores

Candidates: detectors whose weights a package from the index ships (none fetches weights at run time):
- haar: OpenCV's frontal-face Haar cascade (opencv-python-headless bundles it), the detector of match.py;
- haar_alt2: OpenCV's alt2 frontal cascade (the same package);
- haar+profile: haar, and OpenCV's profile cascade on the image and its mirror (turned faces), merged;
- hog: dlib's HOG + linear SVM frontal detector (dlib-bin: dlib's own wheels; the model is compiled in).
Every image is scaled as common/detect.py's SCALING says for each detector.

1. Framing, per detector, on every 20th MTFL training photo (training labels): the crop the regressors are trained
   on (readers.mtfl_box, the 300-W rule from the 5 points) against the detector's largest box: median side ratio
   and centre drop, as common/detect.py's FRAMING.
2. Found, on the annotated face of AFW and HELEN's training faces (68 points; the reference crop box_300w, 300-W's
   rule) and of the AFLW test faces (5 points; mtfl_box), every image passed whole: a face is found when some
   detection, framed by step 1, overlaps the reference crop by IoU >= 0.5; for found faces the framed box's side
   over the reference's and its centre's distance in reference sides; other boxes per image; ms per image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import detect  # noqa: E402
from common.data.readers import _mtfl_records, _read_pts, box_300w, mtfl_box  # noqa: E402
from common.imageio import open_rgb  # noqa: E402


def fit_framing(name: str, mtfl: Path, every: int) -> tuple[float, float, int, int]:
    """The detector's FRAMING (scale, shift) on MTFL training photos (largest box against mtfl_box), misses, n."""
    scale, shift, missed, records = [], [], 0, _mtfl_records(mtfl, "training.txt")[::every]
    for rec in records:
        boxes = detect.raw_faces(open_rgb(rec["image"]), name)
        if not boxes:
            missed += 1
            continue
        x0, y0, x1, y1, _ = max(boxes, key=lambda b: b[2] - b[0])
        r0, ry0, r1, ry1 = mtfl_box(rec["landmarks"])
        scale.append((r1 - r0) / (x1 - x0))
        shift.append(((ry0 + ry1) - (y0 + y1)) / 2 / (x1 - x0))
    return float(np.median(scale)), float(np.median(shift)), missed, len(records)


def faces_with_reference(root: Path, every_aflw: int) -> dict[str, list[tuple[Path, list[float]]]]:
    """Per data set, (image, reference crop box) of its annotated face."""
    sets = {}
    for name in ("afw", "helen_train"):
        if (root / name).is_dir():
            sets[name] = [(p.with_suffix(".jpg") if p.with_suffix(".jpg").exists() else p.with_suffix(".png"),
                           box_300w([*(pts + 1).min(0), *(pts + 1).max(0)]))
                          for p in sorted((root / name).rglob("*.pts")) for pts in [_read_pts(p)]]
    if (root / "mtfl" / "testing.txt").is_file():
        sets["aflw_test"] = [(r["image"], mtfl_box(r["landmarks"]))
                             for r in _mtfl_records(root / "mtfl", "testing.txt")[::every_aflw]]
    return sets


def score(name: str, faces: list) -> dict:
    found, sides, offsets, others, seconds = 0, [], [], 0, 0.0
    for path, ref in faces:
        img = open_rgb(path)
        t0 = time.perf_counter()
        boxes = [detect.frame(b, name) for b in detect.raw_faces(img, name)]
        seconds += time.perf_counter() - t0
        best = max(boxes, key=lambda b: detect.overlap(b, ref), default=None)
        if best is not None and detect.overlap(best, ref) >= 0.5:
            found += 1
            side = ref[2] - ref[0]
            sides.append((best[2] - best[0]) / side)
            offsets.append(np.hypot((best[0] + best[2] - ref[0] - ref[2]) / 2,
                                    (best[1] + best[3] - ref[1] - ref[3]) / 2) / side)
        others += len(boxes) - (best is not None and detect.overlap(best, ref) >= 0.5)
    q = lambda x: "{:.2f} ({:.2f}-{:.2f})".format(*np.percentile(x, [50, 25, 75])) if x else "-"  # noqa: E731
    return {"found": 100 * found / len(faces), "side": q(sides), "offset": q(offsets),
            "others": others / len(faces), "ms": 1000 * seconds / len(faces), "n": len(faces)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="holds mtfl/, afw/, helen_train/")
    parser.add_argument("--detectors", nargs="+", default=list(detect.DETECTORS))
    parser.add_argument("--every", type=int, default=20, help="every n-th MTFL training photo for the framing")
    parser.add_argument("--every_aflw", type=int, default=3, help="every n-th AFLW test face")
    args = parser.parse_args(argv)
    root = Path(args.data)
    sets = faces_with_reference(root, args.every_aflw)
    print("| detector | framing: scale, shift (missed of n MTFL training photos) | "
          + " | ".join(f"{s}: found %, side ratio, centre offset, other boxes, ms" for s in sets) + " |")
    print("| --- | --- |" + " --- |" * len(sets))
    for name in args.detectors:
        fs, fsh, missed, n = fit_framing(name, root / "mtfl", args.every)
        detect.FRAMING[name] = (fs, fsh)                     # scored with its own framing, as measured
        cells = []
        for faces in sets.values():
            r = score(name, faces)
            cells.append(f"{r['found']:.1f} % of {r['n']}, {r['side']}, {r['offset']}, {r['others']:.2f}, "
                         f"{r['ms']:.0f}")
        print(f"| {name} | {fs:.3f}, {fsh:.3f} ({missed} of {n}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
