"""Training on unlabelled photos (an image folder): final/ is written before the end-of-training probe, the probe
matches on the synthetic validation faces and says so, and a probe that fails never costs a run its weights."""
import json

import numpy as np
import pytest
from PIL import Image

import byol_pretrain
import dense_distill
from common.models import DenseExtractor, ResNetEncoder
from common.probe import other_faces

STAGE1 = ["--arch", "resnet18", "--crop_size", "32", "--image_size", "32", "--batch_size", "8", "--optimizer",
          "adam", "--lr", "3.2e-2", "--proj_hidden", "32", "--proj_dim", "16", "--data_workers", "1",
          "--max_steps", "2", "--probe_pairs", "4"]
STAGE2 = ["--crop_size", "32", "--image_size", "32", "--batch_size", "8", "--lr", "1e-2", "--feature_dim", "16",
          "--fpn_width", "16", "--head_dim", "32", "--data_workers", "1", "--warmup_epochs", "0", "--max_steps", "2",
          "--probe_pairs", "4"]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:02d}.jpg")
    return ["--dataset", "imagefolder", "--data_dir", str(folder)]


def stage1(out, data, *extra):
    return byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(
        STAGE1 + data + ["--output_dir", str(out), *extra]))


def stage2(teacher, out, data, *extra):
    return dense_distill.main(dense_distill.get_args_parser().parse_args(
        STAGE2 + data + ["--init_from", str(teacher), "--output_dir", str(out), *extra]))


def probe_records(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("probe")]


def test_both_stages_on_an_image_folder_probe_on_the_synthetic_faces(cache_dir, tmp_path, photos, caplog):
    with caplog.at_level("INFO"):
        s1 = stage1(tmp_path / "s1", photos)
        s2 = stage2(tmp_path / "s1" / "final", tmp_path / "s2", photos)
    ResNetEncoder.from_pretrained(tmp_path / "s1" / "final")
    DenseExtractor.from_pretrained(tmp_path / "s2" / "final")
    assert set(s1["probe"]) == {"trained", "random"} and set(s2["probe"]) == {"lead-16", "hypercolumn-960"}
    for out in ("s1", "s2"):
        (record,) = probe_records(tmp_path / out)
        assert record["probe_data"].startswith("the synthetic val split (300 faces")
        assert "--dataset imagefolder has no labelled val split" in record["probe_data"]
        card = (tmp_path / out / "final" / "README.md").read_text()
        assert "Matching probe on the synthetic val split" in card and "| points left in place |" in card
    assert caplog.text.count("on the synthetic val split") == 2


@pytest.mark.parametrize("script", ["byol_pretrain", "dense_distill"])
def test_a_failing_probe_leaves_the_weights_and_ends_the_run(cache_dir, tmp_path, photos, teacher, monkeypatch,
                                                             caplog, script):
    import common.training

    def broken(*args, **kwargs):
        raise ValueError("a' cannot be empty unless no samples are taken")
    monkeypatch.setattr(common.training, "probe_all", broken)          # Run.probe: both stages' probe
    with caplog.at_level("WARNING"):
        result = stage1(tmp_path / "run", photos) if script == "byol_pretrain" else \
            stage2(teacher, tmp_path / "run", photos)
    assert result == {"step": 2, "probe": {}}
    assert "matching probe failed, skipped (ValueError: a' cannot be empty" in caplog.text
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert "## Metrics" not in (tmp_path / "run" / "final" / "README.md").read_text()
    assert probe_records(tmp_path / "run") == []


def test_other_faces_treats_an_unknown_identity_as_anyone_else():
    known = np.array([3, 3, 5, 7])
    assert other_faces(known, 0).tolist() == [2, 3]
    unknown = np.array([-1, -1, -1])
    assert other_faces(unknown, 1).tolist() == [0, 2]               # any other image, never itself
    mixed = np.array([4, -1, 4])
    assert other_faces(mixed, 0).tolist() == [1] and other_faces(mixed, 1).tolist() == [0, 2]


def test_the_probe_falls_back_on_the_synthetic_faces_without_a_labelled_val_split(cache_dir, tmp_path):
    """A saved data set of images alone, with no val split: the probe neither builds a cache of it nor fails."""
    import argparse

    import datasets

    from common.cli import data_args, from_flags
    from common.data import DataSpec
    from common.probe import probe_data
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images})}).save_to_disk(tmp_path / "saved")
    args = argparse.ArgumentParser(parents=[data_args()]).parse_args(
        ["--dataset", str(tmp_path / "saved"), "--image_size", "32", "--data_workers", "1"])
    cache, what = probe_data(from_flags(DataSpec, vars(args)))
    assert len(cache) == 300 and cache.landmarks.shape[1:] == (5, 2)
    assert what.startswith("the synthetic val split (300 faces") and "has no labelled val split" in what
    assert not list((cache_dir / "tensors").glob("*saved*"))             # nothing of the saved set was cached
