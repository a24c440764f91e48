"""Readers against tiny fixtures written in each real on-disk format (tests/format_fixtures.py).

Expected values are worked out by hand from the format definitions, never by calling a reader.
"""
from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from common.data.readers import (CELEBA_BOX, PASSEROIDEA, READERS, box_300w, read_300w, read_aflw_m,
                                 read_aflw_r, read_celeba, read_cub, read_hf, read_imagefolder,
                                 read_mafl)
from tests.format_fixtures import (solid, write_300w, write_aflw_m, write_aflw_r, write_celeba,
                                   write_cub, write_text)


def paths(ds) -> list[str]:
    """Image paths of the rows, relative names only, without decoding."""
    return [Path(r["path"]).name for r in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def lms(ds, i) -> np.ndarray:
    return np.asarray(ds[i]["landmarks"], dtype=np.float64)


# ---------------------------------------------------------------- CelebA / MAFL

def test_celeba_splits_landmarks_box_identity(tmp_path):
    write_celeba(tmp_path)
    train = read_celeba(tmp_path, "train")
    assert paths(train) == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    # image 3: lefteye (63, 103), righteye (113, 104), nose (88, 133), mouth (73, 153), (108, 154)
    np.testing.assert_array_equal(lms(train, 2), [[63, 103], [113, 104], [88, 133], [73, 153], [108, 154]])
    assert train[2]["visible"] == [True] * 5 and train[2]["identity"] == 103
    assert CELEBA_BOX == [-0.5, 29.5, 177.5, 207.5]  # rows 30..207, columns 0..177 as edges
    assert train[0]["box"] == CELEBA_BOX
    assert paths(read_celeba(tmp_path, "val")) == ["000005.jpg", "000006.jpg", "000009.jpg"]
    assert paths(read_celeba(tmp_path, "test")) == ["000007.jpg", "000008.jpg"]
    # partition 0 minus MAFL (2, 3 train; 5 is MAFL but partition 1)
    assert paths(read_celeba(tmp_path, "pretrain")) == ["000001.jpg", "000004.jpg"]


def test_celeba_without_identity_or_mafl_and_hq_folder(tmp_path, caplog):
    write_celeba(tmp_path, identity=False, mafl=False, img_sub="img_align_celeba_hq")
    with caplog.at_level(logging.WARNING, logger="lead.data"):
        pre = read_celeba(tmp_path, "pretrain")
    assert paths(pre) == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    assert "MAFL" in caplog.text
    assert set(pre["identity"]) == {-1}
    assert "img_align_celeba_hq" in read_celeba(tmp_path, "test").cast_column(
        "image", datasets.Image(decode=False))[0]["image"]["path"]


def test_celeba_count_line_must_match(tmp_path):
    write_celeba(tmp_path, count=10)
    with pytest.raises(UserError, match="says 10 rows but the file has 9"):
        read_celeba(tmp_path, "train")


def test_mafl_splits(tmp_path):
    write_celeba(tmp_path)
    train = read_mafl(tmp_path, "train")
    assert paths(train) == ["000002.jpg", "000003.jpg", "000005.jpg"]
    np.testing.assert_array_equal(lms(train, 2), [[65, 105], [115, 106], [90, 135], [75, 155], [110, 156]])
    assert train[0]["box"] == [-0.5, 29.5, 177.5, 207.5] and train[0]["identity"] == 102
    assert paths(read_mafl(tmp_path, "test")) == ["000007.jpg"]
    # val: partition 1 (5, 6, 9) minus MAFL (5), first val_size
    assert paths(read_mafl(tmp_path, "val")) == ["000006.jpg", "000009.jpg"]
    assert paths(read_mafl(tmp_path, "val", val_size=1)) == ["000006.jpg"]


# ---------------------------------------------------------------- AFLW

def test_aflw_m(tmp_path):
    write_aflw_m(tmp_path)
    test = read_aflw_m(tmp_path, "test")
    assert len(test) == 3
    # x1..x5 = 11..51, y1..y5 = 12..52, 1-based
    np.testing.assert_array_equal(lms(test, 0), [[10, 11], [20, 21], [30, 31], [40, 41], [50, 51]])
    np.testing.assert_array_equal(lms(test, 1), [[100.5, 0], [89, 1], [79, 2], [69, 3], [59, 4]])
    assert paths(test)[:2] == ["1-image00001.jpg", "2-image00002.jpg"]  # `\` and `/` both work
    assert test[0]["box"] == [-0.5, -0.5, 149.5, 149.5]
    train = read_aflw_m(tmp_path, "train")
    assert len(train) == 10  # rows 3 and 8 have set 2
    assert paths(train)[3] == "face_004.jpg"
    # row r: interleaved 1-based x_i = 10 i + r + 1, y_i = 10 i + r + 2
    np.testing.assert_array_equal(lms(train, 0), [[10, 11], [20, 21], [30, 31], [40, 41], [50, 51]])
    val = read_aflw_m(tmp_path, "val")
    assert paths(val) == ["face_011.jpg"]  # r = 11: 1-based x_i = 10 i + 12, y_i = 10 i + 13
    np.testing.assert_array_equal(lms(val, 0), [[21, 22], [31, 32], [41, 42], [51, 52], [61, 62]])


def test_aflw_r(tmp_path):
    write_aflw_r(tmp_path)
    train = read_aflw_r(tmp_path, "train")
    assert len(train) == 10 and len(read_aflw_r(tmp_path, "test")) == 2
    # gt[0, i] = (y, x) = (20 + i, 10 i): swapped, no offset
    np.testing.assert_array_equal(lms(train, 0), [[0, 20], [10, 21], [20, 22], [30, 23], [40, 24]])
    assert train[0]["box"] == [-0.5, -0.5, 59.5, 79.5]
    val = read_aflw_r(tmp_path, "val")
    assert paths(val) == ["t09.jpg"]
    np.testing.assert_array_equal(lms(val, 0), [[9, 24.5], [19, 25.5], [29, 26.5], [39, 27.5], [49, 28.5]])


# ---------------------------------------------------------------- 300W

def test_300w_splits_points_boxes(tmp_path):
    write_300w(tmp_path)
    train, test, val = (read_300w(tmp_path, s) for s in ("train", "test", "val"))
    assert len(train) == 10 and len(val) == 1
    assert paths(test) == ["296814969_3.jpg", "image_0001.png", "image_003_1.jpg"]  # no 3DSCN
    i = np.arange(68)
    np.testing.assert_allclose(lms(train, 0), np.stack([10 + i, 20 + i / 2], 1))  # .pts 11 + i -> 10 + i
    np.testing.assert_allclose(lms(test, 2), np.stack([22 + i, 20 + i / 2], 1))   # image j = 12
    assert paths(val) == ["image_0005.png"]
    np.testing.assert_allclose(lms(val, 0), np.stack([19 + i, 20 + i / 2], 1))    # image j = 9
    # bb [100, 60, 203, 163]: bw 104, fac 0.5, bcx_ 76, bcy_ 56 -> bx 27, bX 126, by 5, bY 104
    np.testing.assert_allclose(train[0]["box"], [51.5, 7.5, 251.5, 207.5])
    # bb [21, 10, 72, 61]: fac 1, bcx_ 47, bcy_ 36 -> bx -2, bX 97, by -15, bY 84 (leaves the image)
    np.testing.assert_allclose(train[1]["box"], [-3.5, -16.5, 96.5, 83.5])


def dve_300w_keypoints(kp_1based, bb):
    """DVE ThreeHundredW.__getitem__'s keypoint arithmetic, transcribed (preresize_sz = 100)."""
    xmin, ymin, xmax, ymax = bb
    bw, bh = xmax - xmin + 1, ymax - ymin + 1
    bcy, bcx = ymin + (bh + 1) / 2, xmin + (bw + 1) / 2
    bw_ = 52
    fac = bw_ / bw
    bcx_, bcy_ = int(np.floor(fac * bcx)), int(np.floor(fac * bcy))
    bx, by = bcx_ - bw_ / 2 + 1, bcy_ - bw_ / 2 + 1
    pp = (100 - bw_) / 2
    bx, by = int(bx - pp), int(by - pp - 2)
    kp = np.array(kp_1based, dtype=np.float64) * fac
    kp[:, 0] -= bx - 1
    kp[:, 1] -= by - 1
    return kp - 1


def through_box(xy, box):
    x0, y0, x1, y1 = box
    return np.stack([(xy[:, 0] - x0) / (x1 - x0) * 100 - 0.5, (xy[:, 1] - y0) / (y1 - y0) * 100 - 0.5], 1)


def test_box_300w_matches_dve_keypoint_arithmetic():
    # Worked by hand: bb [100, 60, 203, 163] -> box [51.5, 7.5, 251.5, 207.5] (side 100 / 0.5).
    # .pts point (151, 101) is 0-based (150, 100): through the box (150 - 51.5) / 2 - 0.5 = 48.75,
    # (100 - 7.5) / 2 - 0.5 = 45.75; DVE: 151 * 0.5 - 26 - 1 = 48.5, 101 * 0.5 - 4 - 1 = 45.5.
    box = box_300w([100, 60, 203, 163])
    assert box == [51.5, 7.5, 251.5, 207.5]
    np.testing.assert_allclose(through_box(np.array([[150.0, 100.0]]), box), [[48.75, 45.75]])
    np.testing.assert_allclose(dve_300w_keypoints([[151, 101]], [100, 60, 203, 163]), [[48.5, 45.5]])
    # Any box: the two agree to 0.5 (1 - fac) <= 0.5 px for fac <= 2 (faces wider than 25 px).
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = rng.uniform(0, 500, 2)
        w, h = rng.uniform(26, 400), rng.uniform(26, 400)
        bb = [x, y, x + w, y + h]
        kp = rng.uniform(0, 900, (68, 2))
        fac = 52 / (w + 1)
        ours, dve = through_box(kp - 1, box_300w(bb)), dve_300w_keypoints(kp, bb)
        assert np.abs(ours - dve).max() <= 0.5 + 1e-9
        np.testing.assert_allclose(ours - dve, 0.5 * (1 - fac), atol=1e-6)
        b = box_300w(bb)
        assert abs((b[2] - b[0]) - 100 / fac) < 1e-6 and abs((b[3] - b[1]) - 100 / fac) < 1e-6


def test_300w_wrong_point_count_is_a_data_error(tmp_path):
    write_300w(tmp_path)
    pts = tmp_path / "afw" / "134212_2.pts"
    write_text(pts, "version: 1\nn_points: 67\n{\n" + "1 2\n" * 67 + "}\n")
    with pytest.raises(UserError, match="134212_2.pts: 67 points"):
        read_300w(tmp_path, "train")


# ---------------------------------------------------------------- CUB

def test_cub_default_classes_visibility_identity(tmp_path):
    write_cub(tmp_path)
    train = read_cub(tmp_path, "train")
    assert train["identity"] == [14, 15]  # image 3 (class 1) is not Passeroidea
    assert read_cub(tmp_path, "test")["identity"] == [14, 170]  # class 200 dropped
    p = np.arange(1, 16)
    expected = np.stack([10.0 * p + 1, 2 * p + 1.5], 1)
    expected[[2, 6]] = 0  # parts 3 and 7 invisible -> (0, 0)
    np.testing.assert_array_equal(lms(train, 0), expected)
    assert train[0]["visible"] == [n not in (3, 7) for n in range(1, 16)]
    assert train[1]["visible"] == [True] * 15
    assert train[0]["box"] == [-0.5, -0.5, 79.5, 59.5]
    assert len(PASSEROIDEA) == 35


def test_cub_all_classes_bbox_crop_and_split_lists(tmp_path):
    write_cub(tmp_path)
    assert read_cub(tmp_path, "train", classes=None)["identity"] == [14, 1, 15]
    assert read_cub(tmp_path, "test", classes=None)["identity"] == [14, 170, 200]
    # image 1: x 10, y 5, w 40, h 31 -> centre (29.5, 20.0), side 40
    assert read_cub(tmp_path, "train", crop="bbox")[0]["box"] == [9.5, 0.0, 49.5, 40.0]
    lists = tmp_path / "lists"
    prefix = "/mnt/nfs/scratch1/someone/datasets/CUB_200_2011/images/"
    write_text(lists / "train.txt", prefix + "015.Lazuli_Bunting/Lazuli_Bunting_0001_4.jpg\n"
               + prefix + "014.Indigo_Bunting/Indigo_Bunting_0001_1.jpg\n")
    write_text(lists / "val.txt", prefix + "001.Black_footed_Albatross/Black_Footed_Albatross_0001_3.jpg\n")
    assert read_cub(tmp_path, "train", split_dir=lists)["identity"] == [15, 14]
    assert read_cub(tmp_path, "val", split_dir=lists)["identity"] == [1]
    with pytest.raises(UserError, match="test.txt: not found"):
        read_cub(tmp_path, "test", split_dir=lists)


# ---------------------------------------------------------------- image folders

def test_imagefolder_order_box_exif(tmp_path):
    solid(tmp_path / "b" / "z.PNG", (20, 30))
    solid(tmp_path / "a.jpg", (40, 20))
    solid(tmp_path / "b" / "c" / "y.tif", (16, 16))
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90: displayed 20 wide, 40 high
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    write_text(tmp_path / "notes.txt", "not an image")
    write_text(tmp_path / "._a.jpg", "macOS shadow file")
    ds = read_imagefolder(tmp_path, "anything")
    # sorted a.jpg, b/c/y.tif, b/z.PNG, rot.jpg (told apart by size: rows may hold bytes, no path)
    assert [im.size for im in ds["image"]] == [(40, 20), (16, 16), (20, 30), (20, 40)]
    assert "landmarks" not in ds.column_names
    assert ds[0]["box"] == [9.5, -0.5, 29.5, 19.5]   # 40x20 -> centred 20x20
    assert ds[2]["box"] == [-0.5, 4.5, 19.5, 24.5]   # 20x30 -> centred 20x20
    assert ds[3]["box"] == [-0.5, 9.5, 19.5, 29.5]    # EXIF-rotated 20x40 -> centred 20x20


def test_imagefolder_empty_is_a_data_error(tmp_path):
    write_text(tmp_path / "readme.md", "no images here")
    with pytest.raises(UserError, match="no images found"):
        read_imagefolder(tmp_path, "train")


# ---------------------------------------------------------------- errors shared by all readers

MISSING = [  # (writer, format, split, path whose absence must be reported)
    (write_celeba, "celeba", "train", "Anno/list_landmarks_align_celeba.txt"),
    (write_celeba, "celeba", "val", "Eval/list_eval_partition.txt"),
    (write_celeba, "celeba", "test", "Img/img_align_celeba"),
    (write_celeba, "mafl", "train", "MAFL/training.txt"),
    (write_celeba, "mafl", "test", "MAFL/testing.txt"),
    (write_aflw_m, "aflw_m", "test", "MTFL/testing.txt"),
    (write_aflw_m, "aflw_m", "train", "aflw_cropped/facedata_cropped.csv"),
    (write_aflw_r, "aflw_r", "train", "aflw_train_images.txt"),
    (write_aflw_r, "aflw_r", "test", "aflw_test_keypoints.mat"),
    (write_300w, "300w", "test", "Bounding Boxes/bounding_boxes_ibug.mat"),
    (write_300w, "300w", "train", "lfpw/trainset/image_0003.pts"),
    (write_cub, "cub", "train", "parts/part_locs.txt"),
    (write_cub, "cub", "test", "train_test_split.txt"),
    (write_cub, "cub", "train", "image_class_labels.txt"),
    (write_cub, "cub", "train", "images.txt"),
]


@pytest.mark.parametrize("writer,fmt,split,rel", MISSING, ids=[f"{m[1]}-{m[3]}" for m in MISSING])
def test_missing_annotation_names_the_path(tmp_path, writer, fmt, split, rel):
    writer(tmp_path)
    target = tmp_path / rel
    if target.is_dir():
        for f in sorted(target.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(UserError) as err:
        READERS[fmt](tmp_path, split)
    assert f"{target}: not found" in str(err.value) and "\n" not in str(err.value)


def test_missing_cub_boxes_only_matter_for_bbox_crop(tmp_path):
    write_cub(tmp_path)
    (tmp_path / "bounding_boxes.txt").unlink()
    assert len(read_cub(tmp_path, "train")) == 2
    with pytest.raises(UserError, match="bounding_boxes.txt: not found"):
        read_cub(tmp_path, "train", crop="bbox")


@pytest.mark.parametrize("fmt", ["celeba", "mafl", "aflw_m", "aflw_r", "300w", "cub"])
def test_unknown_split_lists_valid_ones(tmp_path, fmt):
    with pytest.raises(UserError, match=r"unknown split 'trian' \(valid: .*train.*test"):
        READERS[fmt](tmp_path, "trian")


def test_bad_images_are_skipped_counted_and_limited(tmp_path, caplog):
    write_celeba(tmp_path)
    imgs = tmp_path / "Img" / "img_align_celeba"
    (imgs / "000002.jpg").write_bytes(b"")
    (imgs / "000003.jpg").write_text("this is text, not a jpeg")
    with caplog.at_level(logging.WARNING, logger="lead.data"):
        ds = read_celeba(tmp_path, "train", max_bad_frac=0.5)
    assert paths(ds) == ["000001.jpg", "000004.jpg"]
    assert "skipped 2 of 4 images" in caplog.text and "000003.jpg" in caplog.text
    np.testing.assert_array_equal(lms(ds, 1), [[64, 104], [114, 105], [89, 134], [74, 154], [109, 155]])
    with pytest.raises(UserError, match=r"celeba\[train\]: 2 of 4 images are bad"):
        read_celeba(tmp_path, "train")  # default max_bad_frac 1%


def _img16() -> Image.Image:
    a = np.zeros((20, 20), np.uint16)
    a[:, 10:] = 65535
    return Image.fromarray(a)


def _palette() -> Image.Image:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    return img


CONVERSIONS = [  # (file name, image, pixel (x, y), expected RGB, tolerance)
    pytest.param("pal.png", _palette(), (3, 3), (200, 10, 30), 0),
    pytest.param("deep.png", _img16(), (15, 3), (255, 255, 255), 0),  # 65535
    pytest.param("deep0.png", _img16(), (3, 3), (0, 0, 0), 0),
    pytest.param("cmyk.jpg", Image.new("CMYK", (20, 20), (0, 255, 255, 0)), (3, 3), (255, 0, 0), 3),
    pytest.param("rgba.png", Image.new("RGBA", (20, 20), (5, 6, 7, 255)), (3, 3), (5, 6, 7), 0),
    pytest.param("grey.png", Image.new("L", (20, 20), 77), (3, 3), (77, 77, 77), 0),
]


@pytest.mark.parametrize("name,img,xy,rgb,tol", CONVERSIONS, ids=lambda v: v if isinstance(v, str) else "")
def test_odd_modes_decode_as_rgb(tmp_path, name, img, xy, rgb, tol):
    write_aflw_r(tmp_path, test_images={f"test/{name}": img})
    with Image.open(tmp_path / "output" / "test" / name) as stored:  # the fixture is really odd
        assert stored.mode != "RGB"
    out = read_aflw_r(tmp_path, "test")[0]["image"]
    assert out.mode == "RGB"
    assert np.abs(np.subtract(out.getpixel(xy), rgb)).max() <= tol


# ---------------------------------------------------------------- Hugging Face datasets

def _hf(n=2, image=True):
    cols = {"label": list(range(n))}
    if image:
        cols["image"] = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(n)]
    return datasets.Dataset.from_dict(cols)


def test_read_hf_saved_dataset_and_dict(tmp_path):
    _hf(3).save_to_disk(str(tmp_path / "one"))
    assert len(read_hf(tmp_path / "one", "train")) == 3
    datasets.DatasetDict({"train": _hf(2), "test": _hf(1)}).save_to_disk(str(tmp_path / "dict"))
    assert len(read_hf(tmp_path / "dict", "test")) == 1
    with pytest.raises(UserError, match=r"unknown split 'val' \(valid: train, test\)"):
        read_hf(tmp_path / "dict", "val")
    _hf(2, image=False).save_to_disk(str(tmp_path / "noimg"))
    with pytest.raises(UserError, match="no `image` column"):
        read_hf(tmp_path / "noimg", "train")
    with pytest.raises(UserError, match="absent: not found"):
        read_hf(str(tmp_path / "absent"), "train")


def test_read_hf_local_data_folder_via_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    _hf(2).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    ds = read_hf(str(tmp_path / "pq"), "train")
    assert len(ds) == 2 and ds[1]["image"].getpixel((0, 0)) == (1, 0, 0)
    with pytest.raises(UserError, match="Unknown split"):
        read_hf(str(tmp_path / "pq"), "test")
