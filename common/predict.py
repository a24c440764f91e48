"""Landmarks on photos as people have them (regress.py --predict): every face the detector finds, cropped as the
regressor's training faces were, its points mapped back to the photo's own pixels.

    predictor = Predictor.load("runs/demo_real/regress/final")
    faces, skipped = predictor(open_rgb("photo.jpg", exif=True))   # [{"box", "points", "score"}], [{"box", "reason"}]

The regressor's final/config.json names its feature model (features_from) and its input: the face box (the 300-W
framing that common/detect.py's FRAMING gives from a detector's box) resized to `resize` and centre-cropped to
`crop` (common/protocols.py), exactly as regress.py's training crops.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import detect
from .errors import UserError
from .features import FeatureSource, load_model, read_config
from .imageio import IMAGE_EXTS, BadImage, crop_resize, open_rgb
from .models import LandmarkRegressor, stage_of, to_pixels

# the demo's regressors on real faces (bash demo.sh --real DIR), the defaults of --model by --landmarks
DEFAULT_MODELS = {5: "runs/demo_real/regress/final", 68: "runs/demo_real/regress68/final"}
MIN_FACE = 16          # a detected face narrower than this many pixels of the photo is reported, not placed


def landmark_set(num_points: int, dataset: str) -> str:
    """The JSON lines' name of a regressor's points: their order and meaning."""
    if num_points == 5 and dataset != "synthetic":
        return "mtfl-5"          # left eye, right eye, nose, left and right mouth corner (MAFL, MTFL, AFLW_M)
    if num_points == 68:
        return "300w-68"         # the 300-W markup, 0-based here
    return f"{dataset or 'custom'}-{num_points}"


def default_model(landmarks: int) -> str:
    path = DEFAULT_MODELS[landmarks]
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"no --model given, and {path} (the real-face recipe's {landmarks}-point regressor) does not "
                        "exist: run `bash demo.sh --real DIR` first, or pass --model (a regressor's final/ or Hub id)")
    return path


@dataclass
class Predictor:
    regressor: LandmarkRegressor
    source: FeatureSource
    landmarks: str
    detector: str = detect.DEFAULT
    batch: int = 32

    @classmethod
    def load(cls, model: str, detector: str = detect.DEFAULT, batch: int = 32, device: str = "cpu") -> "Predictor":
        """A regressor's final/ folder or Hub id, and the feature model it names; one-line errors otherwise."""
        config = read_config(model)
        stage = stage_of(config)
        if stage != "regressor":
            what = {"encoder": "a stage-1 encoder", "extractor": "a stage-2 dense model"}.get(stage, "not a model")
            raise UserError(f"--model {model}: {what}, not a landmark regressor (give the final/ that regress.py "
                            "writes; its features come with it)")
        if not config.get("resize") or not config.get("features_from"):
            raise UserError(f"--model {model}: its config.json does not say its input (features_from, resize, crop); "
                            "it predates --protocol: train it again with regress.py")
        if config["features_from"].partition(":")[0] in ("pca", "nmf"):
            raise UserError(f"--model {model}: its features ({config['features_from']}) are fitted on its training "
                            "images, which a prediction does not have: use a regressor on a model's own features")
        regressor = LandmarkRegressor.from_pretrained(model).eval().to(device)
        source = load_model(config["features_from"]).eval().to(device)
        if source.dim != regressor.heatmaps.in_channels:
            raise UserError(f"--model {model}: its features ({config['features_from']}) are {source.dim}-d, the "
                            f"regressor expects {regressor.heatmaps.in_channels}")
        return cls(regressor, source, landmark_set(regressor.num_points, config.get("dataset", "")), detector, batch)

    @property
    def device(self) -> torch.device:
        return self.regressor.mix.device

    def crops(self, image: Image.Image, boxes: list) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Each box's crop at the protocol's input: uint8 [F, 3, crop, crop], and per face the affine map (scale [F, 2],
        offset [F, 2]) from photo pixels to crop pixels."""
        r, c = self.regressor.resize, self.regressor.crop
        top = (r - c) // 2
        out = [crop_resize(image, box, r) for box in boxes]
        arrays = np.stack([a[:, top:top + c, top:top + c] for a, _, _ in out])
        return torch.from_numpy(arrays), np.stack([s for _, s, _ in out]), np.stack([o - top for _, _, o in out])

    @torch.no_grad()
    def points(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 crops [F, 3, c, c] -> points [F, K, 2] in crop pixels (pixel centres)."""
        out = []
        for s in range(0, len(crops), self.batch):
            x = crops[s:s + self.batch].to(self.device).float() / 255
            unit = self.regressor(self.source(x))[0].float().cpu()
            out.append(to_pixels(unit, self.regressor.crop))
        return torch.cat(out) if out else torch.zeros(0, self.regressor.num_points, 2)

    def detect(self, image: Image.Image) -> tuple[list[tuple[list[float], float]], list[dict]]:
        """(framed box, score) of every face large enough to place, best first, and the skipped ones."""
        faces, skipped = [], []
        for box in sorted(detect.raw_faces(image, self.detector), key=lambda b: -b[4]):
            width = box[2] - box[0]
            if width < MIN_FACE:
                skipped.append({"box": rounded(detect.frame(box, self.detector)),
                                "reason": f"face {width:.0f} px wide, under {MIN_FACE}"})
            else:
                faces.append((detect.frame(box, self.detector), float(box[4])))
        return faces, skipped

    def __call__(self, image: Image.Image) -> tuple[list[dict], list[dict]]:
        faces, skipped = self.detect(image)
        if not faces:
            return [], skipped
        crops, scale, offset = self.crops(image, [b for b, _ in faces])
        return self.place(faces, self.points(crops).numpy(), scale, offset), skipped

    @staticmethod
    def place(faces: list, points: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> list[dict]:
        """Crop points back to the photo's pixels: crop = photo * scale + offset."""
        photo = (points - offset[:, None]) / scale[:, None]
        return [{"box": rounded(box), "points": [rounded(p) for p in pts], "score": round(score, 3)}
                for (box, score), pts in zip(faces, photo)]


def rounded(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def list_inputs(paths: list[str], skip: Path | None = None) -> list[Path]:
    """Image files, folders (recursively, sorted; hidden files and `skip`, the pictures' folder, left out) and text
    files listing paths (one a line, relative to the list; # comments), in order. A path named on the command line
    that does not exist is a user error; a stale line of a list is reported as its image's record (a long list is not
    stopped by one)."""
    out, skip = [], skip.resolve() if skip is not None else None
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                          and not any(part.startswith(".") for part in f.relative_to(p).parts)
                          and not (skip is not None and skip in f.resolve().parents))
        elif p.suffix.lower() in (".txt", ".lst") and p.is_file():
            try:
                lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines()]
            except UnicodeDecodeError:
                raise UserError(f"--predict {p}: a list of paths must be UTF-8 text") from None
            listed = [s if Path(s).is_absolute() else str(p.parent / s) for s in lines if s and not s.startswith("#")]
            out += [q for s in listed for q in (list_inputs([s], skip) if Path(s).is_dir() else [Path(s)])]
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"--predict {p}: no such file or folder")
    return out


def done_paths(jsonl: Path) -> tuple[set[str], int]:
    """The paths a killed run already wrote, and how many of them failed. Only a last line cut short by the kill (no
    newline after it) is dropped; any other line that is not a record means the file is not this run's."""
    text = jsonl.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    paths, failed = set(), 0
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            paths.add(rec["path"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"--json {jsonl}:{i} is not a line of regress.py --predict: --resume continues only its "
                            "own file") from None
        failed += "error" in rec
    jsonl.write_text("".join(line + "\n" for line in lines))
    return paths, failed


def draw(image: Image.Image, faces: list[dict]) -> Image.Image:
    """The photo with each face's box (white) and points (one colour per landmark index), its longer side at most
    1,024 px."""
    from PIL import ImageDraw

    from .viz import palette
    scale = min(1.0, 1024 / max(image.size))
    out = image.resize((round(image.width * scale), round(image.height * scale))) if scale < 1 else image.copy()
    pen, radius = ImageDraw.Draw(out), max(2.0, max(out.size) / 160)
    at = lambda v: (v + 0.5) * scale - 0.5                                          # noqa: E731
    for face in faces:
        x0, y0, x1, y1 = map(at, face["box"])
        pen.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=max(1, round(radius / 2)))
        for (x, y), colour in zip(face["points"], palette(len(face["points"]))):
            pen.ellipse((at(x) - radius, at(y) - radius, at(x) + radius, at(y) + radius), fill=colour,
                        outline=(0, 0, 0))
    return out


def picture_path(out_dir: Path, image_path: str, used: set, overwrite: bool) -> Path:
    """out_dir/<stem>.jpg, numbered (<stem>-2.jpg, ...) rather than drawn over another image's picture: one of this
    run's, or (without `overwrite`) one already there."""
    stem, n = Path(image_path).stem, 1
    while (target := out_dir / (f"{stem}.jpg" if n == 1 else f"{stem}-{n}.jpg")) in used or (
            target.exists() and not overwrite):
        n += 1
    used.add(target)
    return target


def prepare(path: Path, predictor: Predictor, keep_image: bool) -> tuple[dict, Image.Image | None, list, tuple]:
    """One image read and its faces found and cropped: its record (points still to come), the image (for its
    picture), the faces and their crops (None when there are none)."""
    try:
        image = open_rgb(path, exif=True)
    except BadImage as e:
        return {"path": str(path), "error": str(e)}, None, [], None
    faces, skipped = predictor.detect(image)
    rec = {"path": str(path), "width": image.width, "height": image.height, "landmarks": predictor.landmarks,
           "faces": []}
    if skipped:
        rec["skipped"] = skipped
    crops = predictor.crops(image, [b for b, _ in faces]) if faces else None
    return rec, image if keep_image else None, faces, crops


def prepared(paths: list[Path], predictor: Predictor, keep_image: bool, ahead: int = 4):
    """prepare() of each path, in order, the next few read and detected in a second thread while the network runs
    (decoding and the detectors let go of Python's lock)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(prepare, p, predictor, keep_image) for p in paths[:ahead]]
        for i in range(len(paths)):
            if i + ahead < len(paths):
                futures.append(pool.submit(prepare, paths[i + ahead], predictor, keep_image))
            yield futures[i].result()
            futures[i] = None


def predict_files(paths: list[Path], predictor: Predictor, jsonl: Path | None, out_dir: Path | None,
                  resume: bool = False, overwrite: bool = False) -> dict:
    """Every image's JSON line (appended to `jsonl`, in input order, flushed line by line) and picture (out_dir,
    picture_path: with `overwrite`, pictures of the same names are replaced); the faces of several images go through the network together (predictor.batch). resume: the paths
    `jsonl` already holds are skipped. Returns counts: images, faces, failed (with the earlier run's), done_before,
    seconds."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    done, failed_before = done_paths(jsonl) if resume and jsonl is not None and jsonl.exists() else (set(), 0)
    todo = [p for p in paths if str(p) not in done]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    sink = jsonl.open("a" if resume else "w") if jsonl is not None else None
    counts = {"images": 0, "faces": 0, "failed": failed_before, "done_before": len(done)}
    pending, used, t0 = [], set(), time.perf_counter()

    def flush():
        """The pending images' faces through the network at once, their points split back in order; their lines."""
        stacked = [c[0] for *_, c in pending if c is not None]
        points = predictor.points(torch.cat(stacked)).numpy() if stacked else None
        for rec, image, faces, crops in pending:
            if crops is not None:
                rec["faces"] = predictor.place(faces, points[:len(faces)], *crops[1:])
                points = points[len(faces):]
            counts["images"] += 1
            counts["faces"] += len(rec.get("faces", []))
            counts["failed"] += "error" in rec
            if sink is not None:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()                                # a killed run keeps every finished line (--resume)
            if image is not None:
                draw(image, rec["faces"]).save(picture_path(out_dir, rec["path"], used, overwrite), quality=90)
        pending.clear()

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[faces]} faces"),
               TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=len(todo) < 2) as bar:
        task = bar.add_task("predict", total=len(todo), faces=0)
        for item in prepared(todo, predictor, out_dir is not None):
            pending.append(item)
            # a batch of faces, or as many images (no faces: records must not wait unboundedly)
            if sum(len(f) for _, _, f, _ in pending) >= predictor.batch or len(pending) >= predictor.batch:
                flush()
            bar.update(task, advance=1, faces=counts["faces"])
        flush()
    if sink is not None:
        sink.close()
    counts["seconds"] = time.perf_counter() - t0
    return counts
