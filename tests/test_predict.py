"""regress.py --predict: landmarks on every face of any photo, as JSON lines (a public contract) and pictures."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import regress
from common import detect
from common.errors import UserError
from common.models import LandmarkRegressor
from common.predict import Predictor
from conftest import ROOT, tiny_regressor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_regressor(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder as a user has one: the astronaut (upright, and stored on its side with an EXIF rotation), a
    group photo of two faces, a synthetic face, a corrupt file, a picture without a face, in a sub-folder too."""
    from skimage.data import astronaut

    from common.data.synthetic import SyntheticSpec, render_uint8, sample_params
    root = tmp_path_factory.mktemp("photos")
    face = Image.fromarray(astronaut())
    face.save(root / "a_astronaut.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                        # orientation 6: shown turned 90 degrees clockwise
    face.transpose(Image.Transpose.ROTATE_90).save(root / "b_on_its_side.png", exif=exif)
    group = Image.new("RGB", (1100, 520), (90, 110, 130))
    group.paste(face, (0, 0))
    group.paste(face.resize((400, 400)), (650, 60))
    group.save(root / "c_group.png")
    (root / "sub").mkdir()
    synth = render_uint8(sample_params(SyntheticSpec(num_images=1)), 128)[0]
    Image.fromarray(synth.permute(1, 2, 0).numpy()).save(root / "sub" / "d_synthetic.png")
    (root / "sub" / "e_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    ramp = np.linspace(0, 255, 300 * 200).reshape(200, 300).astype(np.uint8)
    Image.fromarray(ramp).save(root / "sub" / "f_no_face.png")
    return root


def predict(*argv):
    return regress.main(regress.get_args_parser().parse_args([str(a) for a in argv]))


def lines(path):
    return {rec["path"].split("/")[-1]: rec for rec in map(json.loads, path.read_text().splitlines())}


def test_crops_and_their_map_back_put_a_pixel_where_it_was():
    """A dot at a known place, cropped by a face box and found in the crop by its colour: the crop's map sends it
    back to where it was in the photo (the oracle is the picture itself, not the map's arithmetic)."""
    image = np.zeros((300, 400, 3), np.uint8)
    image[181:184, 251:254] = (255, 0, 0)                   # centre (252, 182)
    reg = LandmarkRegressor(8, 1, features_from="x", protocol="custom", resize=120, crop=100)
    predictor = Predictor(reg, None, "custom-1")
    crops, scale, offset = predictor.crops(Image.fromarray(image), [[150.0, 90.0, 330.0, 270.0]])
    red = crops[0, 0].float() * (crops[0, 1] < 80)
    yc, xc = np.unravel_index(red.argmax().item(), red.shape)
    face = Predictor.place([([150.0, 90.0, 330.0, 270.0], 1.0)], np.array([[[xc, yc]]], np.float32), scale, offset)
    assert np.abs(np.array(face[0]["points"][0]) - (252, 182)).max() <= 1.5 * 180 / 120 + 1e-6
    assert face[0]["box"] == [150.0, 90.0, 330.0, 270.0] and face[0]["score"] == 1.0


def test_a_folder_gives_one_line_per_image_field_by_field(tmp_path, models, photos):
    out = predict("--predict", photos, "--model", models / "reg", "--json", tmp_path / "p.jsonl",
                  "--out", tmp_path / "pics")
    recs = lines(tmp_path / "p.jsonl")
    assert list(recs) == ["a_astronaut.png", "b_on_its_side.png", "c_group.png", "d_synthetic.png",
                          "e_corrupt.jpg", "f_no_face.png"]                  # sorted, recursively
    assert out["images"] == 6 and out["failed"] == 1 and out["exit_status"] == 1
    bad = recs["e_corrupt.jpg"]
    assert set(bad) == {"path", "error"} and bad["error"].startswith("unreadable")
    assert recs["f_no_face.png"]["faces"] == [] and recs["f_no_face.png"]["width"] == 300
    upright = recs["a_astronaut.png"]
    assert (upright["width"], upright["height"], upright["landmarks"]) == (512, 512, "mtfl-5")
    (face,) = upright["faces"]
    assert len(face["box"]) == 4 and len(face["points"]) == 5 and all(len(p) == 2 for p in face["points"])
    assert isinstance(face["score"], float)
    x0, y0, x1, y1 = face["box"]
    assert x0 < 224 < x1 and y0 < 80 < y1                   # around the astronaut's face (x 160-290, y 40-210)
    # stored on its side with an EXIF rotation: the same picture once turned, so the same faces, in its pixels
    side = recs["b_on_its_side.png"]
    assert (side["width"], side["height"]) == (512, 512) and len(side["faces"]) == 1
    assert side["faces"] == upright["faces"]
    # both faces of the group photo (a detector may add a false one), each in the photo's own pixels, the pasted
    # copy's box about 400 / 512 of the upright one's, its points inside it
    group = recs["c_group.png"]["faces"]
    centre = lambda f: ((f["box"][0] + f["box"][2]) / 2, (f["box"][1] + f["box"][3]) / 2)   # noqa: E731
    big = [f for f in group if np.hypot(*np.subtract(centre(f), centre(face))) < 20]
    small = [f for f in group if 760 < centre(f)[0] < 900 and 100 < centre(f)[1] < 230]
    assert len(big) == 1 and len(small) == 1, group
    width = lambda f: f["box"][2] - f["box"][0]                                                 # noqa: E731
    assert 0.65 < width(small[0]) / width(face) < 0.9
    x0, y0, x1, y1 = small[0]["box"]
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in small[0]["points"])
    pictures = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert pictures == ["a_astronaut.jpg", "b_on_its_side.jpg", "c_group.jpg", "d_synthetic.jpg", "f_no_face.jpg"]
    assert Image.open(tmp_path / "pics" / "c_group.jpg").size == (1024, round(520 * 1024 / 1100))   # at most 1024


def test_a_list_file_and_resume_after_a_kill(tmp_path, models, photos):
    (tmp_path / "more").mkdir()
    Image.open(photos / "a_astronaut.png").save(tmp_path / "more" / "again.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my photos\n{photos / 'a_astronaut.png'}\nmore/again.png\n{photos / 'sub'}\ngone.jpg\n")
    jsonl = tmp_path / "p.jsonl"
    first = json.dumps({"path": str(photos / "a_astronaut.png"), "error": "pretend it failed"})
    jsonl.write_text(first + "\n" + '{"path": "cut sho')       # a killed run: one line done, the next cut short
    with pytest.raises(UserError, match="exists: --resume to continue it, --overwrite to replace it"):
        predict("--predict", listing, "--model", models / "reg", "--json", jsonl)
    out = predict("--predict", listing, "--model", models / "reg", "--json", jsonl, "--resume")
    recs = [json.loads(s) for s in jsonl.read_text().splitlines()]        # every line whole
    assert out["done_before"] == 1 and out["images"] == 5 and out["failed"] == 3     # with the earlier failure
    assert [r["path"].split("/")[-1] for r in recs] == ["a_astronaut.png", "again.png", "d_synthetic.png",
                                                         "e_corrupt.jpg", "f_no_face.png", "gone.jpg"]
    assert recs[1]["faces"][0]["box"] == lines_of_astronaut(models, tmp_path)["box"]   # a path relative to the list
    assert recs[-1]["error"] == "missing file"
    other = tmp_path / "results.json"
    other.write_text('{\n "a": 1\n}\n')
    with pytest.raises(UserError, match="results.json:1 is not a line of regress.py --predict"):
        predict("--predict", listing, "--model", models / "reg", "--json", other, "--resume")
    assert other.read_text() == '{\n "a": 1\n}\n'                   # left as it was


def lines_of_astronaut(models, tmp_path):
    from skimage.data import astronaut
    (face,), _ = Predictor.load(str(models / "reg"))(Image.fromarray(astronaut()))
    return face


@pytest.mark.parametrize("batch", [1, 2])
def test_faces_batched_across_images_are_those_of_each_image_alone(tmp_path, models, photos, batch):
    """The batching oracle: each image through the Predictor on its own gives the same faces as the folder run,
    whatever the batch (1: one face a forward; 2: faces of two images, and of the group photo, split)."""
    predict("--predict", photos, "--model", models / "reg", "--json", tmp_path / "p.jsonl", "--feature_batch", batch)
    predictor = Predictor.load(str(models / "reg"))
    from common.imageio import open_rgb
    for rec in lines(tmp_path / "p.jsonl").values():
        if "error" not in rec:
            faces, _ = predictor(open_rgb(rec["path"], exif=True))
            # the same faces, to the last rounded digit: batches of other sizes may take other CPU kernels, whose
            # last bits differ (seen on an Intel Xeon: 175.46 against 175.47)
            assert len(rec["faces"]) == len(faces), rec["path"]
            for got, alone in zip(rec["faces"], faces):
                for key in ("box", "points", "score"):
                    assert np.asarray(got[key]) == pytest.approx(np.asarray(alone[key]), abs=0.011), rec["path"]


def test_user_errors_are_one_line(tmp_path, models, photos, monkeypatch):
    monkeypatch.chdir(tmp_path)                             # no runs/demo_real here
    with pytest.raises(UserError, match=r"no --model given, and runs/demo_real/regress68/final .* does not exist"):
        predict("--predict", photos, "--json", "x.jsonl", "--landmarks", "68")
    with pytest.raises(UserError, match="a stage-2 dense model, not a landmark regressor"):
        predict("--predict", photos, "--model", models / "s2", "--json", "x.jsonl")
    with pytest.raises(UserError, match="--predict nowhere.jpg: no such file or folder"):
        predict("--predict", "nowhere.jpg", "--model", models / "reg", "--json", "x.jsonl")
    with pytest.raises(UserError, match="needs --json OUT.jsonl, --out DIR or both"):
        predict("--predict", photos, "--model", models / "reg")
    with pytest.raises(UserError, match="--features_from is required"):
        predict("--output_dir", tmp_path / "r")


def test_the_command_line_exits_1_when_an_image_failed(tmp_path, models, photos):
    run = subprocess.run([sys.executable, "regress.py", "--predict", str(photos / "sub"), "--model",
                          str(models / "reg"), "--json", str(tmp_path / "p.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    said = " ".join((run.stdout + run.stderr).split())                # rich wraps its lines
    assert "3 images" in said and "1 could not be read" in said
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3


def test_every_detector_finds_the_astronaut_and_frames_it_as_training_faces():
    from skimage.data import astronaut
    image = Image.fromarray(astronaut())
    for name in detect.DETECTORS:
        boxes = detect.raw_faces(image, name)
        assert boxes, name
        x0, y0, x1, y1, _ = max(boxes, key=lambda b: b[4])
        assert 170 < (x0 + x1) / 2 < 260 and 60 < (y0 + y1) / 2 < 150 and 60 < x1 - x0 < 160, (name, boxes)
