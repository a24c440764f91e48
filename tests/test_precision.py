"""--mixed_precision auto: the probe's decision forced either way, the real probe, resume, and what a run records."""
import json
import math

import pytest
import torch

import byol_pretrain
from common import precision
from common.errors import UserError
from tests.test_byol_pretrain import TINY


@pytest.fixture
def probe(monkeypatch):
    """The CPU probe with chosen timings (seconds of fp32, seconds of bf16), its cache emptied around the test."""
    monkeypatch.delenv("LEAD_CPU_BF16", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    precision.cpu_bf16_speedup.cache_clear()

    def set_times(fp32, bf16):
        precision.cpu_bf16_speedup.cache_clear()
        monkeypatch.setattr(precision, "_block_seconds", lambda bf, repeats: bf16 if bf else fp32)
    yield set_times
    precision.cpu_bf16_speedup.cache_clear()


# bf16 where it runs at least 1.2x as fast as fp32 (the reason's "bf16 from 1.2x"): ratios either side, and on it
@pytest.mark.parametrize("fp32, bf16, chosen", [(2.0, 1.0, "bf16"), (1.0, 0.8, "bf16"), (1.2, 1.0, "bf16"),
                                                (1.19, 1.0, "no"), (1.1, 1.0, "no"), (1.0, 1.0, "no"),
                                                (1.0, 130.0, "no")])
def test_cpu_probe_decides_by_measured_speed(probe, fp32, bf16, chosen):
    probe(fp32, bf16)
    got, reason = precision.run_precision("auto", "cpu")
    assert got == chosen and f"{fp32 / bf16:.2f}x" in reason and "bf16 from 1.2x" in reason


def test_explicit_precision_wins_over_the_probe(probe):
    probe(1.0, 130.0)
    assert precision.run_precision("bf16", "cpu") == ("bf16", "--mixed_precision")
    assert precision.run_precision("fp16", "cuda")[0] == "fp16"


def test_a_precision_given_to_accelerate_launch_is_kept(probe, monkeypatch):
    probe(1.0, 130.0)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert precision.run_precision("auto", "cpu")[0] == "bf16"
    assert precision.run_precision("no", "cpu")[0] == "no"              # the script's own flag still wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")              # the launcher's default: auto decides
    assert precision.run_precision("auto", "cpu")[0] == "no"


def test_env_answers_without_measuring(monkeypatch):
    def fail(*a):
        raise AssertionError("measured")
    monkeypatch.setattr(precision, "_block_seconds", fail)
    precision.cpu_bf16_speedup.cache_clear()
    for value, chosen in (("1", "bf16"), ("0", "no")):
        monkeypatch.setenv("LEAD_CPU_BF16", value)
        assert precision.run_precision("auto", "cpu") == (chosen, f"LEAD_CPU_BF16={value}")


def test_cuda_takes_bf16_where_computed_natively(monkeypatch):
    """An emulated bf16 (a V100, a T4: torch's is_bf16_supported() says True by default) is not taken."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "GPU X")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for native, chosen in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native:
                            n or including_emulation)
        got, reason = precision.run_precision("auto", "cuda")
        assert got == chosen and "GPU X" in reason


def test_several_cpu_processes_do_not_probe(probe, monkeypatch):
    probe(2.0, 1.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert precision.run_precision("auto", "cpu")[0] == "no"
    monkeypatch.setenv("LEAD_CPU_BF16", "1")
    assert precision.run_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setenv("LEAD_CPU_BF16", "yes")
    with pytest.raises(UserError, match="LEAD_CPU_BF16=yes: 1 .bf16. or 0"):
        precision.run_precision("auto", "cpu")


def test_the_real_probe_measures_this_cpu(probe, monkeypatch):
    """The measurement itself (the choice from a ratio is tested above, on chosen timings): each precision timed
    once per process, the ratio fp32 time / bf16 time in the reason, and a bf16 slower than fp32 never taken."""
    real, times = precision._block_seconds, {}

    def timed(bf16, repeats):
        times[bf16] = times.get(bf16, []) + [real(bf16, repeats)]
        return times[bf16][-1]
    monkeypatch.setattr(precision, "_block_seconds", timed)
    chosen, reason = precision.run_precision("auto", "cpu")
    assert precision.run_precision("auto", "cpu") == (chosen, reason)          # cached: not measured again
    assert sorted(times) == [False, True] and all(len(t) == 1 and 0 < t[0] < math.inf for t in times.values())
    speedup = times[False][0] / times[True][0]
    assert f"{speedup:.2f}x" in reason and chosen in ("bf16", "no")
    if speedup < 1:
        assert chosen == "no"


def test_resumed_run_keeps_its_precision(tmp_path, probe):
    probe(2.0, 1.0)                                              # auto would now say bf16
    (tmp_path / "args.json").write_text(json.dumps({"mixed_precision": "auto", "precision": "no"}))
    assert precision.run_precision("auto", "cpu", tmp_path)[0] == "no"
    assert precision.run_precision("no", "cpu", tmp_path)[0] == "no"
    with pytest.raises(UserError, match="--mixed_precision bf16: .* began in no"):
        precision.run_precision("bf16", "cpu", tmp_path)
    (tmp_path / "args.json").write_text(json.dumps({"mixed_precision": "bf16"}))   # a folder from before auto
    assert precision.run_precision("auto", "cpu", tmp_path)[0] == "bf16"


def test_a_run_records_what_auto_chose(cache_dir, tmp_path, probe):
    probe(1.0, 3.0)
    parser = byol_pretrain.get_args_parser()
    args = parser.parse_args(TINY + ["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--probe_pairs", "0",
                                     "--exit_after_steps", "1"])
    assert args.mixed_precision == "auto"
    byol_pretrain.main(args)
    saved = json.loads((tmp_path / "run" / "args.json").read_text())
    assert saved["mixed_precision"] == "auto" and saved["precision"] == "no" and "0.33x" in saved["precision_reason"]
    probe(3.0, 1.0)                                              # another machine's answer: the run keeps fp32
    args = parser.parse_args(TINY + ["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--probe_pairs", "0",
                                     "--resume"])
    byol_pretrain.main(args)
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "precision: fp32 (the CPU probe ran bf16 at 0.33x" in card and "kept on resume" in card
    with pytest.raises(UserError, match="began in no"):
        byol_pretrain.main(parser.parse_args(TINY + ["--output_dir", str(tmp_path / "run"), "--max_steps", "3",
                                                     "--resume", "--mixed_precision", "bf16"]))
