"""benchmarks/gpu_check.py: its dry run on the CPU passes every check, and its verdicts can fail."""
import argparse
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_passes_every_check_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LEAD_CACHE", str(tmp_path / "outer_cache"))
    assert gpu_check.main(["--dry_run", "--json", str(tmp_path / "gpu.json")]) == 0
    out = capsys.readouterr().out
    got = json.loads((tmp_path / "gpu.json").read_text())
    assert list(got["checks"]) == ["stage 1 image-level", "stage 1 dense", "stage 2 LEAD, chunked loss", "regress.py",
                                   "match.py two images", "match.py --benchmark", "throughput"]
    assert all(c["passed"] for c in got["checks"].values()) and "resumed weights differ by 0" in out
    for stage, epochs in ((1, 200), (2, 20)):
        t = got["throughput"][str(stage)]
        assert t["ours"]["rate"] > 0 and t["baseline"]["rate"] > 0
        assert t["paper_hours"]["ours"] == pytest.approx(epochs * 162_770 / t["ours"]["rate"] / 3600)
    assert "the paper's 200 + 20 epochs" in out and "7 of 7 checks passed" in out
    assert not (tmp_path / "outer_cache").exists()                  # its data went to a private cache


class FakeStage:
    """A stage whose resume lands `drift` away from the straight run (0: exact); a straight run repeated lands
    `noise` away (non-deterministic kernels)."""

    def __init__(self, drift: float, noise: float, loss: float = 1.0):
        self.drift, self.noise, self.loss, self.straight_runs = drift, noise, loss, 0

    def get_args_parser(self):
        p = argparse.ArgumentParser()
        p.add_argument("--output_dir")
        p.add_argument("--exit_after_steps")
        p.add_argument("--resume", action="store_true")
        return p

    def main(self, args):
        from pathlib import Path
        out = Path(args.output_dir)
        (out / "final").mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("\n".join(json.dumps({"loss": self.loss}) for _ in range(4)))
        (out / "args.json").write_text(json.dumps({"precision": "bf16"}))
        if args.exit_after_steps:
            return
        shift = self.drift if args.resume else (self.noise if self.straight_runs else 0.0)
        self.straight_runs += not args.resume
        save_file({"w": torch.full((3,), 1.0 + shift)}, out / "final" / "model.safetensors")


@pytest.mark.parametrize("drift, noise, loss, passed", [(0.0, 0.0, 1.0, True), (0.5, 0.0, 1.0, False),
                                                        (0.01, 0.01, 1.0, True), (0.5, 0.01, 1.0, False),
                                                        (0.0, 0.0, float("nan"), False)])
def test_resume_verdict(tmp_path, drift, noise, loss, passed):
    stage = FakeStage(drift, noise, loss)
    ok, detail = gpu_check.train_and_resume(stage, lambda out: ["--output_dir", str(out)], tmp_path)
    assert ok == passed and "bf16" in detail
    assert ("two straight runs" in detail) == (drift > 0 and loss == loss)


def test_a_check_that_raises_is_a_fail_and_the_next_one_runs(capsys):
    checks = gpu_check.Checks()
    checks.run("broken", lambda: 1 / 0)
    checks.run("fine", lambda: (True, "ok"))
    assert checks.results["broken"]["passed"] is False and "ZeroDivisionError" in checks.results["broken"]["detail"]
    assert checks.results["fine"]["passed"] and "FAIL  broken" in capsys.readouterr().out


def test_without_cuda_it_says_how_to_dry_run(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "--dry_run" in capsys.readouterr().err


def test_each_check_starts_from_a_fresh_accelerate_state():
    """The stages run in bf16 on a GPU (auto), regress.py then in fp32: one Accelerate state per process would
    refuse the second precision, as it does without the reset."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from common.training import make_accelerator
    AcceleratorState._reset_state(True)
    Accelerator(mixed_precision="bf16")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(mixed_precision="no")
    checks = gpu_check.Checks()
    checks.run("fp32 after bf16", lambda: (make_accelerator("no", 1)[0].mixed_precision == "no", "ok"))
    assert checks.results["fp32 after bf16"]["passed"], checks.results
    AcceleratorState._reset_state(True)


def test_dry_run_stays_on_the_cpu_where_a_gpu_is_seen(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    from common.precision import device_type
    assert device_type() == "cuda"
    with gpu_check.cpu_only(True):
        assert not torch.cuda.is_available() and device_type() == "cpu"
    assert torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ
