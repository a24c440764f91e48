"""match.py: points carried between two images (identity, a known warp, sizes), bad input, the benchmark."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import match
from common.warps import warped_pairs
from common.errors import UserError
from common.models import DenseExtractor, ResNetEncoder
from common.probe import _summary
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture (uint8 [h, w, 3]): every place looks different, as a face's parts do."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w), mode="bicubic",
                      align_corners=False)
    return (255 * x.clamp(0, 1)[0].permute(1, 2, 0)).round().byte().numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A stage-1 and a stage-2 final/ folder (untrained weights: the plumbing is under test)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ResNetEncoder("resnet18", input_size=64).save_pretrained(root / "s1")
    DenseExtractor("resnet18", feature_dim=16, fpn_width=16, input_size=64).save_pretrained(root / "s2")
    return root


def run(*argv):
    return match.main(match.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.mark.parametrize("kind", ["s1", "s2"])
def test_an_image_matched_with_itself_gives_back_its_points(tmp_path, models, kind):
    Image.fromarray(texture(128, 128)).save(tmp_path / "a.png")
    points = [[10, 20], [64, 64], [100, 31], [5, 120]]
    out = run("--model", models / kind, "--ref", tmp_path / "a.png", "--query", tmp_path / "a.png",
              "--ref_points", ";".join(f"{x},{y}" for x, y in points), "--json", tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["ref_points"] == points and len(saved["scores"]) == 4 and saved["input_size"] == 64
    # 128 px at 64: one model pixel is 2 image pixels; the match is exact to that
    err = np.abs(np.array(saved["query_points"]) - np.array(points))
    assert err.max() <= 1.0 + 1e-4 and min(saved["scores"]) > 0.9
    assert out["query_points"] == saved["query_points"]


def test_a_known_warp_is_recovered(tmp_path, models):
    """A shift and a mild thin-plate-spline warp of a textured image, undone by an untrained hypercolumn."""
    img = torch.from_numpy(texture(96, 96, seed=1)).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(0)
    points = 20 + 56 * torch.rand(1, 12, 2, generator=g)
    warped, truth, _ = warped_pairs(img, points, g, jitter=0.02, rotate_deg=0.0, scale=0.0, shift=0.06)
    for name, x in (("a.png", img), ("b.png", warped)):
        Image.fromarray((255 * x[0].permute(1, 2, 0)).round().byte().numpy()).save(tmp_path / name)
    moved = (truth - points).norm(dim=-1)
    out = run("--model", "random-resnet18", "--size", "96", "--ref", tmp_path / "a.png", "--query",
              tmp_path / "b.png", "--ref_points", ";".join(f"{x:.2f},{y:.2f}" for x, y in points[0].tolist()))
    err = (torch.tensor(out["query_points"]) - truth[0]).norm(dim=-1)
    assert moved.mean() > 4 and err.median() < 1.5 and err.mean() < 0.3 * moved.mean()


def test_coordinates_map_back_for_non_square_and_large_images(tmp_path, models):
    small = texture(200, 300, seed=2)                                      # 300 wide, 200 high
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(small).resize((1200, 800), Image.BICUBIC).save(tmp_path / "large.png")
    points = [[40, 30], [150, 100], [260, 170]]
    out = run("--model", models / "s1", "--ref", tmp_path / "small.png", "--query", tmp_path / "large.png",
              "--ref_points", ";".join(f"{x},{y}" for x, y in points))
    expected = (np.array(points) + 0.5) * 4 - 0.5                          # the same places, 4x larger
    # the model sees 96 x 64 and 96 x 64: a model pixel is 3.1 px of the small image, 12.5 px of the large one
    assert np.abs(np.array(out["query_points"]) - expected).max() <= 12.5 + 1e-3


def test_points_files_grids_and_pictures(tmp_path, models):
    Image.fromarray(texture(80, 64)).convert("L").save(tmp_path / "grey.png")      # grey: converted to RGB
    (tmp_path / "pts.json").write_text("[[10, 12], [40.5, 60]]")
    out = run("--model", models / "s2", "--ref", tmp_path / "grey.png", "--query", tmp_path / "grey.png",
              "--ref_points_file", tmp_path / "pts.json", "--out", tmp_path / "m.png", "--heatmap", "1")
    assert out["ref_points"] == [[10, 12], [40.5, 60]]
    picture = Image.open(tmp_path / "m.png")
    assert picture.height == 256 and picture.width == 2 * round(64 * 256 / 80)
    grid = run("--model", models / "s2", "--ref", tmp_path / "grey.png", "--query", tmp_path / "grey.png",
               "--grid", "3")
    assert len(grid["ref_points"]) == 9 and all(0 <= x < 64 and 0 <= y < 80 for x, y in grid["ref_points"])


def test_bad_inputs_are_one_line_errors(tmp_path, models, monkeypatch):
    Image.fromarray(texture(64, 64)).save(tmp_path / "a.png")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "bad.json").write_text("[[1, 2], [3]]")
    (tmp_path / "empty").mkdir()
    a = tmp_path / "a.png"
    cases = [(["--ref", tmp_path / "none.png", "--query", a], "missing file"),
             (["--ref", tmp_path / "text.jpg", "--query", a], "unreadable"),
             (["--ref", a, "--query", a, "--ref_points", "10,70"], "outside the reference image"),
             (["--ref", a, "--query", a, "--ref_points", "10;x"], "expected"),
             (["--ref", a, "--query", a, "--ref_points_file", tmp_path / "bad.json"], "must be a non-empty list"),
             (["--ref", a, "--query", a, "--heatmap", "30"], "--heatmap 30"),
             (["--ref", a, "--query", a, "--model", tmp_path / "empty"], "not a model folder"),
             (["--ref", a, "--query", a, "--device", "cuda"], "--device cuda: torch .* sees no CUDA device")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in cases:
        argv = argv if "--model" in argv else [*argv, "--model", models / "s1"]
        with pytest.raises(UserError, match=message):
            run(*argv)
    monkeypatch.chdir(tmp_path)                                            # no demo model here
    with pytest.raises(UserError, match="bash demo.sh"):
        run("--ref", a, "--query", a)
    res = subprocess.run([sys.executable, str(ROOT / "match.py"), "--ref", str(tmp_path / "text.jpg"), "--query",
                          str(a), "--model", str(models / "s1")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "unreadable" in res.stderr


def test_the_command_line_path_does_not_import_the_data_layer():
    code = ("import sys, match; match.get_args_parser(); import common.features, common.metrics, common.cli; "
            "print('datasets' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-1000:]
    from common.data import FORMATS, readers
    assert FORMATS == tuple(readers.READERS)


def test_benchmark_error_summary_by_hand():
    err = torch.tensor([[1.0, 3.0], [2.0, 2.0]])            # pixels, 2 images x 2 points
    floor = torch.tensor([[4.0, 4.0], [6.0, 2.0]])
    iod = torch.tensor([10.0, 20.0])
    s = _summary(err, floor, iod, "same")
    assert s["same_px"] == pytest.approx(2.0) and s["same_floor_px"] == pytest.approx(4.0)
    assert s["same_iod"] == pytest.approx((10 + 30 + 10 + 10) / 4) and s["same_floor_iod"] == pytest.approx(30.0)


def test_benchmark_writes_a_table_of_every_model(cache_dir, tmp_path, models):
    out = run("--benchmark", "--model", models / "s2", "random-resnet18", "pca:8", "--hypercolumn_from",
              "random-resnet18", "--pairs", "4", "--num_images", "24", "--image_size", "64", "--data_workers", "1",
              "--output_dir", tmp_path)
    saved = json.loads((tmp_path / "matching.json").read_text())
    assert [r["name"] for r in saved["models"]] == ["lead-16", "random-resnet18", "pca-8"]
    assert [r["dim"] for r in saved["models"]] == [16, 960, 8] and saved["size"] == 96
    assert all(r["same_floor_iod"] > 0 and r["same_px"] >= 0 for r in saved["models"]) and out == saved


def test_exif_rotated_photo_is_matched_in_its_displayed_frame(tmp_path, models):
    upright = texture(64, 96, seed=3)                                      # displayed: 96 wide, 64 high
    Image.fromarray(upright).save(tmp_path / "upright.png")
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)    # stored on its side, 64 x 96
    exif = Image.Exif()
    exif[0x0112] = 6                                                       # "rotate 90 CW to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=100, subsampling=0)
    points = [[20, 15], [70, 40]]
    out = run("--model", models / "s1", "--size", "64", "--ref", tmp_path / "upright.png", "--query",
              tmp_path / "rotated.jpg", "--ref_points", ";".join(f"{x},{y}" for x, y in points))
    assert np.abs(np.array(out["query_points"]) - np.array(points)).max() <= 2.0


def test_a_dataset_row_brings_its_landmarks(cache_dir, tmp_path, models):
    flags = ["--num_images", "4", "--image_size", "64", "--data_workers", "1"]
    out = run("--model", models / "s2", "--ref", "test:1", "--query", "test:1", *flags, "--json", tmp_path / "m.json")
    from common.cli import from_flags
    from common.data import DataSpec, load_tensors
    args = match.get_args_parser().parse_args(flags)
    truth = load_tensors(from_flags(DataSpec, vars(args)), "test").landmarks[1]
    np.testing.assert_allclose(out["ref_points"], truth, atol=1e-5)
    assert np.abs(np.array(out["query_points"]) - truth).max() <= 1.0 + 1e-4        # the same image: one pixel
    with pytest.raises(UserError, match="has 4 images"):
        run("--model", models / "s2", "--ref", "test:9", "--query", "test:1", *flags)


def photos(tmp_path):
    """A portrait (scikit-image's astronaut, 512 px) and a press photo: a 1600x900 noisy frame with the same
    portrait at 0.75x near its right edge. Returns both paths and the map of portrait points into the press photo."""
    from skimage.data import astronaut
    portrait = Image.fromarray(astronaut())
    portrait.save(tmp_path / "portrait.jpg", quality=95)
    rng = np.random.default_rng(0)
    frame = Image.fromarray(np.clip(rng.normal(110, 25, (900, 1600, 3)), 0, 255).astype(np.uint8))
    frame.paste(portrait.resize((384, 384), Image.LANCZOS), (1150, 300))
    frame.save(tmp_path / "press.jpg", quality=95)
    return tmp_path / "portrait.jpg", tmp_path / "press.jpg", lambda p: (np.asarray(p) + 0.5) * 0.75 - 0.5 + [1150, 300]


def test_whole_photos_are_matched_inside_their_faces(tmp_path):
    portrait, press, carry = photos(tmp_path)
    face = [[200, 100], [250, 100], [224, 140], [205, 170], [245, 170]]     # eyes, nose, mouth of the astronaut
    argv = ["--model", "random-resnet18", "--ref", portrait, "--query", press,
            "--ref_points", ";".join(f"{x},{y}" for x, y in face), "--json", tmp_path / "m.json"]
    cropped = run(*argv)
    saved = json.loads((tmp_path / "m.json").read_text())
    x0, y0, x1, y1 = saved["query_face"]                         # the face found in the press photo, in its pixels
    # around the astronaut's face (x 160-224, y 40-113 of the portrait), inside the pasted portrait
    assert 1150 < x0 < 1150 + 0.75 * 160 < 1150 + 0.75 * 224 < x1 < 1150 + 384
    assert 300 + 0.75 * 20 < y0 < 300 + 0.75 * 113 < y1 < 300 + 384
    assert saved["ref_face"] is not None
    err = np.linalg.norm(np.array(cropped["query_points"]) - carry(face), axis=1)
    whole = run(*argv, "--no_face_crop")                         # the whole frame: the face is a few pixels
    err_whole = np.linalg.norm(np.array(whole["query_points"]) - carry(face), axis=1)
    assert whole["ref_face"] is None and whole["query_face"] is None
    assert err.mean() < 5 and err_whole.mean() > 4 * err.mean(), (err, err_whole)


def test_the_default_grid_covers_the_face_and_a_faceless_image_is_matched_whole(tmp_path, caplog):
    portrait, _, _ = photos(tmp_path)
    Image.fromarray(texture(96, 128)).save(tmp_path / "texture.png")
    with caplog.at_level("INFO"):
        out = run("--model", "random-resnet18", "--ref", portrait, "--query", tmp_path / "texture.png",
                  "--out", tmp_path / "m.png", "--heatmap", "3")
    x0, y0, x1, y1 = out["ref_face"]
    pts = np.array(out["ref_points"])
    assert len(pts) == 25 and (pts[:, 0] > x0).all() and (pts[:, 0] < x1).all() and (pts[:, 1] > y0).all()
    assert (pts[:, 1] < y1).all() and out["query_face"] is None and "--query: no face found" in caplog.text
    assert Image.open(tmp_path / "m.png").size[1] == 256


def test_reference_points_beyond_the_face_match_the_whole_frames(tmp_path, caplog):
    portrait, press, _ = photos(tmp_path)
    with caplog.at_level("INFO"):
        out = run("--model", "random-resnet18", "--ref", portrait, "--query", press, "--ref_points", "224,140;40,480")
    assert out["ref_face"] is None and out["query_face"] is None          # (40, 480) is far below the face
    assert "reference points outside the face found in --ref: the whole frames are matched" in caplog.text
