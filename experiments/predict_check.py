"""regress.py --predict against regress.py's own score, on the same faces: each annotated image passed whole, its
face found by the detector and cropped by the detector's framing, against the benchmark's crop of the same image.
Also how many faces the detector finds, and the speed (faces per second on a folder; time to the first result).

    python experiments/predict_check.py --data ../shared/data         # the real-face recipe's regressors

- 5 points, the AFLW test faces (MTFL's testing.txt, 150 x 150 crops): the benchmark crop is the whole image
  (protocol dve: 100 -> 70, as regress.py's test split); % of the eye centres' distance.
- 68 points, the validation faces of HELEN's training set (readers.pts_val; regress68's validation split is these and
  AFW's): the benchmark crop is box_300w of the points; % of the outer eye corners' distance.
A face counts as found when a detection's framed box overlaps the benchmark's face box (mtfl_box / box_300w) by
IoU >= 0.5; both errors are averaged over the found faces.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import detect  # noqa: E402
from common.data.readers import _mtfl_records, _read_pts, box_300w, mtfl_box, pts_photo, pts_val  # noqa: E402
from common.imageio import open_rgb  # noqa: E402
from common.predict import DEFAULT_MODELS, Predictor, predict_files  # noqa: E402


def errors(predictor: Predictor, faces: list, eyes: tuple[int, int]) -> dict:
    """Per image (path, points [K, 2], benchmark crop box, face box): the error of the benchmark crop and of the
    detector's crop of the face (% IOD), where the detector finds it."""
    bench, found = [], []
    for path, points, crop_box, face_box in faces:
        image = open_rgb(path)
        iod = np.linalg.norm(points[eyes[0]] - points[eyes[1]])
        err = lambda faces_: 100 * np.linalg.norm(np.array(faces_[0]["points"]) - points, axis=1).mean() / iod  # noqa
        crops, scale, offset = predictor.crops(image, [crop_box])
        bench.append(err(predictor.place([(crop_box, 1.0)], predictor.points(crops).numpy(), scale, offset)))
        detected, _ = predictor(image)
        best = max(detected, key=lambda f: detect.overlap(f["box"], face_box), default=None)
        found.append(err([best]) if best is not None and detect.overlap(best["box"], face_box) >= 0.5 else np.nan)
    bench, found = np.array(bench), np.array(found)
    hit = ~np.isnan(found)
    return {"n": len(faces), "found": hit.mean() * 100, "bench_all": bench.mean(), "bench_found": bench[hit].mean(),
            "predict_found": found[hit].mean()}


def aflw_faces(mtfl: Path) -> list:
    out = []
    for rec in _mtfl_records(mtfl, "testing.txt"):
        w, h = open_rgb(rec["image"]).size
        out.append((rec["image"], rec["landmarks"], [-0.5, -0.5, w - 0.5, h - 0.5], mtfl_box(rec["landmarks"])))
    return out


def helen_val_faces(helen: Path) -> list:
    out = []
    for p in sorted(helen.rglob("*.pts")):
        if pts_val(pts_photo(p)):
            pts = _read_pts(p)
            box = box_300w([*(pts + 1).min(0), *(pts + 1).max(0)])
            out.append((p.with_suffix(".jpg"), pts, box, box))
    return out


def speed(predictor: Predictor, folder: list[Path], one: Path, model: str, detector: str) -> dict:
    counts = predict_files(folder, predictor, None, None)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "regress.py", "--predict", str(Path(one).resolve()), "--model", model,
                        "--detector", detector, "--json", f"{tmp}/one.jsonl"], check=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[1])
        first = time.perf_counter() - t0
    return {"images": counts["images"], "faces": counts["faces"], "faces_per_s": counts["faces"] / counts["seconds"],
            "images_per_s": counts["images"] / counts["seconds"], "first_result_s": first}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--detector", default=detect.DEFAULT, choices=sorted(detect.DETECTORS))
    parser.add_argument("--speed_images", type=int, default=300, help="AFW + HELEN photos for faces per second")
    parser.add_argument("--model5", default=DEFAULT_MODELS[5], help="the 5-point regressor's final/")
    parser.add_argument("--model68", default=DEFAULT_MODELS[68], help="the 68-point regressor's final/")
    parser.add_argument("--only", type=int, choices=[5, 68], default=None, help="one of the two, and no speed run")
    args = parser.parse_args(argv)
    root = Path(args.data)
    models = {5: args.model5, 68: args.model68}
    for k, faces, eyes in ((5, lambda: aflw_faces(root / "mtfl"), (0, 1)),
                           (68, lambda: helen_val_faces(root / "helen_train"), (36, 45))):
        if args.only not in (None, k):
            continue
        predictor = Predictor.load(models[k], args.detector)
        r = errors(predictor, faces(), eyes)
        print(f"{k} points ({models[k]}, detector {args.detector}): {r['n']} faces, found {r['found']:.1f} %; "
              f"% IOD benchmark crop {r['bench_all']:.2f} (all), {r['bench_found']:.2f} (found); detector's crop "
              f"{r['predict_found']:.2f} (found): {100 * (r['predict_found'] / r['bench_found'] - 1):+.1f} %",
              flush=True)
    if args.only:
        return
    photos = sorted((root / "afw").glob("*.jpg")) + sorted((root / "helen_train").glob("*.jpg"))
    s = speed(Predictor.load(args.model5, args.detector), photos[:args.speed_images], photos[0], args.model5,
              args.detector)
    print(f"speed: {s['images']} photos, {s['faces']} faces: {s['faces_per_s']:.1f} faces/s "
          f"({s['images_per_s']:.1f} photos/s); one photo from the command line: {s['first_result_s']:.2f} s")


if __name__ == "__main__":
    main()
