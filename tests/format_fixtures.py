"""Tiny on-disk copies of each landmark format, written exactly as the real downloads lay them out.

Values follow simple rules (documented per writer) so that tests can state the expected 0-based
landmarks by hand. Images are solid colours; sizes match the real data where it matters to a box.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def solid(path: Path, size=(32, 32), color=(120, 80, 40), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# CelebA: 9 images 000001..000009; partition 1-4 -> 0, 5, 6, 9 -> 1, 7, 8 -> 2; identity 100 + k.
# Image k: lefteye (60+k, 100+k), righteye (110+k, 101+k), nose (85+k, 130+k),
# leftmouth (70+k, 150+k), rightmouth (105+k, 151+k).  MAFL train 2, 3, 5; MAFL test 7.
CELEBA_PART = {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 2, 8: 2, 9: 1}


def write_celeba(root: Path, identity=True, mafl=True, img_sub="img_align_celeba", count=None):
    header = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
              "rightmouth_x rightmouth_y \n")  # the real file has a trailing space
    rows = []
    for k in CELEBA_PART:
        solid(root / "Img" / img_sub / f"{k:06d}.jpg", (178, 218), (10 * k, 50, 90))
        v = [60 + k, 100 + k, 110 + k, 101 + k, 85 + k, 130 + k, 70 + k, 150 + k, 105 + k, 151 + k]
        rows.append(f"{k:06d}.jpg" + "".join(f"{x:>6d}" for x in v))  # space-padded columns
    write_text(root / "Anno" / "list_landmarks_align_celeba.txt",
               f"{count or len(rows)}\n" + header + "\n".join(rows) + "\n")
    write_text(root / "Eval" / "list_eval_partition.txt",
               "".join(f"{k:06d}.jpg {p}\n" for k, p in CELEBA_PART.items()))
    if identity:
        write_text(root / "Anno" / "identity_CelebA.txt",
                   "".join(f"{k:06d}.jpg {100 + k}\n" for k in CELEBA_PART))
    if mafl:
        write_text(root / "MAFL" / "training.txt", "000002.jpg\n000003.jpg\n000005.jpg\n")
        write_text(root / "MAFL" / "testing.txt", "000007.jpg\n")


# AFLW_M.  MTFL/testing.txt: 3 faces, fields x1..x5 y1..y5 (1-based) then 4 attribute fields.
# facedata_cropped.csv: 12 rows, rows 3 and 8 (0-based) have set 2; row r has interleaved
# 1-based keypoints x_i = 10 i + r + 1, y_i = 10 i + r + 2 (i = 1..5).
def write_aflw_m(root: Path):
    lines = ["AFLW\\1-image00001.jpg 11 21 31 41 51 12 22 32 42 52 1 2 1 3",
             "AFLW/2-image00002.jpg 101.5 90 80 70 60 1 2 3 4 5 2 2 2 2",
             "  AFLW\\3-image00003.jpg 1 1 1 1 1 150 150 150 150 150 1 1 1 1"]
    write_text(root / "MTFL" / "testing.txt", "\n".join(lines) + "\n")
    for name in ("1-image00001.jpg", "2-image00002.jpg", "3-image00003.jpg"):
        solid(root / "MTFL" / "AFLW" / name, (150, 150))
    csv = ["image_file,face_id,set,crop_file," + ",".join(f"{c}{i}" for i in range(1, 6) for c in "xy")]
    for r in range(12):
        kp = [v for i in range(1, 6) for v in (10 * i + r + 1, 10 * i + r + 2)]
        crop = f"crops/face_{r:03d}.jpg"
        csv.append(f"image{r:05d}.jpg,{r},{2 if r in (3, 8) else 1},{crop}," + ",".join(map(str, kp)))
        solid(root / "aflw_cropped" / crop, (150, 150))
    write_text(root / "aflw_cropped" / "facedata_cropped.csv", "\n".join(csv) + "\n")


# AFLW_R: train 10 images t00..t09 (60x80), test 2 images.  gt[n, i] = (y, x) with
# x = 10 i + n, y = 20 + i + n / 2 (no offset: DVE uses the values as stored).
def aflw_r_gt(n_images: int) -> np.ndarray:
    gt = np.zeros((n_images, 5, 2))
    for n in range(n_images):
        for i in range(5):
            gt[n, i] = (20 + i + n / 2, 10 * i + n)  # (y, x)
    return gt


def write_aflw_r(root: Path, test_images=None):
    """test_images: {relative name: PIL image} to use as the test set (default two RGB jpgs)."""
    train = [f"train/t{n:02d}.jpg" for n in range(10)]
    for name in train:
        solid(root / "output" / name, (60, 80))
    if test_images is None:
        test_images = {f"test/s{n}.jpg": Image.new("RGB", (80, 60), (1, 2, 3)) for n in range(2)}
    for name, img in test_images.items():
        (root / "output" / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / "output" / name)
    for subset, names in (("train", train), ("test", list(test_images))):
        write_text(root / f"aflw_{subset}_images.txt", "\n".join(names) + "\n")
        savemat(root / f"aflw_{subset}_keypoints.mat",
                {"gt": aflw_r_gt(len(names)), "hw": np.tile([80.0, 60.0], (len(names), 1))})


# 300W: train afw (2), helen/trainset (3), lfpw/trainset (5); test helen/testset (1),
# lfpw/testset (1), ibug (the .mat also lists a name not starting with 'image', absent on disk).
# Image j (its index in the listing order) has 1-based points x_i = 11 + i + j, y_i = 21 + i / 2.
W300_LAYOUT = {
    "afw": ("afw", ["134212_1.jpg", "134212_2.jpg"]),
    "helen_trainset": ("helen/trainset", ["100032540_1.jpg", "100040721_1.jpg", "100040721_2.jpg"]),
    "lfpw_trainset": ("lfpw/trainset", [f"image_{n:04d}.png" for n in range(1, 6)]),
    "helen_testset": ("helen/testset", ["296814969_3.jpg"]),
    "lfpw_testset": ("lfpw/testset", ["image_0001.png"]),
    "ibug": ("ibug", ["image_003_1.jpg", "3DSCN_fake.jpg"]),
}
W300_FIRST_BB = [100.0, 60.0, 203.0, 163.0]  # afw/134212_1.jpg, worked by hand in the tests


def pts_text(points) -> str:
    return ("version: 1\nn_points:  %d\n{\n" % len(points)
            + "".join(f"{x:.3f} {y:.3f}\n" for x, y in points) + "}\n")


def write_300w(root: Path):
    j = 0
    for key, (sub, names) in W300_LAYOUT.items():
        cell = np.empty((1, len(names)), dtype=object)
        for n, name in enumerate(names):
            bb = W300_FIRST_BB if j == 0 else [20.0 + j, 10.0, 71.0 + j, 61.0]
            cell[0, n] = {"imgName": name, "bb_detector": np.array([[1.0, 2.0, 3.0, 4.0]]),
                          "bb_ground_truth": np.array([bb])}
            if not name.startswith("3DSCN"):
                solid(root / sub / name, (120, 100))
                pts = [(11 + i + j, 21 + i / 2) for i in range(68)]
                write_text((root / sub / name).with_suffix(".pts"), pts_text(pts))
                j += 1
        (root / "Bounding Boxes").mkdir(parents=True, exist_ok=True)
        savemat(root / "Bounding Boxes" / f"bounding_boxes_{key}.mat", {"bounding_boxes": cell})


# CUB: 6 images (80x60).  id: (class, is_training) = 1: (14, 1), 2: (14, 0), 3: (1, 1),
# 4: (15, 1), 5: (170, 0), 6: (200, 0).  Part p of image k: x = 10 p + k, y = 2 p + k + 0.5,
# visible except parts 3 and 7 of image 1 (part 3 written as 0 0, part 7 with stray coordinates).
# Box of image k: x = 10, y = 5, w = 40, h = 30 + k.
CUB_IMAGES = {1: (14, 1, "014.Indigo_Bunting/Indigo_Bunting_0001_1.jpg"),
              2: (14, 0, "014.Indigo_Bunting/Indigo_Bunting_0002_2.jpg"),
              3: (1, 1, "001.Black_footed_Albatross/Black_Footed_Albatross_0001_3.jpg"),
              4: (15, 1, "015.Lazuli_Bunting/Lazuli_Bunting_0001_4.jpg"),
              5: (170, 0, "170.Mourning_Warbler/Mourning_Warbler_0001_5.jpg"),
              6: (200, 0, "200.Common_Yellowthroat/Common_Yellowthroat_0001_6.jpg")}


def write_cub(root: Path):
    images, labels, split, boxes, parts = [], [], [], [], []
    for k, (cls, train, rel) in CUB_IMAGES.items():
        solid(root / "images" / rel, (80, 60))
        images.append(f"{k} {rel}")
        labels.append(f"{k} {cls}")
        split.append(f"{k} {train}")
        boxes.append(f"{k} 10.0 5.0 40.0 {30.0 + k}")
        for p in range(1, 16):
            if k == 1 and p == 3:
                parts.append(f"{k} {p} 0.0 0.0 0")
            elif k == 1 and p == 7:
                parts.append(f"{k} {p} 33.0 44.0 0")
            else:
                parts.append(f"{k} {p} {10.0 * p + k} {2 * p + k + 0.5} 1")
    write_text(root / "images.txt", "\n".join(images) + "\n")
    write_text(root / "image_class_labels.txt", "\n".join(labels) + "\n")
    write_text(root / "train_test_split.txt", "\n".join(split) + "\n")
    write_text(root / "bounding_boxes.txt", "\n".join(boxes) + "\n")
    write_text(root / "parts" / "part_locs.txt", "\n".join(parts) + "\n")
    write_text(root / "classes.txt", "".join(f"{c} {c:03d}.Class\n" for c in range(1, 201)))


# MTFL as shipped: training.txt (lines led by a space but the first, backslash paths into lfw_5590\ and
# net_7876\) and testing.txt (AFLW\ paths) with x1..x5 y1..y5 (1-based) then gender smile glasses pose.
# Training face t (0..9): 1-based eyes (40 + t, 50), (60 + t, 50), nose (50 + t, 65), mouth (42 + t, 80),
# (58 + t, 80): inter-ocular 20, eye-to-mouth 30. Test face u (0..2): eyes (45, 60 + u), (105, 60 + u), nose
# (75, 80), mouth (55, 110), (95, 110). Training images 250x250 (LFW) or 160x200 (web), tests 150x150.
def mtfl_training_points(t: int) -> list[tuple[float, float]]:
    return [(40 + t, 50), (60 + t, 50), (50 + t, 65), (42 + t, 80), (58 + t, 80)]


def mtfl_test_points(u: int) -> list[tuple[float, float]]:
    return [(45, 60 + u), (105, 60 + u), (75, 80), (55, 110), (95, 110)]


def _mtfl_line(path: str, points, attributes: str) -> str:
    xs, ys = " ".join(f"{x:f}" for x, _ in points), " ".join(f"{y:f}" for _, y in points)
    return f"{path} {xs} {ys} {attributes}"


def write_mtfl(root: Path, n_train: int = 10):
    lines = []
    for t in range(n_train):
        sub, size = ("lfw_5590", (250, 250)) if t % 2 == 0 else ("net_7876", (160, 200))
        name = f"Person_{t:04d}_0001.jpg" if t % 2 == 0 else f"{t:02d}_{1000 + t}.jpg"
        solid(root / sub / name, size, (20 * t, 60, 100))
        lines.append(("" if t == 0 else " ") + _mtfl_line(f"{sub}\\{name}", mtfl_training_points(t), "1 2 2 3"))
    write_text(root / "training.txt", "\n".join(lines) + "\n")
    tests = []
    for u in range(3):
        name = f"{u + 1:04d}-image{20056 + u}.jpg"
        solid(root / "AFLW" / name, (150, 150), (90, 20 * u, 40))
        tests.append(("" if u == 0 else " ") + _mtfl_line(f"AFLW\\{name}", mtfl_test_points(u), "2 1 2 4"))
    write_text(root / "testing.txt", "\n".join(tests) + "\n")
    write_text(root / "readme.txt", "Multi-Task Facial Landmark (MTFL) dataset v1.0\n")


# A .pts folder as AFW ships with the 300-W markup: face k (0..3) of photo `1000_{k}` (or another photo's) has
# 1-based points
# x_i = 30 + i / 2 + k, y_i = 40 + (i % 17) * 2 (i = 0..67); images 160x140, face 2 a .png; a stray .txt beside.
def pts_folder_points(k: int) -> list[tuple[float, float]]:
    return [(30 + i / 2 + k, 40 + (i % 17) * 2) for i in range(68)]


def write_pts_folder(root: Path, count: int = 4, photo: str = "1000"):
    for k in range(count):
        image = root / f"{photo}_{k + 1}{'.png' if k == 2 else '.jpg'}"
        solid(image, (160, 140), (30, 40 * k, 90))
        write_text(image.with_suffix(".pts"), pts_text(pts_folder_points(k)))
    write_text(root / "notes.txt", "not an annotation\n")
