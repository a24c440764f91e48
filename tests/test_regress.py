"""Stage 3: the regressor, the feature sources and their cache, the protocol's runs and files."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import NMF, PCA

import common.features as features
import regress
from common.cli import from_flags
from common.data import DataSpec
from common.errors import UserError
from common.features import (Compact, FeatureSource, FeatureStore, Hypercolumn, eval_crops, fit_nmf, fit_pca,
                             load_source, nmf_project)
from common.models import DenseExtractor, LandmarkRegressor, ResNetEncoder, soft_argmax
from common.protocols import Protocol
from common.regression import RegressorSpec, Scorer, load_eval_split, predict, to_pixels, train_regressor

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--features_from", "random-resnet18",
        "--num_images", "24", "--resize", "40", "--crop", "32", "--min_steps", "10", "--epochs", "1",
        "--eval_every", "5", "--data_workers", "1", "--intermediate", "4"]


def parse(*argv):
    return regress.get_args_parser().parse_args(TINY + list(argv))


# ------------------------------------------------------------------------------------------------ the regressor

def test_soft_argmax_of_a_one_hot_map_is_that_cell_and_maps_to_its_pixel():
    logits = torch.full((2, 3, 6, 8), -1e4)
    cells = [(0, 0), (7, 5), (3, 2)]                                       # (x, y)
    for j, (x, y) in enumerate(cells):
        logits[:, j, y, x] = 0
    unit = soft_argmax(logits)
    # a map as large as the image: cell (x, y) is pixel (x, y)
    assert torch.allclose(to_pixels(unit[..., 0], 8), torch.tensor([[0.0, 7, 3]] * 2), atol=1e-4)
    assert torch.allclose(to_pixels(unit[..., 1], 6), torch.tensor([[0.0, 5, 2]] * 2), atol=1e-4)
    flat = soft_argmax(torch.zeros(1, 1, 5, 5))                            # uniform: the centre
    assert torch.allclose(flat, torch.zeros(1, 1, 2), atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_regressor_starts_at_the_mean_of_its_virtual_keypoints(shared):
    reg = LandmarkRegressor(8, num_points=3, intermediate=5, shared=shared)
    points, virtual = reg(torch.randn(4, 8, 6, 6))
    assert points.shape == (4, 3, 2) and virtual.shape == (4, 5 if shared else 15, 2)
    groups = virtual[:, None] if shared else virtual.reshape(4, 3, 5, 2)
    torch.testing.assert_close(points, groups.mean(2).expand(4, 3, 2))


class BlobImages(FeatureSource):
    """Features that encode position: the images themselves, whose channel k is a bright blob at landmark k."""

    def __init__(self):
        super().__init__("blobs", 3)
        self.register_buffer("anchor", torch.zeros(1))

    def parts(self, x):
        return [x]


def blobs(n: int, size: int, g: torch.Generator):
    points = 4 + (size - 8) * torch.rand(n, 3, 2, generator=g)
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    d2 = (xx - points[..., 0, None, None]) ** 2 + (yy - points[..., 1, None, None]) ** 2  # [n, 3, S, S]
    return (255 * torch.exp(-d2 / 4)).round().to(torch.uint8), points


def test_regressor_recovers_landmarks_from_features_that_encode_them():
    g = torch.Generator().manual_seed(0)
    args = parse("--eye_idx", "0", "1", "--min_steps", "300", "--eval_every", "100", "--lr", "8e-2",
                 "--softargmax_mul", "20")
    data, stores = {}, {}
    for split, n in (("train", 64), ("val", 16), ("test", 16)):
        images, points = blobs(n, 32, g)
        data[split] = {"images": images, "landmarks": points, "visible": torch.ones(n, 3, dtype=torch.bool)}
        stores[split] = FeatureStore(BlobImages(), images, budget=2**30)
    scorer = Scorer(3, eye_idx=(0, 1), size=32)
    reg, record = train_regressor(from_flags(RegressorSpec, vars(args)), stores, data, torch.arange(64), 0, scorer, 3)
    pred = predict(reg, stores["test"], 32)
    err = (pred - data["test"]["landmarks"]).norm(dim=-1)
    floor = (data["test"]["landmarks"] - data["train"]["landmarks"].mean(0)).norm(dim=-1)
    assert err.mean() < 0.5 and floor.mean() > 5                         # pixels at 32 px
    curve = torch.tensor(record["val_curve"])
    assert record["best_step"] == curve[curve[:, 1].argmin(), 0]          # selected on validation


def test_scorer_per_landmark_errors_and_pck():
    gt = torch.tensor([[[10.0, 10], [20, 10], [15, 15], [12, 20], [18, 20]]]).repeat(2, 1, 1)
    pred = gt.clone()
    pred[0, 2, 0] += 5                                                    # half an IOD off on the nose
    pred[1, :, 1] += 1                                                    # every point 1 px (10 %) off
    visible = torch.ones(2, 5, dtype=torch.bool)
    mean, per_point = Scorer(5, size=32)(pred, gt, visible)
    assert mean == pytest.approx((10 + 10) / 2)                           # image 0: 50/5 = 10 %; image 1: 10 %
    assert per_point == pytest.approx([5, 5, 30, 5, 5])
    pck = Scorer(5, "pck", size=32, alpha=0.1)                            # threshold 3.2 px at --crop 32
    miss, per_point = pck(pred, gt, visible)
    assert miss == pytest.approx(10.0) and per_point == pytest.approx([0, 0, 50, 0, 0])
    visible[0, 2] = False                                                 # the miss is not visible: not counted
    assert pck(pred, gt, visible)[0] == pytest.approx(0.0)
    with pytest.raises(UserError, match="--eye_idx"):
        Scorer(7)


def test_eval_crops_move_the_landmarks_with_the_pixels_and_keep_points_outside():
    images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    images[0, :, 40, 24] = 255                                            # a bright pixel at (24, 40)
    landmarks = torch.tensor([[[24.0, 40.0], [2.0, 30.0], [30.0, 63.0]]])     # the last two fall outside the crop
    crops, points, visible = eval_crops(images, landmarks, torch.ones(1, 3, dtype=torch.bool), resize=128, crop=96)
    y, x = np.unravel_index(crops[0, 0].float().numpy().argmax(), (96, 96))
    assert crops.shape == (1, 3, 96, 96) and crops.dtype == torch.uint8
    assert abs(points[0, 0, 0].item() - x) <= 1 and abs(points[0, 0, 1].item() - y) <= 1
    # by hand, (p + 0.5) x 2 - 0.5 - 16: x 2 -> -11.5 (left of the crop), 30 -> 44.5; y 63 -> 110.5 (below it)
    torch.testing.assert_close(points[0, 1:], torch.tensor([[-11.5, 44.5], [44.5, 110.5]]))
    assert visible.tolist() == [[True, True, True]]                      # scored like the others, as DVE does
    same, _, _ = eval_crops(crops, points, visible, resize=96, crop=70)   # already at the size: a crop, no resampling
    assert torch.equal(same, crops[..., 13:83, 13:83])


# -------------------------------------------------------------------------------------------- feature sources

def test_pca_matches_scikit_learn():
    x = torch.randn(500, 20, dtype=torch.float64) @ torch.randn(20, 20, dtype=torch.float64)
    mean, basis = fit_pca(x, 5)
    ref = PCA(5).fit(x.numpy())
    np.testing.assert_allclose(mean.numpy(), ref.mean_, atol=1e-10)
    cos = (basis.numpy() * ref.components_).sum(1)                       # each direction up to its sign
    np.testing.assert_allclose(np.abs(cos), 1, atol=1e-8)


def test_nmf_reconstructs_as_well_as_scikit_learn_and_projects_non_negative_codes():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 6, generator=g, dtype=torch.float64) @ torch.rand(6, 30, generator=g, dtype=torch.float64)
    x += 0.01 * torch.rand(x.shape, generator=g, dtype=torch.float64)
    h = fit_nmf(x, 6, iters=400)
    w = nmf_project(x, h, iters=300)
    assert (h >= 0).all() and (w >= 0).all()
    ours = ((x - w @ h).norm() / x.norm()).item()
    ref = NMF(6, init="random", random_state=0, max_iter=2000).fit(x.numpy())
    theirs = np.linalg.norm(x.numpy() - ref.transform(x.numpy()) @ ref.components_) / np.linalg.norm(x.numpy())
    assert ours < max(1.5 * theirs, 0.02)
    with pytest.raises(ValueError, match="non-negative"):
        fit_nmf(-x, 3)


def test_load_source_tells_stage_1_from_stage_2_and_refuses_what_is_neither(tmp_path):
    torch.manual_seed(0)
    DenseExtractor("resnet18", feature_dim=16, fpn_width=16).save_pretrained(tmp_path / "s2")
    ResNetEncoder("resnet18").save_pretrained(tmp_path / "s1")
    s2, s1 = load_source(str(tmp_path / "s2")), load_source(str(tmp_path / "s1"))
    assert isinstance(s2, Compact) and s2.dim == 16 and isinstance(s1, Hypercolumn) and s1.dim == 960
    x = torch.rand(2, 3, 32, 32)
    assert s2(x).shape == (2, 16, 8, 8) and s1(x).shape == (2, 960, 8, 8)
    (tmp_path / "empty").mkdir()
    for spec, msg in [(str(tmp_path / "empty"), "not a model folder"), ("random-vgg", "unknown architecture"),
                      ("pca:0", "positive"), ("nmf:8", "--hypercolumn_from")]:
        with pytest.raises(UserError, match=msg):
            load_source(spec)
    with pytest.raises(UserError, match="not a stage-1"):
        load_source("pca:4", str(tmp_path / "s2"), torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_store_gives_the_same_features_stored_whole_as_parts_or_not_at_all():
    torch.manual_seed(0)
    source = load_source("random-resnet18")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    parts = 2 * (64 * 64 + 128 * 16 + 256 * 4 + 512)   # a hypercolumn's per-layer maps, fp16, per image
    whole = 2 * 960 * 64                                # the upsampled 960-d hypercolumn at 8 x 8
    stores = {budget: FeatureStore(source, images, budget=budget, batch=2)
              for budget in (5 * whole, 5 * whole - 1, 5 * parts - 1)}
    assert [(s.kind, s.bytes_per_image, s.nbytes) for s in stores.values()] == [
        ("features", whole, 5 * whole), ("parts", parts, 5 * parts), (None, parts, 0)]
    assert stores[5 * whole].stored[0].shape == (5, 960, 8, 8)
    idx = torch.tensor([4, 0, 2])
    live = source(images[idx].float() / 255)
    for store in stores.values():
        torch.testing.assert_close(store(idx), live, atol=2e-2, rtol=1e-2)


# ------------------------------------------------------------------------------------------------- the script

def test_runs_write_results_predictions_and_a_loadable_regressor(cache_dir, tmp_path, monkeypatch):
    fitted = []
    sample_rows = features.sample_rows
    monkeypatch.setattr(features, "sample_rows", lambda src, images, *a, **k: fitted.append(images.clone())
                        or sample_rows(src, images, *a, **k))
    out = tmp_path / "run"
    args = parse("--features_from", "random-resnet18", "pca:8", "--hypercolumn_from", "random-resnet18",
                 "--num_train", "4", "100", "--seeds", "2", "--output_dir", str(out))
    results = regress.main(args)
    assert json.loads((out / "args.json").read_text())["effective_lr"] == pytest.approx(1e-3)   # 8e-3 x 32 / 256
    train = load_eval_split(from_flags(DataSpec, vars(args)), "train", Protocol("custom", 40, 32))["images"]
    assert len(fitted) == 1 and torch.equal(fitted[0], train)            # PCA fitted on the training images
    assert len(results["runs"]) == 2 * 2 * 2 and {r["num_train"] for r in results["runs"]} == {4, 24}
    rows = {(r["name"], r["num_train"]): r for r in results["summary"]}
    assert set(rows) == {("random-resnet18", 4), ("random-resnet18", 24), ("pca-8", 4), ("pca-8", 24)}
    assert len(rows["pca-8", 4]["per_landmark"]) == 5 and results["splits"] == {"train": 24, "val": 24, "test": 24}
    reloaded = json.loads((out / "results.json").read_text())
    assert reloaded["summary"] == results["summary"]
    assert "| mean shape (no features) |" in (out / "results.md").read_text()
    assert Image.open(out / "predictions.png").size == (8 * 96, 2 * 96) and (out / "fewshot.png").is_file()
    reg = LandmarkRegressor.from_pretrained(out / "final")
    assert reg.num_points == 5 and reg.heatmaps.in_channels == 960
    # --resume redoes only the missing runs
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("1-*.json")}
    (out / "runs" / "0-4-1.json").unlink()
    again = regress.main(parse(*args_list(args), "--resume"))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("1-*.json")} == stamps
    assert again["summary"][0]["mean"] == pytest.approx(results["summary"][0]["mean"], abs=1e-6)


def args_list(args) -> list[str]:
    return ["--features_from", *args.features_from, "--hypercolumn_from", args.hypercolumn_from,
            "--num_train", *map(str, args.num_train), "--seeds", str(args.seeds), "--output_dir", args.output_dir]


def test_user_errors_are_one_line(cache_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="larger than --resize"):
        regress.main(parse("--features_from", "random-resnet18", "--crop", "48", "--output_dir", str(tmp_path / "a")))
    with pytest.raises(UserError, match="nothing to resume"):
        regress.main(parse("--features_from", "random-resnet18", "--resume", "--output_dir", str(tmp_path / "b")))
    # a bad source fails before any work on the good ones
    with pytest.raises(UserError, match="no such folder"):
        regress.main(parse("--features_from", "random-resnet18", str(tmp_path / "missing"), "--output_dir",
                           str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()
    with pytest.raises(UserError, match="--eye_idx 0 9"):
        regress.main(parse("--eye_idx", "0", "9", "--output_dir", str(tmp_path / "d")))
    regress.main(parse("--output_dir", str(tmp_path / "e")))
    with pytest.raises(UserError, match=r"other settings than .* \(lr\)"):
        regress.main(parse("--output_dir", str(tmp_path / "e"), "--resume", "--lr", "0.1"))


@pytest.mark.slow
def test_two_processes_share_the_runs_and_agree_with_one(cache_dir, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    flags = ["--num_train", "4", "8", "--seeds", "2"]
    one = regress.main(parse(*flags, "--output_dir", str(tmp_path / "one")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "regress.py", *TINY, *flags,
           "--output_dir", str(tmp_path / "two")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert [r["test"] for r in two["runs"]] == pytest.approx([r["test"] for r in one["runs"]], abs=1e-4)
    bad = subprocess.run([sys.executable, "regress.py", "--features_from", str(tmp_path), "--output_dir",
                          str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not a model folder" in bad.stderr


def write_small_cub(root, n: int = 30, seed: int = 0) -> None:
    """A CUB-200-2011 folder as its authors ship it, n images of a Passeroidea class (14), 15 parts each with
    some invisible; about a third are test images (train_test_split.txt)."""
    rng = np.random.default_rng(seed)
    lines = {k: [] for k in ("images", "labels", "split", "parts")}
    for i in range(1, n + 1):
        rel = f"014.Class/bird_{i}.jpg"
        (root / "images" / "014.Class").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / rel)
        lines["images"].append(f"{i} {rel}")
        lines["labels"].append(f"{i} 14")
        lines["split"].append(f"{i} {int(i % 3 != 0)}")
        for p in range(1, 16):
            vis = int(rng.random() > 0.2)
            x, y = (rng.uniform(5, 59), rng.uniform(5, 43)) if vis else (0.0, 0.0)
            lines["parts"].append(f"{i} {p} {x:.1f} {y:.1f} {vis}")
    (root / "parts").mkdir(parents=True)
    for name, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                      ("train_test_split.txt", "split"), ("parts/part_locs.txt", "parts")):
        (root / name).write_text("\n".join(lines[key]) + "\n")
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Class\n" for c in range(1, 201)))


def test_cub_is_scored_by_pck_over_visible_parts(cache_dir, tmp_path):
    write_small_cub(tmp_path / "cub")
    out = tmp_path / "run"
    results = regress.main(parse("--dataset", "cub", "--data_dir", str(tmp_path / "cub"), "--num_images", "100",
                                 "--output_dir", str(out)))
    assert results["metric"] == "pck" and "PCK" in results["error"]
    assert results["splits"] == {"train": 18, "val": 2, "test": 10}
    run = results["runs"][0]
    assert len(run["per_landmark"]) == 15 and 0 <= run["test"] <= 100


def test_test_zoom_out_changes_only_the_test_split(cache_dir, tmp_path):
    """Scale sensitivity (Fig. 9): train and val at the seen zoom-out, test at the unseen one, whose faces are
    smaller (a shorter inter-ocular distance); aligned data has no zoom to change."""
    at = Protocol("custom", 40, 32)
    seen = regress.load_data(parse("--variant", "unaligned", "--image_size", "32"), at)
    unseen = regress.load_data(parse("--variant", "unaligned", "--image_size", "32", "--test_zoom_out", "1.5,2"), at)
    for split in ("train", "val"):
        assert torch.equal(seen[split]["images"], unseen[split]["images"])
    iod = [(d["test"]["landmarks"][:, 0] - d["test"]["landmarks"][:, 1]).norm(dim=-1).mean() for d in (seen, unseen)]
    assert iod[1] < 0.9 * iod[0]
    with pytest.raises(UserError, match="--variant unaligned"):
        regress.main(parse("--test_zoom_out", "1.5,2", "--output_dir", str(tmp_path / "z")))


def test_score_split_val_scores_on_validation_and_never_reads_the_test_split(cache_dir, tmp_path, monkeypatch):
    """--score_split val (recipe and model choice): the figures are the validation split's, and the test split
    is not loaded at all."""
    loaded = []
    real = regress.load_eval_split
    monkeypatch.setattr(regress, "load_eval_split",
                        lambda data, split, *a: loaded.append(split) or real(data, split, *a))
    res = regress.main(parse("--score_split", "val", "--output_dir", str(tmp_path / "val")))
    assert loaded == ["train", "val"] and res["splits"]["test"] == res["splits"]["val"] == 24
    run = res["runs"][0]
    assert run["test"] == pytest.approx(min(v for _, v in run["val_curve"]))     # scored where it was selected
    assert res["score_split"] == "val" and "val" in res["dataset"]["key"]           # describes the split scored
    assert (tmp_path / "val" / "results.md").read_text().startswith("Validation error (% inter-ocular distance)")
    with pytest.raises(UserError, match="--test_zoom_out changes the test split, which --score_split val"):
        regress.main(parse("--score_split", "val", "--test_zoom_out", "1.5,2", "--output_dir", str(tmp_path / "z")))
