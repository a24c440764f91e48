"""The readers and both training stages on the real face data beside the project (../shared/data: MTFL with the
AFLW test faces, CelebA at half resolution, AFW with 68 points). Skipped, with the reason, where it is absent;
never copied into the repository."""
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

DATA = Path(os.environ.get("LEAD_REAL_DATA", ROOT.parent / "shared" / "data"))
pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not (DATA / "mtfl" / "training.txt").is_file(),
                                 reason=f"no real face data at {DATA} (set LEAD_REAL_DATA to its folder)")]


@pytest.mark.slow
def test_reader_counts_and_exact_points():
    from common.data.readers import read_imagefolder, read_mtfl, read_ptsfolder
    mtfl = {split: read_mtfl(DATA / "mtfl", split) for split in ("pretrain", "train", "val", "test")}
    assert {k: len(v) for k, v in mtfl.items()} == {"pretrain": 10_000, "train": 9_000, "val": 1_000, "test": 2_995}
    assert len(read_imagefolder(DATA / "celeba_half")) == 10_000
    afw = read_ptsfolder(DATA / "afw")
    assert len(afw) == 337
    # training.txt line 1 (lfw_5590\Aaron_Eckhart_0001.jpg) and testing.txt line 1 (AFLW\0001-image20056.jpg),
    # x1..x5 then y1..y5, 1-based
    np.testing.assert_allclose(mtfl["train"][0]["landmarks"], np.array(
        [[107.25, 108.75], [147.75, 113.25], [126.25, 143.75], [106.25, 158.75], [140.75, 162.75]]) - 1, atol=1e-4)
    np.testing.assert_allclose(mtfl["test"][0]["landmarks"], np.array(
        [[56.607985, 43.250454], [101.326679, 58.059891], [79.548094, 69.965517], [43.831216, 86.22686],
         [93.196007, 103.940109]]) - 1, atol=1e-4)
    assert mtfl["test"][0]["box"] == [-0.5, -0.5, 149.5, 149.5]
    # afw/1051618982_1.pts: its first point 160.994 189.330, 1-based
    np.testing.assert_allclose(afw[0]["landmarks"][0], [159.994, 188.330], atol=1e-3)


@pytest.mark.slow
def test_four_steps_of_each_stage_on_real_photos(cache_dir, tmp_path):
    import byol_pretrain
    import dense_distill
    from common.models import DenseExtractor
    data = ["--dataset", "mtfl", "--data_dir", str(DATA / "mtfl"), "--add_data", f"imagefolder:{DATA / 'celeba_half'}",
            "--num_images", "48", "--image_size", "48", "--crop_size", "32", "--batch_size", "8", "--max_steps", "4",
            "--probe_pairs", "6", "--data_workers", "1"]
    s1 = byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(data + [
        "--arch", "resnet18", "--optimizer", "adam", "--lr", "3.2e-2", "--proj_hidden", "32", "--proj_dim", "16",
        "--objective", "pixel", "--dve_weight", "4", "--crop_scale", "0.3", "1", "--output_dir", str(tmp_path / "s1")]))
    s2 = dense_distill.main(dense_distill.get_args_parser().parse_args(data + [
        "--init_from", str(tmp_path / "s1" / "final"), "--feature_dim", "16", "--fpn_width", "16", "--head_dim", "32",
        "--objective", "lead+dve", "--dve_channels", "8", "--unfreeze_encoder", "--keep_frozen", "1",
        "--output_dir", str(tmp_path / "s2")]))
    assert s1["step"] == s2["step"] == 4
    for result in (s1, s2):                  # probed on MTFL's own validation faces, each figure finite
        assert all(np.isfinite(v) for r in result["probe"].values() for v in r.values())
    assert "--dataset mtfl, val split, 48 faces; identities unknown" in \
        (tmp_path / "s2" / "final" / "README.md").read_text()
    assert DenseExtractor.from_pretrained(tmp_path / "s2" / "final").feature_dim == 16


def test_68_point_faces_their_splits_and_exact_points():
    """AFW (337) and HELEN's training faces (870) as 300-W ships them: 1,207 faces, split by photo into 1,104 train
    and 103 val; exact points of helen_train/100032540_1.pts (its first and last lines, 1-based)."""
    from common.data.readers import read_ptsfolder
    helen = read_ptsfolder(DATA / "helen_train", "all")
    assert len(helen) == 870
    np.testing.assert_allclose(helen[0]["landmarks"][0], [127.5, 165.721], atol=1e-3)
    np.testing.assert_allclose(helen[0]["landmarks"][67], [174.919, 210.723], atol=1e-3)
    both = {s: read_ptsfolder(f"{DATA / 'afw'}:{DATA / 'helen_train'}", s) for s in ("train", "val", "all")}
    assert {s: len(d) for s, d in both.items()} == {"train": 1104, "val": 103, "all": 1207}


def test_framing_constants_are_the_300w_crop_of_the_training_faces():
    """FRAME_SIDE and FRAME_DROP are the medians experiments/framing.py measures on AFW and HELEN's training labels."""
    import sys
    sys.path.insert(0, str(ROOT / "experiments"))
    from framing import w300_framing

    from common.data.readers import FRAME_DROP, FRAME_SIDE
    side, drop = w300_framing([DATA / "afw", DATA / "helen_train"])
    assert len(side) == 1207
    assert abs(np.median(side) - FRAME_SIDE) < 0.05 and abs(np.median(drop) - FRAME_DROP) < 0.005


def test_dve_protocol_on_aflw_test_faces(cache_dir):
    """--protocol dve on the first AFLW test faces: their points where DVE's AFLW_MTFL puts them ((k - 1) x 100 / 150
    - 15, within our pixel-centre convention's 0.2 px), and the two views of face 0 as the numpy re-derivation of
    DVE's warps (tests/test_dve_matching.py) makes them, for warps drawn with DVE's seed."""
    import torch

    from common.data import DataSpec, load_tensors
    from common.dve_matching import design, draw_warp, views
    from common.protocols import PROTOCOLS
    from common.regression import load_eval_split
    from tests.test_dve_matching import np_grid, np_nearest, np_sample
    data = DataSpec(dataset="mtfl", data_dir=str(DATA / "mtfl"), num_images=4)
    first = np.array([[56.607985, 43.250454], [101.326679, 58.059891], [79.548094, 69.965517],
                      [43.831216, 86.22686], [93.196007, 103.940109]])                 # testing.txt line 1
    split = load_eval_split(data, "test", PROTOCOLS["dve"])
    np.testing.assert_allclose(split["landmarks"][0].numpy(), (first - 1) * 100 / 150 - 15, atol=0.2)
    cache = load_tensors(data, "test", 100)
    g = torch.Generator().manual_seed(0)
    w1, w2 = draw_warp(g), draw_warp(g)
    one, two, kp_one, kp_two = views(torch.from_numpy(cache.images[:1].copy()), torch.from_numpy(np.array(cache.landmarks[:1])),
                                     torch.stack([w1, w2])[None], design(100), 15)
    g1, g2 = np_grid(w1.numpy(), 100), np_grid(w2.numpy(), 100)
    once = np_sample(cache.images[0].astype(float), g1)
    assert np.abs(two[0].numpy().astype(float) - np.floor(once[:, 15:85, 15:85])).max() <= 1
    assert np.mean(two[0].numpy() == np.floor(once[:, 15:85, 15:85])) > 0.99
    kp = np_nearest(cache.landmarks[0], g1)
    np.testing.assert_array_equal(kp_two[0].numpy(), kp - 15)
    np.testing.assert_array_equal(kp_one[0].numpy(), np_nearest(kp, g2) - 15)
    assert one.shape == (1, 3, 70, 70)
