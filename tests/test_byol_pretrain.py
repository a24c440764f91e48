"""Stage 1 on tiny data: the hand-off folder, exact resume, the schedules, the output-folder contract."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import byol_pretrain
from common.errors import UserError
from common.models import ResNetEncoder
from common.optim import ema_momentum, ema_update, warmup_cosine

TINY = ["--arch", "resnet18", "--crop_size", "32", "--image_size", "32", "--num_images", "40", "--batch_size", "8",
        "--optimizer", "adam", "--lr", "3.2e-2", "--proj_hidden", "32", "--proj_dim", "16", "--log_every", "1",
        "--data_workers", "1", "--checkpoint_every", "100"]


def run(out, *extra):
    args = byol_pretrain.get_args_parser().parse_args(TINY + ["--output_dir", str(out), *extra])
    return byol_pretrain.main(args)


def test_writes_a_loadable_encoder_and_finite_metrics(cache_dir, tmp_path):
    result = run(tmp_path / "run", "--max_steps", "3", "--probe_pairs", "6")
    final = tmp_path / "run" / "final"
    net = ResNetEncoder.from_pretrained(final)
    assert net.arch == "resnet18" and (final / "README.md").read_text().startswith("---\n")
    assert "\n# LEAD stage 1: byol resnet18\n" in (final / "README.md").read_text()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 3 and all(math.isfinite(v) and 0 <= v <= 8 for v in losses)
    assert lines[-1]["probe"] == result["probe"] and set(result["probe"]) == {"trained", "random"}
    assert json.loads((tmp_path / "run" / "args.json").read_text())["arch"] == "resnet18"


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, objective", [("adam", "byol"), ("lars", "byol"), ("adam", "moco")])
def test_resume_continues_exactly(cache_dir, tmp_path, optimizer, objective):
    """moco: the queue of keys is restored too (a fresh one would change the negatives of steps 3-4)."""
    opt = ["--optimizer", optimizer, "--lr", "3.2e-2" if optimizer == "adam" else "0.2", "--objective", objective]
    run(tmp_path / "straight", "--max_steps", "4", "--probe_pairs", "0", *opt)
    assert run(tmp_path / "split", "--max_steps", "4", "--probe_pairs", "0", "--exit_after_steps", "2",
               *opt)["step"] == 2
    assert not (tmp_path / "split" / "final").exists()
    run(tmp_path / "split", "--max_steps", "4", "--probe_pairs", "0", "--resume", *opt)
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_used_output_folder_is_refused(cache_dir, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("x")
    with pytest.raises(UserError, match="--resume to continue that run or --overwrite"):
        run(tmp_path / "used", "--max_steps", "1")
    with pytest.raises(UserError, match="nothing to resume"):
        run(tmp_path / "used", "--max_steps", "1", "--resume")
    (tmp_path / "used" / "checkpoints" / ".tmp_step_3").mkdir(parents=True)   # a write that was killed
    with pytest.raises(UserError, match="nothing to resume"):
        run(tmp_path / "used", "--max_steps", "1", "--resume")
    with pytest.raises(UserError, match="--batch_size 64 must divide by 1 processes and not exceed the 40"):
        run(tmp_path / "new", "--max_steps", "1", "--batch_size", "64")


def test_schedules():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25) and warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5) and warmup_cosine(20, 4, 20) == pytest.approx(0.0)
    assert ema_momentum(0, 100, 0.99) == pytest.approx(0.99) and ema_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert ema_momentum(50, 100, 0.99) == pytest.approx(0.995)


def test_ema_update_against_a_loop():
    target, online = [torch.randn(3, 2), torch.randn(4)], [torch.randn(3, 2), torch.randn(4)]
    expected = [0.9 * t + 0.1 * o for t, o in zip(target, online)]
    ema_update(target, online, 0.9)
    assert all(torch.allclose(t, e) for t, e in zip(target, expected))


def _delta(folder, init):
    w = load_file(folder / "final" / "model.safetensors")
    return torch.cat([(w[k].float() - init[k].float()).flatten() for k in sorted(w) if "num_batches" not in k])


@pytest.mark.slow
def test_two_processes_take_the_same_step_as_one(cache_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo) and one process with the same global batch take the same
    SGD step (BatchNorm on running statistics, so per-process batch statistics do not differ); a run
    with another seed does not."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    sgd = ["--optimizer", "sgd", "--lr", "2.0", "--momentum", "0", "--weight_decay", "0", "--max_steps", "1",
           "--probe_pairs", "0", "--bn_eval"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "byol_pretrain.py",
           *TINY, *sgd, "--output_dir", str(tmp_path / "two")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["world_size"] == 2
    run(tmp_path / "one", *sgd)
    run(tmp_path / "other_seed", *sgd, "--seed", "1")
    torch.manual_seed(0)
    init = ResNetEncoder("resnet18").state_dict()
    two, one = _delta(tmp_path / "two", init), _delta(tmp_path / "one", init)
    torch.manual_seed(1)
    other = _delta(tmp_path / "other_seed", ResNetEncoder("resnet18").state_dict())
    assert one.norm() > 0
    assert (two - one).norm() / one.norm() < 1e-4, ((two - one).norm() / one.norm()).item()
    assert (other - one).norm() / one.norm() > 0.5


@pytest.mark.slow
def test_accelerate_launch_runs_the_script(cache_dir, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           "--mixed_precision", "no", "byol_pretrain.py", *TINY, "--max_steps", "2", "--probe_pairs", "0",
           "--output_dir", str(tmp_path / "run")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ResNetEncoder.from_pretrained(tmp_path / "run" / "final").arch == "resnet18"
    losses = [json.loads(x).get("loss") for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in losses if v is not None) and losses[0] is not None


def test_periodic_probe_and_hub_push_wiring(cache_dir, tmp_path, fake_hub):
    """--eval_every adds probe lines during training; --push_to_hub uploads final/ (to a fake Hub)."""
    # 40 images, batch 8: 5 steps an epoch; every 0.4 epochs = every 2 steps
    run(tmp_path / "run", "--max_steps", "5", "--probe_pairs", "4", "--eval_every", "0.4",
        "--push_to_hub", "--hub_model_id", "someone/lead-byol")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "probe" in x] == [2, 4, 5]
    probes = [x["probe"] for x in lines if "probe" in x]
    assert probes[0]["random"] == probes[-1]["random"] and probes[0]["trained"] != probes[-1]["trained"]
    assert fake_hub.repos == {"someone/lead-byol": False}
    (repo, _, files), = fake_hub.uploads
    final = tmp_path / "run" / "final"
    assert repo == "someone/lead-byol" and files == {p.name: p.read_bytes() for p in final.iterdir()}
    with pytest.raises(UserError, match="--push_to_hub needs --hub_model_id"):
        run(tmp_path / "other", "--max_steps", "1", "--push_to_hub")
