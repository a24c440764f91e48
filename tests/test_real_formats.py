"""The real-face formats on small fixtures in their exact layout: MTFL (its crop protocol, its splits), a folder
of images with a 68-point .pts beside each (AFW), and pretraining on the union of several sources."""
import argparse
import json

import numpy as np
import pytest

from common.cli import data_args, from_flags
from common.data import DataSpec, load_tensors
from common.errors import UserError
from common.imageio import crop_resize
from common.data.readers import READERS, box_300w, mtfl_box, read_mtfl, read_ptsfolder
from common.hub import data_line
from common.imageio import open_rgb
from tests.format_fixtures import (mtfl_test_points, mtfl_training_points, pts_folder_points, write_mtfl,
                                   write_pts_folder)


def lms(ds, i):
    return np.asarray(ds[i]["landmarks"])


def name(ds, i):
    return ds.cast_column("image", __import__("datasets").Image(decode=False))[i]["image"]["path"].split("/")[-1]


def parsed(*argv) -> dict:
    return vars(argparse.ArgumentParser(parents=[data_args()]).parse_args(list(argv)))


def flags(*argv) -> DataSpec:
    return from_flags(DataSpec, parsed(*argv))


def test_mtfl_splits_points_and_boxes(tmp_path):
    write_mtfl(tmp_path)
    sizes = {split: len(read_mtfl(tmp_path, split)) for split in ("pretrain", "train", "val", "test")}
    assert sizes == {"pretrain": 10, "train": 9, "val": 1, "test": 3}
    train, val, test = read_mtfl(tmp_path, "train"), read_mtfl(tmp_path, "val"), read_mtfl(tmp_path, "test")
    # 1-based as shipped, 0-based here; backslash paths, a first line without its leading space
    np.testing.assert_array_equal(lms(train, 0), np.array(mtfl_training_points(0)) - 1)
    np.testing.assert_array_equal(lms(val, 0), np.array(mtfl_training_points(9)) - 1)
    np.testing.assert_array_equal(lms(test, 2), np.array(mtfl_test_points(2)) - 1)
    assert [name(train, i) for i in (0, 1)] == ["Person_0000_0001.jpg", "01_1001.jpg"]
    assert name(test, 0) == "0001-image20056.jpg"
    # test: DVE's preprocessing takes the whole 150x150 AFLW crop
    assert test[1]["box"] == [-0.5, -0.5, 149.5, 149.5]
    # training face t: side 4.2 x max(20 inter-ocular, 30 eye-to-mouth) = 126 times its photo's factor in
    # [0.75, 1.25], centred 0.08 x 30 = 2.4 below the points' mean (0-based: x = 49 + t, y = (49 + 49 + 64 + 79 + 79)
    # / 5 = 64); the same factors on every read
    boxes = np.array([read_mtfl(tmp_path, "pretrain")[t]["box"] for t in range(10)])
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]) / 2, [[49 + t, 66.4] for t in range(10)], atol=1e-4)
    sides = (boxes[:, 2:] - boxes[:, :2]) / 126
    np.testing.assert_allclose(sides[:, 0], sides[:, 1])
    assert (0.75 <= sides).all() and (sides <= 1.25).all() and sides.std() > 0.05
    np.testing.assert_allclose(train[1]["box"], boxes[1], atol=1e-6)
    np.testing.assert_allclose(val[0]["box"], boxes[9], atol=1e-6)
    # the eye-to-mouth distance decides for a profile face, the eyes for a wide one (50: side 210, 4 px lower)
    wide = np.array([[0, 0], [50, 0], [25, 5], [15, 10], [35, 10]], float)
    np.testing.assert_allclose(mtfl_box(wide), [25 - 105, 9 - 105, 25 + 105, 9 + 105])


def test_mtfl_cache_crops_the_training_face_to_its_box(cache_dir, tmp_path):
    write_mtfl(tmp_path)
    args = flags("--dataset", "mtfl", "--data_dir", str(tmp_path), "--image_size", "32")
    cache = load_tensors(args, "train")
    assert len(cache) == 9 and cache.landmarks.shape == (9, 5, 2)
    row = read_mtfl(tmp_path, "train")[3]
    image = open_rgb(tmp_path / "net_7876" / "03_1003.jpg")
    pixels, scale, offset = crop_resize(image, row["box"], 32)          # the same crop, made here
    np.testing.assert_array_equal(cache.images[3], pixels)
    np.testing.assert_allclose(cache.landmarks[3], np.asarray(row["landmarks"]) * scale + offset, atol=1e-4)


def test_mtfl_errors(tmp_path):
    with pytest.raises(UserError, match=r"unknown split 'trian' \(valid: pretrain, train, val, test\)"):
        read_mtfl(tmp_path, "trian")
    with pytest.raises(UserError, match=r"training.txt: not found \(expected the MTFL list training.txt"):
        read_mtfl(tmp_path, "train")
    write_mtfl(tmp_path)
    text = (tmp_path / "testing.txt").read_text().replace("105.000000", "x", 1)
    (tmp_path / "testing.txt").write_text(text)
    with pytest.raises(UserError, match=r"testing.txt:1: expected 10 numbers"):
        read_mtfl(tmp_path, "test")


def test_pts_folder_reads_each_image_and_its_points(tmp_path):
    write_pts_folder(tmp_path)
    ds = read_ptsfolder(tmp_path, "all")
    assert len(ds) == 4 and READERS["ptsfolder"] is read_ptsfolder
    assert [name(ds, i) for i in range(4)] == ["1000_1.jpg", "1000_2.jpg", "1000_3.png", "1000_4.jpg"]
    k = 2
    points = np.array(pts_folder_points(k))
    np.testing.assert_allclose(lms(ds, k), points - 1, atol=1e-4)
    # the 300-W crop of the points' bounding box, in 1-based coordinates as 300-W's own boxes
    np.testing.assert_allclose(ds[k]["box"], box_300w([*points.min(0), *points.max(0)]), atol=1e-4)
    train = read_ptsfolder(tmp_path, "train")
    assert len(train) == 4 and ds[0]["identity"] == -1                                  # photo 1000: a train photo
    # training faces: that crop scaled by 0.75-1.25 and moved by at most 0.1 of its side, each differently
    ratios = []
    for i in range(4):
        pts = np.array(pts_folder_points(i))
        ref, box = np.array(box_300w([*pts.min(0), *pts.max(0)])), np.array(train[i]["box"])
        side, ref_side = box[2] - box[0], ref[2] - ref[0]
        assert abs((box[3] - box[1]) - side) < 1e-3 and 0.75 <= side / ref_side <= 1.25
        assert np.abs((box[:2] + box[2:]) / 2 - (ref[:2] + ref[2:]) / 2).max() <= 0.1 * ref_side + 1e-4
        ratios.append(side / ref_side)
    assert len(set(np.round(ratios, 4))) == 4
    assert len(read_ptsfolder(tmp_path)) == len(read_ptsfolder(tmp_path, "pretrain")) == 4


def test_pts_folder_splits_by_photo_into_train_and_val(tmp_path):
    """The faces of one photo stay together; photos 1004 and 1010 are validation photos (CRC-32 of their names 0
    modulo 10: 1004 -> 3007997710, 1010 -> 2906427990, worked out once), 1000 and 1001 training ones; a folder of
    folders (afw/, helen_train/) is read whole; `test` is no split of such a folder."""
    for sub, photo, faces in (("afw", "1000", 2), ("afw", "1004", 2), ("helen", "1001", 1), ("helen", "1010", 1)):
        write_pts_folder(tmp_path / sub, faces, photo)
    val, train = read_ptsfolder(tmp_path, "val"), read_ptsfolder(tmp_path, "train")
    assert sorted(name(val, i) for i in range(len(val))) == ["1004_1.jpg", "1004_2.jpg", "1010_1.jpg"]
    assert sorted(name(train, i) for i in range(len(train))) == ["1000_1.jpg", "1000_2.jpg", "1001_1.jpg"]
    assert len(read_ptsfolder(tmp_path, "all")) == 6
    two = read_ptsfolder(f"{tmp_path / 'helen'}:{tmp_path / 'afw'}", "all")            # folders named one by one
    assert [name(two, i) for i in range(len(two))] == ["1001_1.jpg", "1010_1.jpg", "1000_1.jpg", "1000_2.jpg",
                                                       "1004_1.jpg", "1004_2.jpg"]
    with pytest.raises(UserError, match="nowhere: not found"):
        read_ptsfolder(f"{tmp_path / 'afw'}:{tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match=r"ptsfolder: no 'test' split \(valid: train, val, all, pretrain"):
        read_ptsfolder(tmp_path, "test")


def test_pts_folder_errors_and_a_pts_without_its_image(tmp_path, caplog):
    with pytest.raises(UserError, match="no .pts files found"):
        read_ptsfolder(tmp_path)
    write_pts_folder(tmp_path)
    (tmp_path / "1000_2.jpg").unlink()
    with caplog.at_level("WARNING", logger="lead.data"):
        assert len(read_ptsfolder(tmp_path, max_bad_frac=0.5)) == 3
    assert "1000_2.jpg (missing file)" in caplog.text
    (tmp_path / "1000_9.pts").write_text("version: 1\nn_points:  5\n{\n1 2\n3 4\n5 6\n7 8\n9 10\n}\n")
    with pytest.raises(UserError, match=r"1000_9.pts: 5 points \(n_points: 5\), expected 68"):
        read_ptsfolder(tmp_path)


def test_pretraining_on_the_union_of_sources(cache_dir, tmp_path):
    write_mtfl(tmp_path / "mtfl")
    write_pts_folder(tmp_path / "afw")
    args = flags("--dataset", "mtfl", "--data_dir", str(tmp_path / "mtfl"), "--image_size", "32", "--add_data",
                 f"ptsfolder:{tmp_path / 'afw'}", "--add_data", "synthetic", "--num_images", "6",
                 "--data_workers", "1")
    union = load_tensors(args, "pretrain")
    alone = [load_tensors(a, "pretrain") for a in (
        flags("--dataset", "mtfl", "--data_dir", str(tmp_path / "mtfl"), "--image_size", "32", "--num_images", "6"),
        flags("--dataset", "ptsfolder", "--data_dir", str(tmp_path / "afw"), "--image_size", "32"),
        flags("--image_size", "32", "--num_images", "6", "--data_workers", "1"))]
    assert [len(a) for a in alone] == [6, 4, 6] and len(union) == 16
    np.testing.assert_array_equal(union.images, np.concatenate([a.images for a in alone]))
    assert union.landmarks.shape == (16, 0, 2) and (np.asarray(union.identity) == -1).all()
    assert union.meta["counts"] == [6, 4, 6] and union.meta["sources"] == ["mtfl", "ptsfolder", "synthetic"]
    assert load_tensors(args, "pretrain").folder == union.folder                       # built once
    assert len(load_tensors(args, "val")) == 1                                         # other splits: --dataset's
    line = data_line(args, "pretrain")
    assert line.startswith("data: --dataset mtfl --add_data ptsfolder --add_data synthetic") and "afw" not in line
    with pytest.raises(UserError, match="--add_data mtfl: give its folder, as mtfl:DIR"):
        load_tensors(flags("--add_data", "mtfl"), "pretrain")


def test_resume_accepts_a_run_written_before_a_flag_was_added(tmp_path):
    from common.training import check_resume_args
    now = parsed("--dataset", "synthetic")
    old = {k: v for k, v in now.items() if k != "add_data"}
    (tmp_path / "args.json").write_text(json.dumps(old))
    check_resume_args(now, tmp_path)                                   # --add_data left off: the same run
    with pytest.raises(UserError, match=r"other settings than .* \(add_data\)"):
        check_resume_args(parsed("--add_data", "synthetic"), tmp_path)


def test_resume_accepts_a_flag_added_since_at_its_default(tmp_path):
    """regress.py's --score_split came after runs were written: their args.json lacks it, and its default
    ("test") is the same run; another value is not."""
    import regress
    from common.cli import flag_defaults
    from common.training import check_resume_args
    parser = regress.get_args_parser()
    args = parser.parse_args(["--features_from", "random-resnet18"])
    (tmp_path / "args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "score_split"},
                                                   default=str))
    check_resume_args(vars(args), tmp_path, defaults=flag_defaults(parser, vars(args)))
    with pytest.raises(UserError, match=r"\(score_split\)"):
        check_resume_args(vars(args), tmp_path)                        # without the defaults: not known to be off
    with pytest.raises(UserError, match=r"\(score_split\)"):
        check_resume_args(vars(parser.parse_args(["--features_from", "random-resnet18", "--score_split", "val"])),
                          tmp_path, defaults=flag_defaults(parser, vars(args)))
