"""One reader per on-disk landmark format: files in, a `datasets.Dataset` of project rows out.

Every `read_X(data_dir, split, max_bad_frac=0.01)` parses the annotation files with plain Python
(no pandas), turns them into rows {image: path, landmarks [K, 2], visible [K], identity, box} and
hands them to `records_to_dataset`, which header-checks the images, skips and counts bad ones and
converts odd modes. A missing annotation file or image folder is a one-line `UserError` (via
`require`); so is a malformed annotation line (naming file and line) and an unknown split.

Shared conventions (see common/data/images.py): landmarks are (x, y) pixels, 0-based, at pixel
centres (the image spans [-0.5, W - 0.5]); Matlab (1-based) sources subtract 1. `box` is the square
(x0, y0, x1, y1), as pixel edges in the same coordinates, that the protocol crops and resizes to the
network input; it may extend past the image, and consumers zero-pad there (as DVE does).

`val` splits: where a benchmark has no validation set, `val` is the last 10% of `train`
(n_val = int(round(0.1 * n)), DVE's `use_minival`) and `train` still holds all of them, because the
papers fit the regressor on the whole training set. A consumer that selects models on `val` must
train on `train` minus `val`. (MTFL, which no paper's protocol splits, keeps them apart: its `train` is
the first 90 %.) Model selection must never use `test`.

References: DVE, github.com/jamt9000/DVE, data_loader/data_loaders.py (CelebA, MAFL, AFLW_M, AFLW_R,
300W); ContrastLandmark, github.com/cvl-umass/contrast-landmark, data_loader/data_loaders_animal.py
(CUB).
"""
from __future__ import annotations

import csv
import os
import zlib
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from common.data.images import logger, records_to_dataset, require
from common.errors import UserError
from common.imageio import IMAGE_EXTS

# DVE's CelebA crop: rows 30..207 and all 178 columns of the 178x218 aligned image, as pixel edges.
CELEBA_BOX = [-0.5, 29.5, 177.5, 207.5]
CELEBA_COLUMNS = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                  "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"]
# ContrastLandmark's CUB subset: the 35 Passeroidea classes of its split lists (class ids, 1-based).
PASSEROIDEA = (14, 15, 16, 17, 20, 21, 34, 35, 47, 48, 54, 55, 56, 57, 76, 99, 109, 113, 114, 115,
               116, 117, 139, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 170)
W300_TRAIN = (("afw", "afw"), ("helen_trainset", "helen/trainset"),
              ("lfpw_trainset", "lfpw/trainset"))
W300_TEST = (("helen_testset", "helen/testset"), ("lfpw_testset", "lfpw/testset"), ("ibug", "ibug"))
W300_EYES = (36, 45)  # outer eye corners (0-based), for the inter-ocular distance


# ---------------------------------------------------------------- shared parsing helpers

def _check_split(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise UserError(f"{name}: unknown split {split!r} (valid: {', '.join(valid)})")


def _rows(path: Path, expected: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace fields) of each non-empty line of a required text file."""
    text = require(path, expected).read_text(encoding="utf-8-sig", errors="replace")
    return [(i, ln.split()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def _floats(fields: list[str], path: Path, lineno: int, count: int) -> list[float]:
    try:
        if len(fields) < count:
            raise ValueError
        return [float(v) for v in fields[:count]]
    except ValueError:
        raise UserError(f"{path}:{lineno}: expected {count} numbers, got "
                        f"{' '.join(fields)[:80]!r}") from None


def _val_tail(records: list) -> list:
    """DVE's minival: the last int(round(10%)) of the training rows (may be empty for n < 5)."""
    return records[len(records) - int(round(0.1 * len(records))):]


def _load_mat(path: Path, expected: str) -> dict:
    from scipy.io import loadmat  # only the .mat formats need scipy

    require(path, expected)
    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for a non-.mat file
        raise UserError(f"{path}: not a readable .mat file ({type(e).__name__})") from None


# ---------------------------------------------------------------- CelebA / MAFL

def _celeba_images(root: Path) -> Path:
    """The plain aligned folder, else DVE's default `_hq` copy (same 178x218 geometry)."""
    plain, hq = root / "Img" / "img_align_celeba", root / "Img" / "img_align_celeba_hq"
    if not plain.exists() and hq.exists():
        return hq
    return require(plain, "CelebA aligned 178x218 jpgs, as shipped in Img/ "
                          "(Img/img_align_celeba_hq is accepted too)")


def _celeba_landmarks(root: Path) -> dict[str, np.ndarray]:
    path = root / "Anno" / "list_landmarks_align_celeba.txt"
    rows = _rows(path, "CelebA aligned landmarks, as shipped in Anno/")
    if len(rows) < 2 or len(rows[0][1]) != 1 or not rows[0][1][0].isdigit():
        raise UserError(f"{path}: line 1 should be the row count")
    if rows[1][1] != CELEBA_COLUMNS:
        raise UserError(f"{path}: line 2 should name the columns {' '.join(CELEBA_COLUMNS)}")
    count, data = int(rows[0][1][0]), rows[2:]
    if count != len(data):
        raise UserError(f"{path}: line 1 says {count} rows but the file has {len(data)}")
    return {f[0]: np.reshape(_floats(f[1:], path, i, 10), (5, 2)) for i, f in data}


def _names(path: Path, expected: str) -> list[str]:
    return [f[0] for _, f in _rows(path, expected)]


def _mafl_names(root: Path, which: str) -> list[str]:
    count = "19,000" if which == "training" else "1,000"
    return _names(root / "MAFL" / f"{which}.txt", f"MAFL {which} list ({count} CelebA image names)")


def _celeba_partition(root: Path) -> list[tuple[str, int]]:
    path = root / "Eval" / "list_eval_partition.txt"
    rows = _rows(path, "CelebA partition (name 0|1|2), as shipped in Eval/")
    return [(f[0], int(_floats(f[1:], path, i, 1)[0])) for i, f in rows]


def _celeba_dataset(root: Path, names: list[str], name: str, max_bad_frac: float):
    """Rows for CelebA names: stored landmarks, DVE's crop box, identity (-1 without the file)."""
    imgdir, lms = _celeba_images(root), _celeba_landmarks(root)
    ident_path = root / "Anno" / "identity_CelebA.txt"
    ids = {}
    if ident_path.exists():  # optional: only the identity column needs it
        ids = {f[0]: int(_floats(f[1:], ident_path, i, 1)[0]) for i, f in _rows(ident_path, "")}
    missing = [n for n in names if n not in lms]
    if missing:
        raise UserError(f"{root / 'Anno' / 'list_landmarks_align_celeba.txt'}: no landmarks for "
                        f"{len(missing)} listed images, e.g. {missing[0]}")
    records = [{"image": imgdir / n, "landmarks": lms[n], "box": CELEBA_BOX,
                "identity": ids.get(n, -1)} for n in names]
    return records_to_dataset(records, name, max_bad_frac, num_points=5)


def read_celeba(data_dir, split: str, max_bad_frac: float = 0.01) -> datasets.Dataset:
    """CelebA aligned faces (DVE `CelebAPrunedAligned_MAFLVal`), 5 landmarks.

    Reads (under data_dir, the CelebA root): Img/img_align_celeba/ (or, when absent,
    Img/img_align_celeba_hq/, DVE's default); Anno/list_landmarks_align_celeba.txt (line 1 the row
    count, which must match; line 2 the column names; then `000001.jpg x1 y1 ... x5 y5`);
    Eval/list_eval_partition.txt (`000001.jpg 0|1|2`); optional Anno/identity_CelebA.txt
    (identity, else -1); for `pretrain` also MAFL/training.txt and MAFL/testing.txt when present.
    Landmarks as stored (DVE subtracts nothing), order: left eye, right eye, nose, left mouth
    corner, right mouth corner. Box: DVE's crop of rows 30..207, all columns, = CELEBA_BOX.
    Splits: `pretrain` = partition 0 minus every MAFL image (DVE's self-supervised training set,
    landmarks kept but meant to be unused); `train`/`val`/`test` = partitions 0/1/2
    (162,770 / 19,867 / 19,962).
    """
    root = Path(data_dir)
    _check_split("celeba", split, ("pretrain", "train", "val", "test"))
    parts = _celeba_partition(root)
    if split == "pretrain":
        mafl = set()
        for which in ("training", "testing"):
            if (root / "MAFL" / f"{which}.txt").exists():
                mafl |= set(_mafl_names(root, which))
            else:  # without the list the pretraining set may overlap MAFL's evaluation images
                logger.warning("celeba: %s missing; pretrain keeps its images",
                               root / "MAFL" / f"{which}.txt")
        names = [n for n, p in parts if p == 0 and n not in mafl]
    else:
        code = {"train": 0, "val": 1, "test": 2}[split]
        names = [n for n, p in parts if p == code]
    return _celeba_dataset(root, names, f"celeba[{split}]", max_bad_frac)


def read_mafl(data_dir, split: str, max_bad_frac: float = 0.01,
              val_size: int = 2000) -> datasets.Dataset:
    """MAFL (DVE `MAFLAligned`): CelebA aligned images and landmarks, MAFL's image lists.

    Reads (under data_dir, the CelebA root): MAFL/training.txt (19,000 names) and MAFL/testing.txt
    (1,000), one CelebA image name per line; the CelebA landmark file, images and optional
    identity file as in `read_celeba`; for `val` also Eval/list_eval_partition.txt. Landmarks,
    point order and box exactly as `read_celeba` (DVE uses the same 178x178 crop).
    Splits: `train` (19,000), `test` (1,000), `val` = the first `val_size` (2,000) images of CelebA
    partition 1 in partition-file order that are in neither MAFL list. MAFL itself has no val set.
    (DVE's self-supervised stage validates on the first 2,000 of partition 2, CelebA's test
    partition; we take partition 1 so that model selection never touches a test image.)
    """
    root = Path(data_dir)
    _check_split("mafl", split, ("train", "val", "test"))
    train, test = _mafl_names(root, "training"), _mafl_names(root, "testing")
    if split == "val":
        used = set(train) | set(test)
        names = [n for n, p in _celeba_partition(root) if p == 1 and n not in used][:val_size]
    else:
        names = train if split == "train" else test
    return _celeba_dataset(root, names, f"mafl[{split}]", max_bad_frac)


# ---------------------------------------------------------------- MTFL (and the AFLW_M test faces)

# The crop of a face from its 5 points (MTFL's training photos): the 300-W protocol's framing (box_300w, DVE's crop of
# the 68 points' box), predicted from the 5. On the 1,207 AFW and HELEN training faces (their 68 points, the 5 taken
# as eye centres, nose tip 30, mouth corners 48 and 54), box_300w's side is a median 4.22 x max(inter-ocular
# distance, eye-centre to mouth-centre distance) and its centre 0.08 of that distance below the 5 points' mean
# (`python experiments/framing.py` prints both). Training labels only: the test faces are never read for it.
FRAME_SIDE, FRAME_DROP = 4.2, 0.08
# Each training photo's crop side is the rule's times a factor drawn once per photo from U(1 - FRAME_JITTER,
# 1 + FRAME_JITTER), the scale augmentation of HRNet's face alignment (HRNet/HRNet-Facial-Landmark-Detection@3c9f92a,
# lib/datasets/face300w.py, Face300W.__getitem__: `scale * random.uniform(1 - scale_factor, 1 + scale_factor)`;
# SCALE_FACTOR 0.25 in experiments/300w/face_alignment_300w_hrnet_w18.yaml; HRNet draws one per sample and epoch,
# the tensor cache keeps one crop per photo): a regressor trained on these faces meets faces framed otherwise (the test
# faces' own framing, a face detector's box) as training faces. Its range is HRNet's, not tuned; it was added after
# regressors trained on one framing were seen not to transfer to the AFLW test faces (experiments/real_faces.md, 5).
FRAME_JITTER = 0.25
# 68-point training faces (ptsfolder) are also moved by U(-SHIFT_JITTER, SHIFT_JITTER) of the side in x and y: a
# regressor trained on exact crops scored 39 % worse on HELEN's validation faces cropped around a detector's box
# (2-8 % off-centre, as regress.py --predict's crops are) than on the exact crops; with both factors, 4 % worse
# (experiments/real_faces.md, section 6)
SHIFT_JITTER = 0.1


def _mtfl_records(root: Path, listing: str) -> list[dict]:
    """Rows of an MTFL list (`PATH x1..x5 y1..y5 gender smile glasses pose`; PATH relative to root, with
    Windows separators; lines may start with spaces): image and landmarks [5, 2], 1-based -> 0-based."""
    path = root / listing
    rows = _rows(path, f"the MTFL list {listing} (path x1..x5 y1..y5 attributes), as shipped")
    records = []
    for i, f in rows:
        xy = np.reshape(_floats(f[1:], path, i, 10), (2, 5)).T  # x1..x5, y1..y5 -> [5, 2]
        records.append({"image": root / f[0].replace("\\", "/"), "landmarks": xy - 1})
    return records


def mtfl_box(landmarks: np.ndarray, scale: float = 1.0) -> list[float]:
    """The square crop of a face from its 5 points [5, 2] (left eye, right eye, nose, mouth corners), framed as the
    300-W protocol frames a face (FRAME_SIDE, FRAME_DROP), its side times `scale`, as a box of pixel edges."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eyes = np.linalg.norm(lm[0] - lm[1])
    eye_mouth = np.linalg.norm((lm[0] + lm[1]) / 2 - (lm[3] + lm[4]) / 2)
    size = max(eyes, eye_mouth)
    half = scale * FRAME_SIDE * size / 2
    cx, cy = lm.mean(0) + (0, FRAME_DROP * size)
    return [cx - half, cy - half, cx + half, cy + half]


def read_mtfl(data_dir, split: str, max_bad_frac: float = 0.01) -> datasets.Dataset:
    """MTFL (Zhang et al. 2014) as shipped: 10,000 training photos (LFW, web) and the 2,995 AFLW test faces.

    Reads (under data_dir, the unzipped MTFL folder): training.txt and testing.txt, one face a line: `PATH x1 x2
    x3 x4 x5 y1 y2 y3 y4 y5 gender smile glasses pose`, PATH relative to data_dir with backslashes
    (`lfw_5590\\Aaron_Eckhart_0001.jpg`), most lines led by a space; attributes ignored. Points as DVE reads
    the same testing.txt: 1-based, we subtract 1. Order: left eye, right eye, nose, left mouth corner, right mouth
    corner; the inter-ocular distance is between the two eye centres (points 0 and 1).

    Crops. Test (the AFLW faces of the AFLW_M benchmark): the whole 150x150 crop as shipped (box = the image), as
    DVE's `AFLW_MTFL` reads it (DVE@2085144 data_loader/data_loaders.py lines 773-782 and 797: the image resized
    whole, the points scaled by imwidth / 150); common/protocols.py then resizes and centre-crops it. Training: the
    photos are framed loosely (a face fills 17-24 % of their width), so each is cropped by `mtfl_box`, the 300-W
    protocol's framing derived from the 5 training points (FRAME_SIDE, FRAME_DROP; zero-padded past the image), its
    side scaled by a factor drawn once per photo (FRAME_JITTER: U(0.75, 1.25), HRNet's scale augmentation; seed 0,
    in the file's line order, so the same photo always gets the same crop).
    No constant here is read off the test faces, which are framed tighter than this rule (their face fills about
    32 % of the crop, 24 % here): the regression from these training faces to the test faces is a transfer across
    framings as well as across data sets ("MTFL -> AFLW_M test"; the papers train on 10,122 other AFLW crops).
    identity: -1 (MTFL names no person). Splits: `pretrain` (the 10,000 training photos), `train` (their first
    9,000), `val` (the last 1,000), `test` (2,995).
    """
    root = Path(data_dir)
    _check_split("mtfl", split, ("pretrain", "train", "val", "test"))
    if split == "test":
        records = _mtfl_records(root, "testing.txt")
    else:
        records = _mtfl_records(root, "training.txt")
        jitter = np.random.default_rng(0).uniform(1 - FRAME_JITTER, 1 + FRAME_JITTER, len(records))   # line order
        for rec, scale in zip(records, jitter):
            rec["box"] = mtfl_box(rec["landmarks"], scale)
        val = _val_tail(records)                  # the split: train and val apart (9,000 / 1,000)
        records = {"pretrain": records, "train": records[:len(records) - len(val)], "val": val}[split]
    return records_to_dataset(records, f"mtfl[{split}]", max_bad_frac, num_points=5)


# ---------------------------------------------------------------- AFLW

def read_aflw_m(data_dir, split: str, max_bad_frac: float = 0.01) -> datasets.Dataset:
    """AFLW_M (DVE `AFLW_MTFL`): 10,122 AFLW crops for training, MTFL's 2,995 AFLW faces for test.

    Reads (under data_dir, DVE's `aflw-mtfl` root): for `test` MTFL/testing.txt (whitespace;
    field 0 an image path relative to MTFL/, Windows `\\` separators allowed; fields 1-10 are
    x1..x5 then y1..y5; later attribute fields ignored) and the images under MTFL/; for
    `train`/`val` aflw_cropped/facedata_cropped.csv (comma separated with a header row; rows whose
    `set` column is 1; image `crop_file` relative to aflw_cropped/; columns 4..13 interleaved
    x1, y1, ..., x5, y5, by position as in DVE). Both are 1-based (Matlab): we subtract 1, as DVE.
    Order: left eye, right eye, nose, left mouth corner, right mouth corner. Images are 150x150 and
    DVE resizes them whole: box = full image. Splits: `train` (10,122), `val` (its last 10%, 1,012),
    `test` (2,995).
    """
    root = Path(data_dir)
    _check_split("aflw_m", split, ("train", "val", "test"))
    records = []
    if split == "test":
        records = _mtfl_records(root / "MTFL", "testing.txt")
    else:
        path = root / "aflw_cropped" / "facedata_cropped.csv"
        require(path, "AFLW crop annotations (aflw_10122train_cropped.zip), as in aflw_cropped/")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r]
        header = [h.strip() for h in rows[0]] if rows else []
        if "set" not in header or "crop_file" not in header:
            raise UserError(f"{path}: header row lacks the `set` and `crop_file` columns")
        iset, icrop = header.index("set"), header.index("crop_file")
        for i, r in enumerate(rows[1:], 2):
            if _floats(r[iset:], path, i, 1)[0] != 1:  # set 1 = training faces, as in DVE
                continue
            xy = np.reshape(_floats(r[4:], path, i, 10), (5, 2))
            records.append({"image": path.parent / r[icrop].strip().replace("\\", "/"),
                            "landmarks": xy - 1})
        if split == "val":
            records = _val_tail(records)
    return records_to_dataset(records, f"aflw_m[{split}]", max_bad_frac, num_points=5)


def read_aflw_r(data_dir, split: str, max_bad_frac: float = 0.01) -> datasets.Dataset:
    """AFLW_R (DVE `AFLW`): Thewlis et al.'s re-cropped AFLW release, 5 landmarks.

    Reads (under data_dir, DVE's `aflw/aflw_release-2`): aflw_{train,test}_images.txt (one image
    path per line, relative to output/, as DVE's `subdir`), aflw_{train,test}_keypoints.mat
    (`gt` [N, 5, 2] stored as (y, x), which we swap as DVE does; `hw` [N, 2], the image sizes, is
    not needed because the real sizes are read). DVE subtracts nothing, so neither do we (whether
    the release is 0- or 1-based is not documented). Order: left eye, right eye, nose, left mouth
    corner, right mouth corner. Box = full image: DVE resizes the whole image to a square,
    breaking its aspect ratio; consumers doing the same reproduce it. Splits: `train` (10,122),
    `val` (its last 10%), `test` (2,991, including 132 duplicates, per DVE's README).
    """
    root = Path(data_dir)
    _check_split("aflw_r", split, ("train", "val", "test"))
    subset = "test" if split == "test" else "train"
    list_path = root / f"aflw_{subset}_images.txt"
    names = [" ".join(f) for _, f in _rows(list_path, "AFLW_R image list, as in aflw_release-2/")]
    mat_path = root / f"aflw_{subset}_keypoints.mat"
    mat = _load_mat(mat_path, "AFLW_R keypoints (gt, hw), as in aflw_release-2/")
    gt = np.asarray(mat.get("gt", np.zeros(0)), dtype=np.float64)
    if gt.size != 10 * len(names):  # squeeze_me drops the N axis when N == 1: reshape restores it
        raise UserError(f"{mat_path}: `gt` should be {len(names)}x5x2 to match {list_path}")
    gt = gt.reshape(-1, 5, 2)
    imgdir = require(root / "output", "the AFLW_R image folder output/")
    records = [{"image": imgdir / n, "landmarks": g[:, ::-1]} for n, g in zip(names, gt)]
    if split == "val":
        records = _val_tail(records)
    return records_to_dataset(records, f"aflw_r[{split}]", max_bad_frac, num_points=5)


# ---------------------------------------------------------------- 300W

def box_300w(bb) -> list[float]:
    """DVE's 300W crop as a box in original 0-based pixel coordinates (edges).

    DVE (`ThreeHundredW.__getitem__`, Matlab-derived integer arithmetic): with the ground-truth box
    [xmin, ymin, xmax, ymax], bw = xmax - xmin + 1, fac = 52 / bw, it resizes the image by fac and
    takes the 0-based rows by-1 .. bY-1 and columns bx-1 .. bX-1 (100 each), where
    bcx_ = floor(fac * (xmin + (bw + 1) / 2)), bx = bcx_ - 49, bX = bcx_ + 50 (rows likewise with
    the centre 2 px higher: by = bcy_ - 51, bY = bcy_ + 48). A resized pixel edge u maps back to
    (u + 0.5) / fac - 0.5, so the box is [(bx-1)/fac, (by-1)/fac, bX/fac, bY/fac] - 0.5, a square
    of side 100 / fac. DVE maps the keypoints as k * fac - bx on 1-based k, which differs from
    this geometric mapping by 0.5 * (1 - fac) output pixels (< 0.5 px for fac < 2); it also
    ignores the int() truncation of the resized size (< 1 resized px at the far edge).
    """
    xmin, ymin, xmax, ymax = (float(v) for v in bb)
    bw, bh = xmax - xmin + 1, ymax - ymin + 1
    fac = 52 / bw
    bcx_ = int(np.floor(fac * (xmin + (bw + 1) / 2)))  # Matlab-style centre, resized
    bcy_ = int(np.floor(fac * (ymin + (bh + 1) / 2)))
    bx, bX = int(bcx_ - 26 + 1 - 24), int(bcx_ + 26 + 24)  # DVE: bw_/2 = 26, pp = (100 - 52)/2
    by, bY = int(bcy_ - 26 + 1 - 24 - 2), int(bcy_ + 26 + 24 - 2)
    return [(bx - 1) / fac - 0.5, (by - 1) / fac - 0.5, bX / fac - 0.5, bY / fac - 0.5]


def scaled(box, factor: float, shift=(0.0, 0.0)) -> list[float]:
    """A square box's side times `factor` about its centre, the centre moved by `shift` (x, y) of its side."""
    side = box[2] - box[0]
    cx, cy, half = (box[0] + box[2]) / 2 + shift[0] * side, (box[1] + box[3]) / 2 + shift[1] * side, factor * side / 2
    return [cx - half, cy - half, cx + half, cy + half]


def _read_pts(path: Path) -> np.ndarray:
    """A 300W .pts file (version: 1, n_points: 68, {, 68 `x y` lines, }) -> 0-based [68, 2]."""
    text = require(path, "the 300W .pts landmarks next to the image").read_text(errors="replace")
    toks = text.split()
    try:
        n = int(toks[toks.index("n_points:") + 1])
        pts = np.array(toks[toks.index("{") + 1:toks.index("}")], dtype=np.float64).reshape(-1, 2)
    except (ValueError, IndexError):
        raise UserError(f"{path}: not a .pts file (needs n_points:, {{, x y lines, }})") from None
    if n != 68 or len(pts) != 68:
        raise UserError(f"{path}: {len(pts)} points (n_points: {n}), expected 68")
    return pts - 1


def read_300w(data_dir, split: str, max_bad_frac: float = 0.01) -> datasets.Dataset:
    """300W (DVE `ThreeHundredW`), 68 landmarks, the split of Ren et al. (3000 fps).

    Reads (under data_dir, DVE's `300w/300w` root): `Bounding Boxes/bounding_boxes_{afw,
    helen_trainset,lfpw_trainset}.mat` (train) or `..._{helen_testset,lfpw_testset,ibug}.mat`
    (test): a cell array `bounding_boxes` of structs with `imgName` and `bb_ground_truth`
    [xmin, ymin, xmax, ymax]; each image under afw/, helen/trainset/, lfpw/trainset/ (train) or
    helen/testset/, lfpw/testset/, ibug/ (test) with its .pts next to it. For ibug only names
    starting with 'image' are kept (DVE: the others do not exist). The .pts points are 1-based:
    we subtract 1. A .pts with other than 68 points is a UserError naming it (an annotation error,
    like a missing file, not a bad image). Order: the iBUG 68-point markup; eye corners 36 and 45
    (W300_EYES) give the inter-ocular distance. Box: `box_300w` (DVE's crop; may leave the image).
    Splits: `train` (3,148), `val` (its last 10%: all from lfpw/trainset), `test` (689).
    """
    root = Path(data_dir)
    _check_split("300w", split, ("train", "val", "test"))
    records = []
    for key, sub in W300_TEST if split == "test" else W300_TRAIN:
        path = root / "Bounding Boxes" / f"bounding_boxes_{key}.mat"
        mat = _load_mat(path, "300W bounding boxes, as shipped in 'Bounding Boxes/'")
        if "bounding_boxes" not in mat:
            raise UserError(f"{path}: no `bounding_boxes` variable")
        imgdir = require(root / sub, f"the 300W {sub} image folder")
        for entry in np.atleast_1d(mat["bounding_boxes"]):
            name = str(entry.imgName)
            if key == "ibug" and not name.startswith("image"):
                continue
            pts = _read_pts((imgdir / name).with_suffix(".pts"))
            records.append({"image": imgdir / name, "landmarks": pts,
                            "box": box_300w(np.ravel(entry.bb_ground_truth))})
    if split == "val":
        records = _val_tail(records)
    return records_to_dataset(records, f"300w[{split}]", max_bad_frac, num_points=68)


PTS_SPLITS = ("train", "val", "all", "pretrain")


def pts_photo(path: Path) -> str:
    """The photo a face of a .pts folder comes from: its name without the face number (AFW's and HELEN's
    `1051618982_2` -> `1051618982`), so that the faces of one photo fall in one split."""
    stem = path.stem
    head, sep, tail = stem.rpartition("_")
    return head if sep and tail.isdigit() else stem


def pts_val(photo: str) -> bool:
    """The fixed validation rule of a .pts folder: a photo is a validation photo when the CRC-32 of its name is 0
    modulo 10 (about a tenth; independent of the folder's order and of what else it holds)."""
    return zlib.crc32(photo.encode()) % 10 == 0


def read_ptsfolder(data_dir, split: str | None = None, max_bad_frac: float = 0.01) -> datasets.Dataset:
    """A folder of face images, each with its 68-point `.pts` beside it (300-W markup: `version: 1`,
    `n_points:  68`, `{`, 68 `x y` lines, `}`; 1-based, we subtract 1): AFW or HELEN as 300-W ships them, or a
    user's own; several folders are read one after the other when data_dir names them separated by os.pathsep
    (`afw:helen_train`).

    Reads every `.pts` below each folder, recursively, in sorted path order, and the image of the same name beside it
    (any extension of IMAGE_EXTS; a .pts without one counts as a bad image). Box: the 300-W protocol's crop
    (`box_300w`, DVE's `ThreeHundredW` crop of `bb_ground_truth`, DVE@2085144 data_loader/data_loaders.py lines
    889-927) of the 68 points' bounding box, which is what 300-W's `bb_ground_truth` boxes are. The eye points are
    the outer eye corners 36 and 45 (0-based; 37 and 46 one-based, as 300-W and DVE define its inter-ocular
    distance). `train` faces' boxes are scaled by a factor drawn per face from U(0.75, 1.25) (FRAME_JITTER, as
    MTFL's training photos) and moved by U(-0.1, 0.1) of their side in x and y (SHIFT_JITTER; seed 0, in path
    order). identity: -1 (no person is named). Splits (300-W's test faces are not part of such a folder): `train`
    and `val` by photo (`pts_val`: the faces of about a tenth of the photos are `val`), `all` (and `pretrain`) every
    face, for matching and pretraining; `test` is a UserError that says so. No .pts: UserError.
    """
    if split is not None and split not in PTS_SPLITS:
        raise UserError(f"ptsfolder: no {split!r} split (valid: {', '.join(PTS_SPLITS)}: its faces are split by photo "
                        "into train and val; `all` is every face)")
    annotations = []
    for folder in str(data_dir).split(os.pathsep):
        root = require(folder, "a folder of images with a .pts beside each")
        if not root.is_dir():
            raise UserError(f"{root}: not a folder (expected images with a .pts beside each)")
        found = sorted(p for p in root.rglob("*.pts") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not found:
            raise UserError(f"{root}: no .pts files found (expected an image and its 68-point .pts, e.g. AFW)")
        annotations += found
    if split in ("train", "val"):
        annotations = [p for p in annotations if pts_val(pts_photo(p)) == (split == "val")]
    records = []
    # training faces scaled (FRAME_JITTER, as MTFL's) and moved (SHIFT_JITTER) once per face: a detector's box frames
    # a face that much off (regress.py --predict); validation and the other splits keep the protocol's crop
    g = np.random.default_rng(0)
    jitter = g.uniform(1 - FRAME_JITTER, 1 + FRAME_JITTER, len(annotations))
    shifts = g.uniform(-SHIFT_JITTER, SHIFT_JITTER, (len(annotations), 2))
    for pts_path, scale, shift in zip(annotations, jitter, shifts):
        pts = _read_pts(pts_path) + 1                                   # 1-based, as 300-W's boxes are
        image = next((q for ext in IMAGE_EXTS for q in (pts_path.with_suffix(ext), pts_path.with_suffix(ext.upper()))
                      if q.is_file()), pts_path.with_suffix(".jpg"))    # none: reported as a missing file
        box = box_300w([*pts.min(0), *pts.max(0)])
        records.append({"image": image, "landmarks": pts - 1,
                        "box": scaled(box, scale, shift) if split == "train" else box})
    return records_to_dataset(records, f"ptsfolder[{data_dir}, {split or 'all'}]", max_bad_frac, num_points=68)


# ---------------------------------------------------------------- CUB

def _cub_table(root: Path, name: str, expected: str, count: int) -> dict[str, list[float]]:
    """`image_id v1 .. v<count>` per line -> {image_id: [floats]}."""
    path = root / name
    return {f[0]: _floats(f[1:], path, i, count) for i, f in _rows(path, expected)}


def _cub_parts(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """parts/part_locs.txt -> {image_id: (landmarks [15, 2], visible [15])}; invisible -> (0, 0)."""
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, f in _rows(path, "CUB part locations (id part x y visible), as in parts/"):
        pid, x, y, vis = _floats(f[1:], path, i, 4)
        if pid != int(pid) or not 1 <= pid <= 15:
            raise UserError(f"{path}:{i}: part id {pid:g} is not in 1..15")
        lm, visible = parts.setdefault(f[0], (np.zeros((15, 2)), np.zeros(15, bool)))
        lm[int(pid) - 1], visible[int(pid) - 1] = ((x, y) if vis else (0, 0)), bool(vis)
    return parts


def _cub_get(table: dict, key: str, root: Path, name: str):
    if key not in table:
        raise UserError(f"{root / name}: no entry for image id {key}")
    return table[key]


def read_cub(data_dir, split: str, max_bad_frac: float = 0.01, classes=PASSEROIDEA,
             crop: str = "full", split_dir=None) -> datasets.Dataset:
    """CUB-200-2011 birds, 15 parts (ContrastLandmark `CUB`).

    Reads (under data_dir, the official CUB_200_2011 root): images.txt (`id relative/path.jpg`,
    images under images/), parts/part_locs.txt (`id part_id x y visible`, part ids 1..15),
    image_class_labels.txt (`id class_id`), train_test_split.txt (`id is_training`) unless
    `split_dir` is given, bounding_boxes.txt (`id x y width height`) only for crop="bbox".
    Coordinates used as stored and taken as 0-based pixel centres (the CUB README does not say;
    ContrastLandmark applies no offset). Invisible parts get (0, 0) and visible False, as in
    ContrastLandmark. Order: part ids 1..15 (back, beak, belly, breast, crown, forehead, left eye,
    left leg, left wing, nape, right eye, right leg, right wing, tail, throat). identity = class id.
    classes: ids to keep (default ContrastLandmark's 35 Passeroidea classes; None keeps all 200).
    crop: "full" = the whole image (ContrastLandmark resizes it whole), "bbox" = the square with
    side max(w, h) centred on the bounding box (x, y taken as the 0-based top-left pixel).
    Splits: `train`/`test` from train_test_split.txt, `val` = the last 10% of `train` (images.txt
    order is by class, so this val holds only the last few classes); split_dir: a folder with
    ContrastLandmark's train.txt / val.txt / test.txt lists (1,241 / 382 / 383 images; paths ending
    in <class folder>/<file>), which then define the split instead of `classes` and the 10% rule.
    """
    root = Path(data_dir)
    _check_split("cub", split, ("train", "val", "test"))
    if crop not in ("full", "bbox"):
        raise UserError(f"cub: unknown crop {crop!r} (valid: full, bbox)")
    images = {f[0]: " ".join(f[1:]) for _, f in _rows(root / "images.txt", "CUB id path list")}
    labels = _cub_table(root, "image_class_labels.txt", "CUB class labels (id class_id)", 1)
    parts = _cub_parts(root / "parts" / "part_locs.txt")
    if crop == "bbox":
        boxes = _cub_table(root, "bounding_boxes.txt", "CUB boxes (id x y width height)", 4)
    if split_dir is not None:  # ContrastLandmark's lists hold absolute paths from its machine
        list_path = Path(split_dir) / f"{split}.txt"
        listed = _names(list_path, "a ContrastLandmark split list (train.txt, val.txt, test.txt)")
        by_tail = {"/".join(Path(p).parts[-2:]): k for k, p in images.items()}
        ids = [by_tail.get("/".join(Path(n).parts[-2:])) for n in listed]
        if None in ids:
            raise UserError(f"{list_path}: {listed[ids.index(None)]} is not in images.txt")
    else:
        is_train = _cub_table(root, "train_test_split.txt", "CUB split (id is_training)", 1)
        keep = None if classes is None else {int(c) for c in classes}

        def wanted(k: str) -> bool:
            cls = _cub_get(labels, k, root, "image_class_labels.txt")[0]
            train = bool(_cub_get(is_train, k, root, "train_test_split.txt")[0])
            return (keep is None or cls in keep) and train == (split != "test")
        ids = [k for k in images if wanted(k)]
        ids = _val_tail(ids) if split == "val" else ids
    imgdir, records = require(root / "images", "the CUB images/ folder"), []
    for k in ids:
        lm, visible = _cub_get(parts, k, root, "parts/part_locs.txt")
        rec = {"image": imgdir / images[k], "landmarks": lm, "visible": visible,
               "identity": int(_cub_get(labels, k, root, "image_class_labels.txt")[0])}
        if crop == "bbox":  # square of side max(w, h) around the box; x, y = top-left pixel
            x, y, w, h = _cub_get(boxes, k, root, "bounding_boxes.txt")
            cx, cy, half = x + w / 2 - 0.5, y + h / 2 - 0.5, max(w, h) / 2
            rec["box"] = [cx - half, cy - half, cx + half, cy + half]
        records.append(rec)
    return records_to_dataset(records, f"cub[{split}]", max_bad_frac, num_points=15)


# ---------------------------------------------------------------- unlabelled folders and the Hub

def _oriented_size(path: Path) -> tuple[int, int] | None:
    """Header size after the EXIF rotation that open_rgb(exif=True) applies; None if unreadable."""
    try:
        with Image.open(path) as img:
            (w, h), orientation = img.size, img.getexif().get(0x0112, 1)
    except Exception:  # a broken file: records_to_dataset reports it
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_imagefolder(data_dir, split: str | None = None,
                     max_bad_frac: float = 0.01) -> datasets.Dataset:
    """Any folder of photos, unlabelled (no landmark columns), for self-supervised training.

    Reads every file below data_dir, recursively, whose extension (any case) is one of IMAGE_EXTS,
    in sorted path order; names starting with '.' (e.g. macOS `._x.jpg` shadows) are skipped.
    EXIF orientation is applied (exif=True). Box: the largest centred square of the (rotated)
    image. `split` is ignored (there is one set; any value is accepted). No image: UserError.
    """
    root = require(data_dir, "a folder of images")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (expected a folder of images)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"{root}: no images found (looked for {' '.join(IMAGE_EXTS)} below it)")
    records = []
    for path in files:
        rec, size = {"image": path}, _oriented_size(path)
        if size is not None:
            side = min(size)
            x0, y0 = (size[0] - side) / 2 - 0.5, (size[1] - side) / 2 - 0.5
            rec["box"] = [x0, y0, x0 + side, y0 + side]
        records.append(rec)
    return records_to_dataset(records, f"imagefolder[{root}]", max_bad_frac, None, exif=True)


def read_hf(name_or_path, split: str) -> datasets.Dataset:
    """A Hugging Face dataset: a local `save_to_disk` folder, else anything `load_dataset` reads.

    A folder saved with `Dataset.save_to_disk` is returned whole (split ignored); one saved with
    `DatasetDict.save_to_disk` gives its `split` (unknown: UserError listing the saved ones).
    Otherwise `datasets.load_dataset(name_or_path, split=split)` (a Hub name or a local data
    folder); its errors become a one-line UserError. A path-like name (starting with / . ~) that
    does not exist is a UserError. The result must have an `image` column; rows without `box`
    are left so, and consumers use the whole image.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")):
        require(path, "a dataset folder (save_to_disk) or a data folder load_dataset can read")
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"{path}: unknown split {split!r} (valid: {', '.join(loaded)})")
            loaded = loaded[split]
    else:
        try:
            loaded = datasets.load_dataset(str(path) if path.exists() else name, split=split)
        except (ValueError, FileNotFoundError, ConnectionError, OSError,
                datasets.exceptions.DatasetGenerationError) as e:
            msg = " ".join(str(e).split())[:300]
            raise UserError(f"{name}: cannot load split {split!r} ({type(e).__name__}: {msg})") \
                from None
    if "image" not in loaded.column_names:
        raise UserError(f"{name}: no `image` column (columns: {', '.join(loaded.column_names)})")
    return loaded


READERS = {"celeba": read_celeba, "mafl": read_mafl, "aflw_m": read_aflw_m, "aflw_r": read_aflw_r,
           "300w": read_300w, "cub": read_cub, "mtfl": read_mtfl, "ptsfolder": read_ptsfolder,
           "imagefolder": read_imagefolder}
