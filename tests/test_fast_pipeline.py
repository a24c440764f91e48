"""The fast training path keeps correctness: batched views drawn as the reference transforms draw them,
the fused EMA and optimisers equal their plain formulas, bf16 steps stay close to fp32, and the
throughput benchmark runs against its baseline."""
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

import byol_pretrain
import dense_distill
from common.views import VIEW1, byol_views, colour, view_configs, view_correspondence, view_params
from common.models import DenseExtractor, ResNetEncoder
from common.optim import ema_update

pytestmark = pytest.mark.usefixtures("one_thread")
QUANTILES = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.3, 1.0)])
def test_crops_are_drawn_as_torchvision_draws_them(scale):
    cfg, n = dataclasses.replace(VIEW1, scale=scale), 20000
    p = view_params(n, cfg, torch.Generator().manual_seed(0))
    area, ratio = p["w"] * p["h"], p["w"] / p["h"]
    assert area.min() >= scale[0] - 1e-6 and area.max() <= 1 + 1e-6
    assert ratio.min() >= 3 / 4 - 1e-6 and ratio.max() <= 4 / 3 + 1e-6
    torch.manual_seed(0)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.empty(3, 1000, 1000), list(scale), [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float64)          # (top, left, height, width) in px
    ref_area, ref_ratio = ref[:, 2] * ref[:, 3] / 1e6, ref[:, 3] / ref[:, 2]
    torch.testing.assert_close(area.double().quantile(QUANTILES.double()), ref_area.quantile(QUANTILES.double()),
                               atol=0.015, rtol=0)
    torch.testing.assert_close(ratio.log().double().quantile(QUANTILES.double()),
                               ref_ratio.log().quantile(QUANTILES.double()), atol=0.015, rtol=0)


def test_colour_statistics_match_torchvision_jitter_and_grey():
    g, n = torch.Generator().manual_seed(0), 4000
    img = torch.rand(3, 8, 8, generator=g)
    ours = colour(img.expand(n, 3, 8, 8).contiguous(), view_params(n, VIEW1, g))
    torch.manual_seed(0)
    jitter = v2.Compose([v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(0.2)])
    ref = torch.stack([jitter(img) for _ in range(n)])
    stats = {"brightness": lambda y: y.mean((1, 2, 3)), "contrast": lambda y: y.std((2, 3)).mean(1),
             "chroma": lambda y: (y - y.mean(1, keepdim=True)).abs().mean((1, 2, 3))}
    for name, stat in stats.items():
        torch.testing.assert_close(stat(ours).quantile(QUANTILES), stat(ref).quantile(QUANTILES), atol=0.02, rtol=0,
                                   msg=lambda m: f"{name}: {m}")
    assert ((ours.std(1) < 1e-6).all((1, 2)).float().mean() - 0.2).abs() < 0.03     # grey share


def test_each_image_of_a_batch_gets_its_own_view():
    images = torch.randint(0, 256, (1, 3, 48, 48), dtype=torch.uint8).expand(16, 3, 48, 48)
    p = view_params(16, view_configs(32)[1], torch.Generator().manual_seed(0))
    views = byol_views(images, p, 32).flatten(1)
    assert torch.cdist(views, views).add(torch.eye(16)).min() > 0.1              # no two the same


def test_fused_ema_equals_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    target = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    online = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    expected = [0.996 * t + (1 - 0.996) * o for t, o in zip(target, online)]
    ema_update(target, online, 0.996)
    for got, want in zip(target, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4, fused=True),
                                  lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-4, fused=True)])
def test_fused_optimisers_follow_the_plain_update(make):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    fused, plain = make(a), make(b)
    for group in plain.param_groups:
        group["fused"], group["foreach"] = False, False
    for _ in range(3):
        grads = [torch.randn_like(x) for x in a]
        for x, y, gr in zip(a, b, grads):
            x.grad, y.grad = gr.clone(), gr.clone()
        fused.step()
        plain.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_stage_1_loss_in_bf16_is_close_to_fp32():
    torch.manual_seed(0)
    model = byol_pretrain.BYOL(ResNetEncoder("resnet18", input_size=32), 64, 32, "byol+pixel", 4).eval()
    target = model.make_target().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=g)
    p1, p2 = (view_params(4, c, g) for c in view_configs(32, flip=0))
    v1, v2_ = byol_views(images, p1, 32), byol_views(images, p2, 32)
    corr = (view_correspondence(p1, p2, 4), view_correspondence(p2, p1, 4))
    with torch.no_grad():
        full = model(v1, v2_, target, corr, (p1, p2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(v1, v2_, target, corr, (p1, p2))
    torch.testing.assert_close(half, full, rtol=3e-2, atol=0)


def test_stage_2_loss_in_bf16_is_close_to_fp32():
    torch.manual_seed(0)
    teacher = ResNetEncoder("resnet18", input_size=32).eval()
    student = DenseExtractor("resnet18", 16, 32, input_size=32)
    student.encoder.load_state_dict(teacher.state_dict())
    model = dense_distill.Distiller(student, 16).eval()
    views = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    losses = []
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            maps = teacher.layers(views)
            h = teacher.hypercolumn_of(maps).flatten(2).transpose(1, 2)
            losses.append(dense_distill.pair_loss(model(views, maps)[1], h, "views", 0.05, None))
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=0)


def resnet18_flops(images: int, backward: bool) -> int:
    """FLOPs of torchvision's ResNet-18 (no classifier) on `images` images of 32 px, counted apart from our code."""
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    with FlopCounterMode(display=False) as counter:
        out = net(torch.rand(images, 3, 32, 32))
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("stage", ["1", "2"])
def test_throughput_benchmark_runs_against_its_baseline(stage, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import throughput
    flags = ["--stage", stage, "--size", "32", "--steps", "1", "--warmup", "1", "--images", "8", "--proj_hidden",
             "32", "--workers", "0", "--peak_tflops", "1"]
    got = throughput.main(flags + ["--batch", "4", "--baseline", "--profile", "1"])
    out = capsys.readouterr().out
    assert got["precision"] == "no"                            # auto, as the tests' LEAD_CPU_BF16=0 answers
    for kind in ("ours", "baseline"):
        f = got[kind]
        assert all(0 < f[k] < math.inf for k in ("rate", "ms_per_step", "tflops", "memory_gib"))
        assert f["peak_tflops"] == 1                           # --peak_tflops given: not measured
    assert "ours" in out and "baseline" in out and "ours / baseline:" in out
    assert "Self CPU" in out and "convolution" in out                  # --profile: where the step's time goes
    # FLOPs per step against torchvision's ResNet-18 on the step's 8 views (2 x batch 4)
    flops = got["ours"]["gflops_per_step"] * 1e9
    if stage == "1":        # the online network's forward and backward and the target's forward; small heads
        assert 1 <= flops / (resnet18_flops(8, backward=True) + resnet18_flops(8, backward=False)) < 1.1
    else:                   # at least the teacher's forward (the student's head and the loss come on top)
        assert flops > resnet18_flops(8, backward=False)
        # per-image work: twice the images, twice the FLOPs
        assert throughput.main(flags + ["--batch", "8"])["ours"]["gflops_per_step"] * 1e9 == \
            pytest.approx(2 * flops, rel=0.05)


def test_throughput_times_the_network_alone_on_the_scripts_flags(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import throughput
    tiny = ["--stage", "2", "--size", "32", "--batch", "4", "--steps", "1", "--warmup", "1", "--images", "8",
            "--peak_tflops", "1", "--network"]
    frozen = throughput.main(tiny)
    trained = throughput.main(tiny + ["--flags", "--objective lead+dve --dve_channels 8 --unfreeze_encoder "
                                                 "--keep_frozen 1"])
    assert "ours / network alone:" in capsys.readouterr().out
    for got in (frozen, trained):               # the loss is compute the network alone does not do
        assert 0 < got["network"]["gflops_per_step"] < got["ours"]["gflops_per_step"]
    # the flags reach both steps: a trained encoder adds its backward to each
    assert trained["network"]["gflops_per_step"] > 1.5 * frozen["network"]["gflops_per_step"]
    assert trained["ours"]["gflops_per_step"] > frozen["ours"]["gflops_per_step"]
    with pytest.raises(SystemExit):
        throughput.main(["--stage", "1", "--network"])
    assert "--network times stage 2" in capsys.readouterr().err
