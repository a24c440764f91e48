"""Stage 2 on tiny data: the student's shapes, the hand-off folder, the frozen encoder, resume, errors."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import dense_distill
from common.errors import UserError
from common.losses import dve_views, lead_loss
from common.models import DenseExtractor, ResNetEncoder

TINY = ["--crop_size", "32", "--image_size", "32", "--num_images", "40", "--batch_size", "8", "--lr", "1e-2",
        "--feature_dim", "16", "--fpn_width", "16", "--head_dim", "32", "--log_every", "1", "--data_workers", "1",
        "--checkpoint_every", "100", "--warmup_epochs", "0"]


def run(teacher, out, *extra):
    args = dense_distill.get_args_parser().parse_args(TINY + ["--init_from", str(teacher), "--output_dir", str(out),
                                                              *extra])
    return dense_distill.main(args)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_student_gives_feature_dim_channels_at_a_quarter(arch):
    net = DenseExtractor(arch, feature_dim=64).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 96, 96)).shape == (2, 64, 24, 24)
        assert net(torch.rand(1, 3, 100, 100)).shape == (1, 64, 25, 25)     # sizes that are not powers of 2


def test_writes_the_student_without_head_and_keeps_the_encoder_frozen(cache_dir, tmp_path, teacher):
    result = run(teacher, tmp_path / "run", "--max_steps", "3", "--probe_pairs", "4")
    final = tmp_path / "run" / "final"
    student = DenseExtractor.from_pretrained(final)
    assert student.feature_dim == 16
    assert "\n# LEAD stage 2: 16-d dense features, resnet18\n" in (final / "README.md").read_text()
    weights = load_file(final / "model.safetensors")
    assert not any(k.startswith("head") for k in weights) and any(k.startswith("decoder") for k in weights)
    phi_g = load_file(teacher / "model.safetensors")
    assert all(torch.equal(weights["encoder." + k], v) for k, v in phi_g.items())           # frozen
    init = DenseExtractor("resnet18", 16, 16)
    assert not torch.equal(weights["decoder.head.weight"], init.decoder.head.weight)      # the decoder trained
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert set(result["probe"]) == {"lead-16", "hypercolumn-960"}


def test_unfreeze_encoder_trains_it(cache_dir, tmp_path, teacher):
    run(teacher, tmp_path / "run", "--max_steps", "2", "--probe_pairs", "0", "--unfreeze_encoder", "--pairs", "both")
    weights = load_file(tmp_path / "run" / "final" / "model.safetensors")
    phi_g = load_file(teacher / "model.safetensors")
    assert not torch.equal(weights["encoder.layer1.0.conv1.weight"], phi_g["layer1.0.conv1.weight"])
    # --keep_frozen 2: the stem and layer 1 keep the teacher's weights and BatchNorm statistics, layer 2 trains
    run(teacher, tmp_path / "part", "--max_steps", "2", "--probe_pairs", "0", "--unfreeze_encoder",
        "--keep_frozen", "2")
    part = load_file(tmp_path / "part" / "final" / "model.safetensors")
    for key in ("stem.0.weight", "stem.1.running_mean", "layer1.1.bn2.running_var", "layer1.0.conv2.weight"):
        torch.testing.assert_close(part["encoder." + key], phi_g[key])
    assert not torch.equal(part["encoder.layer2.0.conv1.weight"], phi_g["layer2.0.conv1.weight"])
    with pytest.raises(UserError, match="--unfreeze_encoder"):
        run(teacher, tmp_path / "bad", "--max_steps", "1", "--keep_frozen", "2")


def test_resume_continues_exactly(cache_dir, tmp_path, teacher):
    run(teacher, tmp_path / "straight", "--max_steps", "4", "--probe_pairs", "0", "--pairs", "cross")
    run(teacher, tmp_path / "split", "--max_steps", "4", "--probe_pairs", "0", "--pairs", "cross",
        "--exit_after_steps", "2")
    assert not (tmp_path / "split" / "final").exists()
    run(teacher, tmp_path / "split", "--max_steps", "4", "--probe_pairs", "0", "--pairs", "cross", "--resume")
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_chunked_and_full_loss_agree_in_a_run(cache_dir, tmp_path, teacher):
    # (gradients agree too: tests/test_lead_loss.py; Adam's first step, about lr * sign(g), would
    # magnify rounding on near-zero gradients, so the weights are not compared here)
    losses = []
    for name, chunk in (("full", "none"), ("chunked", "5")):
        run(teacher, tmp_path / name, "--max_steps", "2", "--probe_pairs", "0", "--chunk", chunk)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(x)["loss"] for x in lines if "loss" in x])
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6) and len(losses[0]) == 2


def test_teacher_hypercolumn_stays_bf16_under_mixed_precision(cache_dir, tmp_path, teacher, monkeypatch):
    # Accelerate casts a prepared model's outputs to fp32; the teacher runs outside it, so its layers and h stay bf16
    # (half its cost); lead_loss then takes h's similarities in fp32 (test_lead_loss.py)
    seen = []

    def spy(f_i, f_j, h_i, h_j, *rest):
        seen.append((f_i.dtype, h_i.dtype))
        return lead_loss(f_i, f_j, h_i, h_j, *rest)

    from accelerate.state import AcceleratorState
    monkeypatch.setattr(dense_distill, "lead_loss", spy)
    AcceleratorState._reset_state(True)     # Accelerate's state is per process; its own tests reset it so
    try:
        run(teacher, tmp_path / "bf16", "--max_steps", "1", "--probe_pairs", "0", "--mixed_precision", "bf16")
    finally:
        AcceleratorState._reset_state(True)
    assert seen and all(h == torch.bfloat16 for _, h in seen)


def test_pair_modes():
    g = torch.Generator().manual_seed(0)
    f, h = torch.randn(6, 10, 4, generator=g), torch.randn(6, 10, 12, generator=g)
    views, cross = (dense_distill.pair_loss(f, h, p, 0.1, None) for p in ("views", "cross"))
    torch.testing.assert_close(dense_distill.pair_loss(f, h, "both", 0.1, None), (views + cross) / 2)
    assert not torch.isclose(views, cross)


def test_init_from_must_be_a_stage_1_model(cache_dir, tmp_path, teacher):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a stage-1 model"):
        run(tmp_path / "empty", tmp_path / "a", "--max_steps", "1")
    DenseExtractor("resnet18", 16, 16).save_pretrained(tmp_path / "stage2")
    with pytest.raises(UserError, match="not a stage-1 model"):
        run(tmp_path / "stage2", tmp_path / "b", "--max_steps", "1")
    for bad in ("half", "0"):
        with pytest.raises(UserError, match="--chunk must be auto, none or a number"):
            run(teacher, tmp_path / "c", "--max_steps", "1", "--chunk", bad)


@pytest.mark.slow
def test_accelerate_launch_runs_the_script(cache_dir, tmp_path, teacher):
    import subprocess
    import sys
    from conftest import ROOT
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           "--mixed_precision", "no", "dense_distill.py", *TINY, "--max_steps", "2", "--probe_pairs", "0",
           "--init_from", str(teacher), "--output_dir", str(tmp_path / "run")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert DenseExtractor.from_pretrained(tmp_path / "run" / "final").feature_dim == 16
    bad = subprocess.run([sys.executable, "dense_distill.py", "--init_from", str(tmp_path), "--output_dir",
                          str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not a stage-1 model" in bad.stderr


def losses_of(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_dve_objectives_train_the_features_and_add_up(cache_dir, tmp_path, teacher):
    result = run(teacher, tmp_path / "dve", "--max_steps", "2", "--probe_pairs", "4", "--objective", "dve")
    assert "lead-16" in result["probe"]
    weights = load_file(tmp_path / "dve" / "final" / "model.safetensors")
    assert not torch.equal(weights["decoder.head.weight"], DenseExtractor("resnet18", 16, 16).decoder.head.weight)
    assert all(math.isfinite(v) and v > 0 for v in losses_of(tmp_path / "dve"))
    # lead+dve with the DVE term weighted 0 is LEAD, step for step; a weight makes the sum larger
    run(teacher, tmp_path / "lead", "--max_steps", "2", "--probe_pairs", "0")
    run(teacher, tmp_path / "zero", "--max_steps", "2", "--probe_pairs", "0", "--objective", "lead+dve",
        "--dve_weight", "0")
    run(teacher, tmp_path / "sum", "--max_steps", "1", "--probe_pairs", "0", "--objective", "lead+dve")
    lead, zero, total = (losses_of(tmp_path / n) for n in ("lead", "zero", "sum"))
    assert zero == pytest.approx(lead, rel=1e-5)
    assert total[0] == pytest.approx(lead[0] + losses_of(tmp_path / "dve")[0], rel=1e-4)


def test_dve_channels_give_each_term_its_own_channels(cache_dir, tmp_path, teacher):
    """--dve_channels K: LEAD's head sees the first C - K channels, the DVE term the last K; each term's gradient
    reaches only its own channels of the features."""
    torch.manual_seed(0)
    student = DenseExtractor("resnet18", 16, 16)
    model = dense_distill.Distiller(student, head_dim=8, frozen=5, dve_channels=6)
    x = torch.rand(4, 3, 32, 32)
    features, f = model(x, student.encoder.layers(x))
    assert f.shape == (4, 64, 8) and model.head.net[0].in_channels == 10
    h = torch.randn(4, 64, 32)
    g_lead, = torch.autograd.grad(dense_distill.pair_loss(f, h, "views", 0.05, None), features, retain_graph=True)
    crop = {"w": torch.ones(2), "h": torch.ones(2), "cx": torch.zeros(2), "cy": torch.zeros(2), "flip": torch.zeros(2)}
    shifted = {**crop, "w": torch.full((2,), 0.8), "cx": torch.full((2,), 0.1)}     # two views of each image
    g_dve, = torch.autograd.grad(dve_views(features[:, -6:], crop, shifted, 0.05, 0.5), features)
    per_channel = lambda g: g.abs().sum((0, 2, 3))                       # noqa: E731
    assert (per_channel(g_lead)[10:] == 0).all() and (per_channel(g_lead)[:10] > 0).all()
    assert (per_channel(g_dve)[:10] == 0).all() and (per_channel(g_dve)[10:] > 0).all()
    # in a run, and refused where it means nothing
    run(teacher, tmp_path / "split", "--max_steps", "1", "--probe_pairs", "0", "--objective", "lead+dve",
        "--dve_channels", "6")
    assert all(math.isfinite(v) and v > 0 for v in losses_of(tmp_path / "split"))
    for bad in (["--dve_channels", "6"], ["--objective", "lead+dve", "--dve_channels", "16"]):
        with pytest.raises(UserError, match="--dve_channels splits the features between LEAD and DVE"):
            run(teacher, tmp_path / "bad", "--max_steps", "1", *bad)


@pytest.mark.parametrize("frozen", [1, 2, 3, 5])
def test_frozen_layers_are_taken_from_the_teacher(frozen):
    # the student starts after its last frozen layer, from the teacher's map: the same output and gradients
    # as running its whole encoder
    torch.manual_seed(0)
    teacher = ResNetEncoder("resnet18").eval()
    student = DenseExtractor("resnet18", 16, 16)
    student.encoder.load_state_dict(teacher.state_dict())
    model = dense_distill.Distiller(student, 8, frozen)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        maps = teacher.layers(x)
    outputs, grads = [], []
    for given in (maps, None):
        features, f = model(x, given)
        (features.square().mean() + f.square().mean()).backward()
        outputs.append((features, f))
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        model.zero_grad()
    for a, b in zip(outputs[0], outputs[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
