"""The ablation study (LEAD Tables 1, 3, 4, 5, 6, Fig. 9, and the parts of Fig. 5-6 / supplement Fig. 14) on the
synthetic benchmark, with the four scripts' own flags: which parts of LEAD matter.

    python experiments/ablations.py                    # CPU size (about an hour on 2 cores): runs/ablations/
    python experiments/ablations.py --scale paper      # the scripts' defaults (resnet50, 96 px, full schedules)
    python experiments/ablations.py --scale quick      # every kind of cell, tiny (what the tests run)
    python experiments/ablations.py --publish          # also copy ABLATIONS.md and its figures to experiments/results/

The grid: stage 1 is BYOL (the paper's) or MoCo (ContrastLandmark's); stage 2 is LEAD or ContrastLandmark's dense
loss (`--objective cl`) on the same decoder, frozen encoder as in the paper, at 64 / 128 / 256 channels; LEAD-64
with a projection head of 256 (default), 64 or none; and CL-64 on ContrastLandmark's own projector (`--decoder
linear`, a 1x1 convolution of the hypercolumn). Each trained model is evaluated by the matching benchmark
(`match.py --benchmark`, test split) and the aligned regression (`regress.py`, all labels), next to the stage-1
hypercolumns and their PCA / NMF (64, and NMF 256); LEAD-64 and both CL-64 (MoCo + CL, ContrastLandmark's method)
also by the few-shot curve and by regression on unaligned faces trained at zoom-out 1-1.5 and tested at 1-1.5 and
1.5-2.
Part discovery runs on the stage-1 models.

Every run is a folder of OUTPUT: a finished one is kept, an interrupted one continued with --resume, so the command
can simply be run again. The tables, with the paper's published figures beside ours, go to OUTPUT/ABLATIONS.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import byol_pretrain  # noqa: E402
import dense_distill  # noqa: E402
import match  # noqa: E402
import parts  # noqa: E402
import regress  # noqa: E402
from ablation_report import CLS, LEAD, path_of, publish, write_report  # noqa: E402
from common.cli import run_cli  # noqa: E402

logger = logging.getLogger("lead")
RESULTS = Path(__file__).resolve().parent / "results"

# the flags that make a scale; everything else is the scripts' defaults (the paper's)
SCALES = {
    "cpu": {
        "data": [],
        "s1": ["--arch", "resnet18", "--crop_size", "64", "--batch_size", "64", "--max_steps", "100",
               "--optimizer", "adam", "--lr", "4e-3", "--proj_hidden", "512", "--warmup_epochs", "0.1",
               "--checkpoint_every", "50"],
        "s2": ["--crop_size", "64", "--batch_size", "32", "--max_steps", "150", "--lr", "1e-2",
               "--warmup_epochs", "0.1", "--checkpoint_every", "50"],
        "reg": ["--resize", "90", "--crop", "64", "--epochs", "3", "--min_steps", "100", "--eval_every", "50",
                "--fit_rows", "2048"],
        "few": ["--num_train", "1", "5", "10", "20", "50", "100", "--seeds", "2"],
        "match": ["--pairs", "300", "--size", "64", "--fit_rows", "2048"],
        "parts": ["--images", "100", "--size", "64"],
    },
    "paper": {"data": [], "s1": [], "s2": [], "reg": [], "few": ["--num_train", "1", "5", "10", "20", "50", "100",
                                                                  "--seeds", "3"],
              "match": ["--pairs", "500"], "parts": ["--images", "200", "--size", "96"]},
    "quick": {
        "data": ["--image_size", "64", "--num_images", "48", "--data_workers", "1"],
        "s1": ["--arch", "resnet18", "--crop_size", "32", "--batch_size", "8", "--max_steps", "2", "--optimizer",
               "adam", "--lr", "3.2e-2", "--proj_hidden", "32", "--proj_dim", "16", "--probe_pairs", "0",
               "--queue_size", "32"],
        "s2": ["--crop_size", "32", "--batch_size", "8", "--max_steps", "2", "--fpn_width", "64", "--probe_pairs",
               "0", "--warmup_epochs", "0"],
        "reg": ["--resize", "44", "--crop", "32", "--epochs", "1", "--min_steps", "4", "--eval_every", "2",
                "--intermediate", "2", "--fit_rows", "256"],
        "few": ["--num_train", "2", "4", "--seeds", "1"],
        "match": ["--pairs", "4", "--size", "32", "--fit_rows", "256"],
        "parts": ["--images", "8", "--size", "32", "--k", "3", "--show", "2", "--fit_rows", "500"],
    },
}
STAGE1 = {"byol": [], "moco": ["--objective", "moco"]}


def dims_of(scale: str) -> list[int]:
    return [64] if scale == "quick" else [64, 128, 256]


def stage2_cells(scale: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (stage-1 run, stage-2 flags). Table 6's grid, Table 4's dimensions, Table 3's heads."""
    cells = {}
    for s1 in STAGE1:
        for obj in ("lead", "cl"):
            for dim in dims_of(scale):
                cells[f"{s1}-{obj}{dim}"] = (s1, ["--objective", obj, "--feature_dim", str(dim)])
    for head in (64, 0):
        cells[f"byol-lead64-head{head}"] = ("byol", ["--feature_dim", "64", "--head_dim", str(head)])
    # ContrastLandmark's own projector: its loss learns position on an FPN decoder, which sees where it is
    cells["moco-cl64-linear"] = ("moco", ["--objective", "cl", "--feature_dim", "64", "--decoder", "linear"])
    return cells


def folder_state(module, out: Path, done: str) -> list[str] | None:
    """None when OUT/done exists (finished: skip); else the flag that continues or replaces what is there (match.py
    has neither: it only writes its JSON at the end)."""
    if (out / done).exists():
        return None
    if any(out.glob("checkpoints/step_*")) or any(out.glob("runs/*.json")):
        return ["--resume"]
    replace = "--overwrite" in module.get_args_parser()._option_string_actions
    return ["--overwrite"] if replace and out.exists() and any(out.iterdir()) else []


def step(module, out: Path, done: str, argv: list[str], times: dict) -> None:
    """Runs module.main on argv (+ --output_dir), unless finished; records its wall time."""
    how = folder_state(module, out, done)
    if how is None:
        logger.info("== %s: done, kept", out.name)
        return
    logger.info("== %s %s", out.name, " ".join(how))
    t0 = time.perf_counter()
    module.main(module.get_args_parser().parse_args(argv + ["--output_dir", str(out)] + how))
    times[out.name] = round(time.perf_counter() - t0)


def train_all(args, flags: dict, out: Path, times: dict) -> dict[str, Path]:
    models = {}
    for s1, extra in STAGE1.items():
        models[s1] = out / f"s1-{s1}"
        step(byol_pretrain, models[s1], "final/model.safetensors", flags["data"] + flags["s1"] + extra, times)
    for name, (s1, extra) in stage2_cells(args.scale).items():
        models[name] = out / f"s2-{name}"
        step(dense_distill, models[name], "final/model.safetensors",
             flags["data"] + flags["s2"] + ["--init_from", str(models[s1] / "final")] + extra, times)
    return models


def evaluate_all(args, flags: dict, out: Path, models: dict, times: dict) -> None:
    byol = str(models["byol"] / "final")
    compact = [str(p / "final") for n, p in models.items() if n not in STAGE1]
    sources = compact + [byol, str(models["moco"] / "final"), "pca:64", "nmf:64", "nmf:256", f"random-{arch(flags)}"]
    common = ["--hypercolumn_from", byol]
    step(match, out / "match", "matching.json", flags["data"] + flags["match"] + ["--benchmark", "--model", *sources]
         + common, times)
    step(regress, out / "regress", "results.json", flags["data"] + flags["reg"] + ["--features_from", *sources]
         + common, times)
    pair = [path_of(out, run) for _, run in (LEAD, *CLS)]                     # LEAD vs. ContrastLandmark
    step(regress, out / "fewshot", "results.json", flags["data"] + flags["reg"] + flags["few"]
         + ["--features_from", *pair], times)
    for name, zoom in (("seen", "1,1.5"), ("unseen", "1.5,2")):
        step(regress, out / f"scale_{name}", "results.json", flags["data"] + flags["reg"]
             + ["--variant", "unaligned", "--zoom_out", "1,1.5", "--test_zoom_out", zoom, "--features_from", *pair],
             times)
    step(parts, out / "parts", "parts.json", flags["data"] + flags["parts"]
         + ["--model", byol, str(models["moco"] / "final"), f"random-{arch(flags)}"], times)


def arch(flags: dict) -> str:
    s1 = flags["s1"]
    return s1[s1.index("--arch") + 1] if "--arch" in s1 else "resnet50"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("The ablation study")
    parser.add_argument("--scale", default="cpu", choices=list(SCALES), help="cpu (about an hour on 2 cores), "
                        "paper (the scripts' defaults, for GPUs) or quick (tiny, the tests)")
    parser.add_argument("--output_dir", default=None, help="default runs/ablations (runs/ablations_SCALE)")
    parser.add_argument("--publish", action="store_true",
                        help="copy ABLATIONS.md and its figures to experiments/results/ (replacing them; the "
                        "hand-written '## Reading' section of ABLATIONS.md there is kept)")
    return parser


def main(args) -> Path:
    out = Path(args.output_dir or ("runs/ablations" if args.scale == "cpu" else f"runs/ablations_{args.scale}"))
    out.mkdir(parents=True, exist_ok=True)
    flags = SCALES[args.scale]
    times_file = out / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    try:
        models = train_all(args, flags, out, times)
        evaluate_all(args, flags, out, models, times)
    finally:
        times_file.write_text(json.dumps(times, indent=1))
    report = write_report(out, args.scale, times, dims_of(args.scale))
    if args.publish:
        publish(report, RESULTS)
        for png in [*(out / "parts").glob("*.png"), out / "fewshot" / "fewshot.png", out / "scale.png"]:
            if png.exists():
                shutil.copy(png, RESULTS / png.name)
    logger.info("report: %s", report)
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser())
