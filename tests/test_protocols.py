"""The reference protocols by name (common/protocols.py), the crops they give, and the supervised ceiling (a network
trained end to end with the regressor)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import regress
from common.cli import from_flags
from common.data import DataSpec
from common.errors import UserError
from common.features import FeatureStore, Supervised, load_model, load_source
from common.models import ResNetEncoder
from common.protocols import PROTOCOLS, resolve
from common.regression import RegressorSpec, Scorer, TrainedStore, load_eval_split, predict, train_regressor
from tests.format_fixtures import write_mtfl

pytestmark = pytest.mark.usefixtures("one_thread")


def test_protocols_by_name_by_sizes_and_not_both():
    assert (resolve("dve").resize, resolve("dve").crop, resolve("dve").margin) == (100, 70, 15)
    assert (resolve("cl").resize, resolve("cl").crop, resolve("cl").margin) == (136, 96, 20)
    assert resolve(None) == PROTOCOLS["cl"]                               # the paper's, when nothing is said
    assert resolve(None, 100, 70) == PROTOCOLS["dve"]                     # a preset's sizes are the preset
    custom = resolve(None, 90, 64)
    assert (custom.name, custom.resize, custom.crop) == ("custom", 90, 64)
    assert "resize 100, crop 15 a side: 70 px" in resolve("dve").describe()
    with pytest.raises(UserError, match="--protocol dve sets --resize 100 --crop 70: give the protocol or the sizes"):
        resolve("dve", 90, None)
    with pytest.raises(UserError, match="--crop 96 is larger than --resize 90"):
        resolve(None, 90, None)


def test_dve_crop_of_an_aflw_test_face_agrees_with_dves_keypoint_arithmetic(cache_dir, tmp_path):
    """MTFL's 150 px test faces under --protocol dve: resized whole to 100, 15 px cut a side. DVE moves a 1-based
    point k to (k - 1) x 100 / 150 - 15 (its AFLW_MTFL loader); our pixel-centre geometry differs from it by
    0.5 x (1 - 100 / 150) < 0.2 px. A bright pixel lands where its point does."""
    write_mtfl(tmp_path)
    img = np.full((150, 150, 3), 90, np.uint8)
    img[59:62, 104:107] = 255                                             # a 3x3 block centred on pixel (105, 60)
    Image.fromarray(img).save(tmp_path / "AFLW" / "0001-image20056.jpg", quality=100)
    data = from_flags(DataSpec, {"dataset": "mtfl", "data_dir": str(tmp_path)})
    split = load_eval_split(data, "test", resolve("dve"))
    assert split["images"].shape == (3, 3, 70, 70) and split["visible"].all()
    one_based = np.array([(45, 60), (105, 60), (75, 80), (55, 110), (95, 110)], float)   # the fixture's test face 0
    dve = (one_based - 1) * 100 / 150 - 15
    np.testing.assert_allclose(split["landmarks"][0].numpy(), dve, atol=0.2)
    y, x = np.unravel_index(split["images"][0].float().mean(0).numpy().argmax(), (70, 70))
    assert abs(x - dve[1, 0]) <= 1 and abs(y - dve[1, 1]) <= 1          # the right eye's pixel


@pytest.mark.slow
def test_regress_records_the_protocol_in_results_and_in_the_regressor(cache_dir, tmp_path):
    out = tmp_path / "run"
    args = regress.get_args_parser().parse_args([
        "--features_from", "random-resnet18", "supervised:random-resnet18", "--protocol", "dve", "--num_images", "24",
        "--min_steps", "4",
        "--epochs", "1", "--eval_every", "2", "--data_workers", "1", "--intermediate", "4", "--output_dir", str(out)])
    results = regress.main(args)
    assert results["input"] == [100, 70] and results["protocol"]["name"] == "dve"
    rows = {r["name"]: r for r in results["summary"]}                    # the ceiling beside the frozen features
    assert set(rows) == {"random-resnet18", "supervised-random-resnet18"}
    assert rows["supervised-random-resnet18"]["dim"] == 960
    config = json.loads((out / "final" / "config.json").read_text())
    assert {k: config[k] for k in ("features_from", "protocol", "resize", "crop", "dataset")} == {
        "features_from": "random-resnet18", "protocol": "dve", "resize": 100, "crop": 70, "dataset": "synthetic"}
    assert "protocol dve (resize 100, crop 15 a side: 70 px" in (out / "results.md").read_text()
    with pytest.raises(UserError, match="give the protocol or the sizes"):
        regress.main(regress.get_args_parser().parse_args(["--features_from", "random-resnet18", "--protocol", "cl",
                                                           "--crop", "64", "--output_dir", str(tmp_path / "x")]))


def test_the_supervised_network_starts_from_the_architectures_own_initialisation():
    net = Supervised(load_model("random-resnet18"))
    net.reset(3)
    torch.manual_seed(3)
    fresh = ResNetEncoder("resnet18")                                     # built directly, under the same seed
    for (k, a), b in zip(net.network.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    before = next(net.network.parameters()).clone()
    net.reset(4)
    assert not torch.equal(before, next(net.network.parameters()))
    assert all(p.requires_grad for p in net.network.parameters())
    with pytest.raises(UserError, match="supervised:MODEL with MODEL a stage-1 or stage-2 final/"):
        load_source("supervised:nmf:8")


def test_a_network_trained_end_to_end_is_kept_at_its_validation_best_weights():
    """The ceiling's network joins the optimiser (its weights change) and comes back at the weights of the
    selected step: scoring the returned pair on validation again gives the recorded validation error."""
    g = torch.Generator().manual_seed(0)
    source = Supervised(load_model("random-resnet18"))
    data, stores = {}, {}
    for split, n in (("train", 16), ("val", 8)):
        images = (255 * torch.rand(n, 3, 32, 32, generator=g)).to(torch.uint8)
        corner = 2 if split == "train" else 16              # validation faces elsewhere: training moves away from them
        data[split] = {"images": images, "landmarks": corner + 6 * torch.rand(n, 5, 2, generator=g),
                       "visible": torch.ones(n, 5, dtype=torch.bool)}
    stores["train"] = TrainedStore(source, data["train"]["images"], 8)
    stores["val"] = FeatureStore(source, data["val"]["images"], budget=0, batch=8)
    first = {k: v.clone() for k, v in source.network.state_dict().items()}
    modes = []                                               # the network's mode at each forward: train, then eval
    source.network.layer1.register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    spec = RegressorSpec(intermediate=2, batch_size=8, epochs=1, min_steps=8, eval_every=2)
    scorer = Scorer(5, size=32)
    reg, record = train_regressor(spec, stores, data, torch.arange(16), 0, scorer, 5, source.network)
    assert any(not torch.equal(first[k], v) for k, v in source.network.state_dict().items())
    assert modes[:2] == [True, True] and modes[2] is False and not source.network.training    # step, step, validate
    val = dict(map(tuple, record["val_curve"]))
    assert record["best_step"] < 8 and val[8] != pytest.approx(record["val"])   # the last step is not the kept one
    again, _ = scorer(predict(reg, stores["val"], 32), data["val"]["landmarks"], data["val"]["visible"])
    assert again == pytest.approx(record["val"], abs=1e-4)


@pytest.mark.slow
def test_resume_compares_the_protocol_and_refuses_a_run_from_before_it(cache_dir, tmp_path):
    out = tmp_path / "run"
    base = ["--features_from", "random-resnet18", "--num_images", "24", "--min_steps", "2", "--epochs", "1",
            "--eval_every", "2", "--data_workers", "1", "--intermediate", "2", "--output_dir", str(out)]
    parse = regress.get_args_parser().parse_args
    regress.main(parse(base + ["--protocol", "dve"]))
    regress.main(parse(base + ["--resize", "100", "--crop", "70", "--resume"]))     # the same input, named otherwise
    with pytest.raises(UserError, match=r"other settings than .* \(input\)"):
        regress.main(parse(base + ["--protocol", "cl", "--resume"]))
    saved = json.loads((out / "args.json").read_text())
    (out / "args.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in ("input", "protocol")}))
    with pytest.raises(UserError, match="was begun before --protocol"):
        regress.main(parse(base + ["--resize", "136", "--crop", "96", "--resume"]))
    with pytest.raises(UserError, match="the first source is the one final/ keeps"):
        regress.main(parse(["--features_from", "supervised:random-resnet18", "random-resnet18",
                            "--output_dir", str(tmp_path / "s")]))
