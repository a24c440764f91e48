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
