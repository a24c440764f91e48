"""Faults a long run meets: a kill -9 at any moment, a checkpoint write cut short, a loss that turns non-finite,
and checkpoints that could run code when loaded."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import byol_pretrain
import dense_distill
from common.errors import UserError
from common.models import ResNetEncoder
from common.checkpoint import checkpoint_dirs
from conftest import ROOT

STAGE1 = ["--arch", "resnet18", "--crop_size", "32", "--image_size", "32", "--num_images", "40", "--batch_size", "8",
          "--optimizer", "adam", "--lr", "3.2e-2", "--proj_hidden", "32", "--proj_dim", "16", "--log_every", "1",
          "--data_workers", "1", "--probe_pairs", "0"]
STAGE2 = ["--crop_size", "32", "--image_size", "32", "--num_images", "40", "--batch_size", "8", "--lr", "1e-2",
          "--feature_dim", "16", "--fpn_width", "16", "--head_dim", "32", "--log_every", "1", "--data_workers", "1",
          "--warmup_epochs", "0", "--probe_pairs", "0", "--unfreeze_encoder", "--keep_frozen", "2"]


def stage(script: str, teacher):
    if script == "byol_pretrain.py":
        return byol_pretrain, STAGE1
    return dense_distill, STAGE2 + ["--init_from", str(teacher)]


def weights(out):
    return load_file(out / "final" / "model.safetensors")


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["byol_pretrain.py", "dense_distill.py"])
def test_kill_9_at_a_random_moment_then_resume_gives_the_uninterrupted_weights(cache_dir, tmp_path, teacher, script):
    module, flags = stage(script, teacher)
    flags = flags + ["--max_steps", "12", "--checkpoint_every", "1"]   # a checkpoint every step: kills land in writes
    module.main(module.get_args_parser().parse_args(flags + ["--output_dir", str(tmp_path / "straight")]))
    # the same run in a process of its own, killed at a random moment once its first checkpoint exists
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, script, *flags, "--output_dir", str(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not checkpoint_dirs(killed) and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random(script).uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill: give it more steps"
    assert not (killed / "final").exists() and checkpoint_dirs(killed)
    module.main(module.get_args_parser().parse_args(flags + ["--output_dir", str(killed), "--resume"]))
    assert_same(weights(tmp_path / "straight"), weights(killed))


@pytest.mark.slow
def test_a_checkpoint_cut_short_is_never_taken_as_the_latest(cache_dir, tmp_path):
    flags = STAGE1 + ["--max_steps", "4", "--checkpoint_every", "2"]
    byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(flags + ["--output_dir", str(tmp_path / "a")]))
    out = tmp_path / "b"
    byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(
        flags + ["--output_dir", str(out), "--exit_after_steps", "2"]))
    # what a kill during the write of step 4 leaves: a temporary folder with a truncated file
    part = out / "checkpoints" / ".tmp_step_4"
    part.mkdir()
    good = (out / "checkpoints" / "step_2" / "model.safetensors").read_bytes()
    (part / "model.safetensors").write_bytes(good[:len(good) // 3])
    assert [p.name for p in checkpoint_dirs(out)] == ["step_2"]
    byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(flags + ["--output_dir", str(out), "--resume"]))
    assert_same(weights(tmp_path / "a"), weights(out))
    assert [p.name for p in checkpoint_dirs(out)] == ["step_2", "step_4"] and not part.exists()


@pytest.mark.parametrize("script", ["byol_pretrain.py", "dense_distill.py"])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cache_dir, tmp_path, teacher, script,
                                                                            monkeypatch):
    module, flags = stage(script, teacher)
    name = "pixel_loss" if script == "byol_pretrain.py" else "pair_loss"
    real, calls = getattr(module, name), []
    per_step = 2 if script == "byol_pretrain.py" else 1                  # pixel_loss: once per view

    def poisoned(*args, **kwargs):                                       # NaN from step 3 on
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 2 * per_step else loss

    monkeypatch.setattr(module, name, poisoned)
    extra = ["--objective", "pixel"] if script == "byol_pretrain.py" else []
    args = module.get_args_parser().parse_args(flags + extra + ["--max_steps", "8", "--checkpoint_every", "2",
                                                                "--log_every", "10", "--output_dir", str(tmp_path)])
    with pytest.raises(UserError, match="not finite at step 3: stopped"):
        module.main(args)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_2"]   # step 4's is never written
    assert not (tmp_path / "final").exists()
    kept = load_file(tmp_path / "checkpoints" / "step_2" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())


def test_checkpoints_and_loading_never_unpickle(cache_dir, tmp_path):
    byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(
        STAGE1 + ["--max_steps", "2", "--checkpoint_every", "2", "--output_dir", str(tmp_path)]))
    files = {p.name for p in (tmp_path / "checkpoints" / "step_2").iterdir()}
    assert files and all(f.endswith((".safetensors", ".json")) for f in files), files
    # no code path reads pickle: no torch.load, pickle, trust_remote_code or accelerate's state in the sources
    sources = [p for p in ROOT.glob("*.py")] + list((ROOT / "common").rglob("*.py"))
    for p in sources:
        text = p.read_text()
        for bad in ("torch.load(", "import pickle", "trust_remote_code", "accelerator.load_state",
                    "accelerator.save_state"):
            assert bad not in text, f"{p.name}: {bad}"


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(call, match: str):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert "\n" not in str(e.value), str(e.value)


@pytest.mark.slow
def test_wrong_inputs_are_one_line_errors_and_touch_nothing(cache_dir, tmp_path, teacher):
    import json

    import regress
    from common.models import LandmarkRegressor
    from PIL import Image
    stage1 = byol_pretrain.get_args_parser()
    used = tmp_path / "used"
    byol_pretrain.main(stage1.parse_args(STAGE1 + ["--max_steps", "2", "--checkpoint_every", "1",
                                                   "--output_dir", str(used)]))
    before = snapshot(used)
    # another run's checkpoints, without --resume or --overwrite
    one_line_error(lambda: byol_pretrain.main(stage1.parse_args(STAGE1 + ["--max_steps", "2", "--output_dir",
                                                                          str(used)])), "is not empty")
    # --resume with a model of another architecture (or any other setting that changes the run)
    other = [("resnet50" if x == "resnet18" else x) for x in STAGE1]
    one_line_error(lambda: byol_pretrain.main(stage1.parse_args(other + ["--max_steps", "2", "--resume",
                                                                         "--output_dir", str(used)])),
                   r"--resume with other settings than .* \(arch\)")
    # a stage-1 folder whose weights are not its config's architecture
    wrong = tmp_path / "wrong"
    ResNetEncoder("resnet18").save_pretrained(wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "arch": "resnet50"}))
    stage2 = dense_distill.get_args_parser()
    one_line_error(lambda: dense_distill.main(stage2.parse_args(STAGE2 + ["--init_from", str(wrong), "--output_dir",
                                                                          str(used)])), "cannot load the model")
    # a stage-2 model where stage 2 needs a stage-1 teacher
    dense_distill.main(stage2.parse_args(STAGE2 + ["--init_from", str(teacher), "--max_steps", "1",
                                                   "--output_dir", str(tmp_path / "s2")]))
    one_line_error(lambda: dense_distill.main(stage2.parse_args(
        STAGE2 + ["--init_from", str(tmp_path / "s2" / "final"), "--output_dir", str(used)])), "not a stage-1 model")
    # a regressor given as features, and an unlabelled data set given to regress.py
    reg = tmp_path / "regressor"
    LandmarkRegressor(16, 5).save_pretrained(reg)
    flags = ["--num_images", "24", "--resize", "40", "--crop", "32", "--output_dir", str(used)]
    one_line_error(lambda: regress.main(regress.get_args_parser().parse_args(["--features_from", str(reg), *flags])),
                   "a landmark regressor")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 60, 80, 120)).save(photos / f"{i}.jpg")
    one_line_error(lambda: regress.main(regress.get_args_parser().parse_args(
        ["--features_from", "random-resnet18", "--dataset", "imagefolder", "--data_dir", str(photos), *flags])),
        "no landmarks")
    assert snapshot(used) == before                                    # nothing on disk was touched


def test_bad_images_are_skipped_and_listed_and_too_many_stop_the_run(cache_dir, tmp_path, caplog, monkeypatch):
    import numpy as np
    from PIL import Image
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):                                                   # plain RGB photos
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photos / f"good_{i}.jpg")
    # odd but valid: converted and used
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(photos / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(photos / "deep.png")
    Image.new("P", (40, 40), 3).save(photos / "palette.png")
    rotated = Image.new("RGB", (48, 40), (200, 30, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(photos / "rotated.jpg", exif=exif.tobytes())
    # corrupt, mid-data set (sorted names put them among the good ones)
    good = (photos / "good_3.jpg").read_bytes()
    (photos / "good_3b_truncated.jpg").write_bytes(good[:len(good) // 3])
    (photos / "good_5b_empty.jpg").write_bytes(b"")
    (photos / "good_7b_text.jpg").write_text("not an image")
    Image.new("RGB", (1, 1)).save(photos / "good_9b_tiny.png")
    flags = ["--dataset", "imagefolder", "--data_dir", str(photos), "--image_size", "32", "--arch", "resnet18",
             "--crop_size", "32", "--batch_size", "8", "--max_steps", "2", "--optimizer", "adam", "--lr", "3.2e-2",
             "--proj_hidden", "32", "--proj_dim", "16", "--data_workers", "1", "--probe_pairs", "0"]
    with caplog.at_level("WARNING"):
        result = byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(
            flags + ["--max_bad_frac", "0.3", "--output_dir", str(tmp_path / "ok")]))
    assert result["step"] == 2
    log = caplog.text
    assert "skipped 4 of 20 images" in log
    for name in ("good_3b_truncated.jpg", "good_5b_empty.jpg", "good_7b_text.jpg", "good_9b_tiny.png"):
        assert name in log
    for name in ("cmyk.jpg", "deep.png", "palette.png", "rotated.jpg"):
        assert name not in log
    strict = byol_pretrain.get_args_parser().parse_args(flags + ["--max_bad_frac", "0.1", "--output_dir",
                                                                  str(tmp_path / "strict")])
    # the cache built above remembers its skipped files: a stricter run refuses it
    with pytest.raises(UserError, match=r"4 images were skipped when this cache was built, more than --max_bad_frac"):
        byol_pretrain.main(strict)
    monkeypatch.setenv("LEAD_CACHE", str(tmp_path / "fresh_cache"))      # and a first build refuses the data
    with pytest.raises(UserError, match=r"4 of 20 images are bad \(20.0% > --max_bad_frac 10.0%\)"):
        byol_pretrain.main(strict)
