"""ResNet hypercolumns, the hand-off through save_pretrained, and BYOL's loss."""
import json

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from common.features import check_source
from common.losses import byol_loss
from common.models import DenseExtractor, LandmarkRegressor, MLPHead, ResNetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch,dim,width", [("resnet18", 960, 512), ("resnet50", 3840, 2048)])
def test_hypercolumn_shapes_at_96px(arch, dim, width):
    torch.manual_seed(0)
    net = ResNetEncoder(arch).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        h, v = net.hypercolumn(x), net(x)
    assert h.shape == (2, dim, 24, 24) and net.hypercolumn_dim == dim
    assert v.shape == (2, width)


def test_each_layer_of_the_hypercolumn_is_unit_length():
    torch.manual_seed(0)
    net = ResNetEncoder("resnet18").eval()
    with torch.no_grad():
        h = net.hypercolumn(torch.rand(1, 3, 64, 64))
        raw = ResNetEncoder("resnet18", normalize_layers=False)
        raw.load_state_dict(net.state_dict())
        g = raw.eval().hypercolumn(torch.rand(1, 3, 64, 64))
    start = 0
    for c in net.channels:  # 64, 128, 256, 512
        assert torch.allclose(h[:, start:start + c].norm(dim=1), torch.ones(1, 16, 16), atol=1e-5)
        start += c
    assert not torch.allclose(g[:, :64].norm(dim=1), torch.ones(1, 16, 16), atol=1e-2)


def test_layer1_part_equals_the_normalised_layer1_map():
    """Layer 1 is already at 1/4 resolution: its slice of the hypercolumn is that map, normalised."""
    torch.manual_seed(0)
    net = ResNetEncoder("resnet18").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.hypercolumn(x)[:, :64], F.normalize(net.layers(x)[0], dim=1), atol=1e-6)


def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    net = ResNetEncoder("resnet18", normalize_layers=False).eval()
    net.save_pretrained(tmp_path / "final")
    assert (tmp_path / "final" / "model.safetensors").exists() and (tmp_path / "final" / "config.json").exists()
    again = ResNetEncoder.from_pretrained(tmp_path / "final").eval()
    assert again.arch == "resnet18" and again.normalize_layers is False
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.hypercolumn(x), again.hypercolumn(x))


@pytest.fixture(scope="module")
def finals(tmp_path_factory):
    """A final/ folder of each stage, as the stages write them."""
    root = tmp_path_factory.mktemp("finals")
    torch.manual_seed(0)
    ResNetEncoder("resnet18").save_pretrained(root / "encoder")
    DenseExtractor("resnet18", feature_dim=16, fpn_width=16).save_pretrained(root / "extractor")
    LandmarkRegressor(16, 5).save_pretrained(root / "regressor")
    return root


CLASSES = {"encoder": ResNetEncoder, "extractor": DenseExtractor, "regressor": LandmarkRegressor}


def test_every_final_folder_says_its_stage_and_loads_only_as_its_class(finals):
    for stage, cls in CLASSES.items():
        assert json.loads((finals / stage / "config.json").read_text())["stage"] == stage
        assert isinstance(cls.from_pretrained(finals / stage), cls)
    with pytest.raises(UserError, match=r"encoder holds stage 1's ResNetEncoder, not stage 2's DenseExtractor$"):
        DenseExtractor.from_pretrained(finals / "encoder")
    with pytest.raises(UserError, match="holds stage 2's DenseExtractor, not stage 3's LandmarkRegressor"):
        LandmarkRegressor.from_pretrained(finals / "extractor")
    assert check_source(str(finals / "encoder")) == "hypercolumn" and \
        check_source(str(finals / "extractor")) == "compact"
    with pytest.raises(UserError, match="a landmark regressor"):
        check_source(str(finals / "regressor"))


def test_a_folder_written_before_the_stage_field_is_read_by_its_keys(finals, tmp_path):
    for stage, cls in CLASSES.items():
        old = tmp_path / stage
        old.mkdir()
        config = json.loads((finals / stage / "config.json").read_text())
        (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "stage"}))
        (old / "model.safetensors").write_bytes((finals / stage / "model.safetensors").read_bytes())
        assert isinstance(cls.from_pretrained(old), cls)
    assert check_source(str(tmp_path / "encoder")) == "hypercolumn"
    assert check_source(str(tmp_path / "extractor")) == "compact"
    with pytest.raises(UserError, match="a landmark regressor"):
        check_source(str(tmp_path / "regressor"))
    with pytest.raises(UserError, match="holds stage 1's ResNetEncoder, not stage 2's DenseExtractor"):
        DenseExtractor.from_pretrained(tmp_path / "encoder")     # it used to load, its decoder random (strict=False)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_last_stride_1_doubles_layer_4_only(arch):
    torch.manual_seed(0)
    net = ResNetEncoder(arch, last_stride=1).eval()
    with torch.no_grad():
        maps = net.layers(torch.rand(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 4]
    assert net.hypercolumn(torch.rand(1, 3, 64, 64)).shape == (1, net.hypercolumn_dim, 16, 16)
    # same weights as a stride-2 network: loading one into the other works, and the config round-trips
    net.load_state_dict(ResNetEncoder(arch).state_dict())
    with pytest.raises(ValueError, match="last_stride must be 1 or 2"):
        ResNetEncoder(arch, last_stride=3)


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch must be one of"):
        ResNetEncoder("vgg16")


def test_byol_loss_values():
    v = torch.randn(5, 8)
    assert byol_loss(v, 3 * v).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(v, -v).item() == pytest.approx(4.0, abs=1e-6)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert byol_loss(a, b).item() == pytest.approx(2.0)                 # orthogonal: 2 - 0


def test_mlp_head_shapes():
    head = MLPHead(512, hidden=64, dim_out=16)
    assert head(torch.randn(4, 512)).shape == (4, 16)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_our_resnet_is_torchvisions_weight_for_weight_and_output_for_output(arch):
    import torchvision
    from common.resnet import ResNet
    torch.manual_seed(0)
    ours = ResNet(arch).eval()
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, arch)(weights=None).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        y = ours.maxpool(ours.relu(ours.bn1(ours.conv1(x))))
        for layer in (ours.layer1, ours.layer2, ours.layer3, ours.layer4):
            y = layer(y)
        torch.testing.assert_close(ours.fc(torch.flatten(ours.avgpool(y), 1)), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("width", [16, 32, 64, 96])
def test_fpn_decoder_on_a_single_small_image(width):
    """At 32 px the stride-32 map is 1x1: each GroupNorm group needs 2 channels there, and wide decoders keep
    Panoptic FPN's 32 groups."""
    net = DenseExtractor("resnet18", feature_dim=8, fpn_width=width).eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {n.num_groups for n in norms} == {32 if width >= 64 else width // 2}
    with torch.no_grad():
        out = net(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 8, 8, 8) and torch.isfinite(out).all()
