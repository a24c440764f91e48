"""`bash demo.sh --quick` end to end, as a user runs it: every stage through `accelerate launch`, report.md with every
table and only finite figures; run again, it reuses the data and the finished stages, resumes an interrupted one,
or starts it again when it has no checkpoint. (The quality claims are checked on the full demo, whose report the
README quotes, not at toy size.)"""
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

SECTIONS = ("## Claims", "## Matching", "## Landmark regression", "## Few labels", "## A matching picture",
            "## Wall time")
ROWS = ("| lead-64 |", "| hypercolumn-960 |", "| nmf-64 |", "| random-resnet18 |", "| points left in place |",
        "| mean shape (no features) |")
STAGES = ("data", "byol", "distill", "regress_aligned", "regress_unaligned", "fewshot", "match")


def demo(tmp_path):
    env = {**os.environ, "DEMO_OUT": str(tmp_path / "demo"), "LEAD_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(["bash", "demo.sh", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res.stdout + res.stderr


def losses(folder):
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.slow
def test_quick_demo_writes_the_report_then_reuses_and_resumes(tmp_path):
    demo(tmp_path)
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert all(s in report for s in SECTIONS), [s for s in SECTIONS if s not in report]
    assert all(r in report for r in ROWS), [r for r in ROWS if r not in report]
    assert not re.search(r"\b(nan|inf)\b", report, re.I)
    assert len(re.findall(r"\d+\.\d+", report)) > 60
    assert all(f"| {s} |" in report for s in STAGES)
    for picture in ("samples.png", "match.png", "fewshot/fewshot.png", "regress_aligned/predictions.png"):
        assert (out / picture).stat().st_size > 1000, picture
    claims = report.split("## Claims")[1].split("##")[0]
    assert claims.count("- holds: ") + claims.count("- DOES NOT HOLD: ") == 6
    # stage 2 killed between its checkpoints (step 2 kept, step 4 and final/ lost): the rerun resumes it and ends
    # with the same weights; every other stage and the data are reused
    caches = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("meta.json")}
    weights = load_file(out / "distill" / "final" / "model.safetensors")
    last = losses(out / "distill")[-1]
    shutil.rmtree(out / "distill" / "final")
    shutil.rmtree(out / "distill" / "checkpoints" / "step_4")
    log = demo(tmp_path)
    assert "== distill --resume" in log
    assert losses(out / "distill")[-1] == last
    again = load_file(out / "distill" / "final" / "model.safetensors")
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
    for stage in ("byol", "regress_aligned", "regress_unaligned", "fewshot", "match"):
        assert f"== {stage}: done" in log, stage
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("meta.json")} == caches and caches
    # killed before its first checkpoint: started again
    shutil.rmtree(out / "distill" / "final")
    shutil.rmtree(out / "distill" / "checkpoints")
    assert "== distill --overwrite" in demo(tmp_path)
    assert (out / "distill" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_quick_real_demo_on_the_formats_as_shipped(tmp_path):
    """`bash demo.sh --real DIR --quick` on small copies of MTFL, an image folder and AFW in their exact layouts
    (textured images): every stage runs, report.md has the goals, both matching tables and the paper's AFLW_M row."""
    import numpy as np
    from PIL import Image

    from tests.format_fixtures import write_mtfl, write_pts_folder
    data = tmp_path / "data"
    write_mtfl(data / "mtfl", n_train=60)
    write_pts_folder(data / "afw", count=10)
    write_pts_folder(data / "helen_train", count=4, photo="1004")         # a validation photo (tests/test_real_formats)
    rng = np.random.default_rng(0)
    for path in [p for sub in ("mtfl", "afw", "helen_train") for ext in ("jpg", "png") for p in (data / sub).rglob(
            f"*.{ext}")]:
        size = Image.open(path).size
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    (data / "celeba_half").mkdir()
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (109, 89, 3), dtype=np.uint8)).save(data / "celeba_half" / f"{i:06d}.jpg")
    env = {**os.environ, "DEMO_OUT": str(tmp_path / "demo"), "LEAD_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(["bash", "demo.sh", "--real", str(data), "--quick"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    for section in ("## Goals", "## Landmark regression (MTFL -> AFLW_M test", "## Landmark regression (68 points",
                    "## Few labels (MTFL -> AFLW_M test)", "## Matching by DVE's protocol",
                    "AFLW test faces (5 points)", "AFW (68 points)", "## A matching picture", "## Wall time"):
        assert section in report, section
    assert "LEAD 6.23, ContrastLandmark 6.99, DVE 7.53" in report and "| random-resnet18 |" in report
    assert "LEAD 4.66, ContrastLandmark 5.22, DVE 4.65" in report and "| supervised-lead-64 |" in report
    assert "LEAD-64 0.51 / 2.6" in report
    config = json.loads((out / "regress68" / "final" / "config.json").read_text())
    assert config["num_points"] == 68 and config["stage"] == "regressor" and config["dataset"] == "ptsfolder"
    assert "Trained: stage 1 resnet18, 4 steps of 16 images at 32 px (fp32); stage 2 4 steps of 16 images" in report
    goals = report.split("## Goals")[1].split("##")[0]
    assert goals.count("- holds: ") + goals.count("- DOES NOT HOLD: ") == 6
    assert not re.search(r"\b(nan|inf)\b", report, re.I) and (out / "match.png").stat().st_size > 1000
    args = json.loads((out / "byol" / "args.json").read_text())
    assert args["dataset"] == "mtfl" and args["add_data"] == [f"imagefolder:{data / 'celeba_half'}"]
    distill = json.loads((out / "distill" / "args.json").read_text())      # the real recipe's sharper teacher
    assert (distill["teacher_tau"], distill["tau"], distill["objective"]) == (0.02, 0.05, "lead+dve")
    bad = subprocess.run(["bash", "demo.sh", "--real", str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "nowhere/mtfl/training.txt not found" in bad.stderr
