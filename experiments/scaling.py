"""The scaling study of issue 30, from experiments/scaling.sh's runs: the training compute of stages 1 + 2 against
the validation metrics of LEAD-64 (stage 2) and of the stage-1 hypercolumn it is distilled from, a trend fitted
on the runs of one network and input, and what that trend says at the paper's compute.

    .venv/bin/python experiments/scaling.py runs/scaling/resnet18_64_x* --others runs/scaling/resnet18_96_x0.0625 \\
        --markdown experiments/results/scaling.md --plot experiments/results/scaling.png

Compute is model FLOPs (torch.utils.flop_counter, as benchmarks/throughput.py counts them) of one step of each
stage on the run's own flags, batch and views, times its steps; wall time is what scaling.sh logged on this
machine. The paper's compute is the same count for its settings run by our scripts: stage 1 image-level BYOL
(byol_pretrain.py's defaults) with a ResNet-50 on 96 px views for 200 epochs, stage 2 (dense_distill.py's
defaults) for 20 epochs, each epoch CelebA's 162,770 training images; counted at batch 16 and scaled to the
images seen. The trend is a power law, least squares of log10 of each metric on log10(FLOPs) (errors stay
positive, and fall by a constant factor per decade); the interval is the 95 % confidence interval of that line
(Student's t with n - 2 degrees of freedom), which says nothing of whether the line holds beyond the runs' range
(a floor the error cannot go below, which a few runs cannot locate, would bend it).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402

# flags that say where data and outputs are or how long to run: not what a step computes
NOT_COMPUTE = {"--dataset", "--data_dir", "--add_data", "--image_size", "--output_dir", "--init_from", "--max_steps",
               "--checkpoint_every", "--resume", "--overwrite", "--batch_size", "--probe_pairs", "--num_images"}
CELEBA_TRAIN = 162_770
METRICS = (("LEAD-64 same", "distill", "same_iod"), ("LEAD-64 different", "distill", "diff_iod"),
           ("LEAD-64 regression", "distill", "regress"), ("hypercolumn same", "byol", "same_iod"),
           ("hypercolumn different", "byol", "diff_iod"))


def compute_flags(argv: list[str]) -> list[str]:
    """A script's command line without NOT_COMPUTE's flags and their values."""
    kept, keep = [], True
    for a in argv:
        if a.startswith("--"):
            keep = a not in NOT_COMPUTE
        if keep:
            kept.append(a)
    return kept


def flops_per_image(stage: int, arch: str, size: int, flags: list[str], batch: int) -> float:
    """Model FLOPs of one training step of `stage` on `flags` at `batch`, per image of the batch."""
    b = throughput.get_args(["--stage", str(stage), "--arch", arch, "--size", str(size), "--batch", str(batch),
                             "--images", str(batch), "--mixed_precision", "no"])
    b.flags = flags
    b.precision = "no"
    cache = throughput.render_uint8(throughput.sample_params(
        throughput.SyntheticSpec("pretrain", batch, size=b.image_size)), b.image_size)
    teacher = throughput.ResNetEncoder(arch, input_size=size) if stage == 2 else None
    step, _ = throughput.ours(b, cache, teacher)
    return throughput.count_flops(step, 0) / batch


def run_compute(run: Path) -> dict:
    """FLOPs and wall seconds of a scaling.sh run's stages 1 + 2, and its shape."""
    a1 = json.loads((run / "byol" / "args.json").read_text())
    a2 = json.loads((run / "distill" / "args.json").read_text())
    f1 = flops_per_image(1, a1["arch"], a1["crop_size"], compute_flags(a1["argv"][1:]), a1["batch_size"])
    f2 = flops_per_image(2, a1["arch"], a2["crop_size"], compute_flags(a2["argv"][1:]), a2["batch_size"])
    times = dict(line.split("\t") for line in (run / "times.tsv").read_text().split("\n") if line)
    return {"arch": a1["arch"], "size": a1["crop_size"], "steps": (a1["max_steps"], a2["max_steps"]),
            "flops": f1 * a1["batch_size"] * a1["max_steps"] + f2 * a2["batch_size"] * a2["max_steps"],
            "wall_s": float(times["byol"]) + float(times["distill"])}


def paper_compute() -> float:
    f1 = flops_per_image(1, "resnet50", 96, [], 16)
    f2 = flops_per_image(2, "resnet50", 96, [], 16)
    return (200 * f1 + 20 * f2) * CELEBA_TRAIN


def run_metrics(run: Path) -> dict:
    """Validation % IOD: matching (same / different identity) and regression, for LEAD-64 and the hypercolumn."""
    matching = json.loads((run / "match_val" / "matching.json").read_text())["models"]
    summary = json.loads((run / "regress_val" / "results.json").read_text())["summary"]
    out = {}
    for _, source, key in METRICS:
        folder = str(run / source / "final")
        if key == "regress":
            out[(source, key)] = next(r["mean"] for r in summary if r["features_from"] == folder)
        else:
            out[(source, key)] = next(m[key] for m in matching if m["model"] == folder)
    return out


def fit(x: np.ndarray, y: np.ndarray, at: float) -> dict:
    """y = a + b x by least squares; the line at `at` with its 95 % confidence interval (nan below 3 points)."""
    b, a = np.polyfit(x, y, 1)
    n, pred = len(x), a + b * at
    if n < 3:
        return {"slope": b, "at": pred, "half_width": math.nan}
    s = math.sqrt(((y - (a + b * x)) ** 2).sum() / (n - 2))
    se = s * math.sqrt(1 / n + (at - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    return {"slope": b, "at": pred, "half_width": stats.t.ppf(0.975, n - 2) * se}


def report(rows: list[dict], main: list[dict], paper: float) -> list[str]:
    lines = ["| run | network, views | steps (stage 1, 2) | FLOPs | wall (min) | " +
             " | ".join(m for m, _, _ in METRICS) + " |", "| --- " * (5 + len(METRICS)) + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['arch']}, {r['size']} px | {r['steps'][0]}, {r['steps'][1]} | "
                     f"{r['flops']:.3g} | {r['wall_s'] / 60:.1f} | " +
                     " | ".join(f"{r['metrics'][(s, k)]:.2f}" for _, s, k in METRICS) + " |")
    x = np.log10([r["flops"] for r in main])
    lines += ["", f"Trend on the {len(main)} runs of {main[0]['arch']}, {main[0]['size']} px: a power law, "
              f"log10(% IOD) = a + b log10(FLOPs), fitted by least squares; the paper's compute, {paper:.3g} FLOPs, is "
              f"{math.log10(paper) - x.max():.1f} decades beyond the largest run.", "",
              "| metric | factor per 10x compute | at the paper's compute | 95 % interval of the line |",
              "| --- | --- | --- | --- |"]
    for name, s, k in METRICS:
        f = fit(x, np.log10([r["metrics"][(s, k)] for r in main]), math.log10(paper))
        lo, hi = 10 ** (f["at"] - f["half_width"]), 10 ** (f["at"] + f["half_width"])
        lines.append(f"| {name} | x{10 ** f['slope']:.2f} | {10 ** f['at']:.2g} | {lo:.2g} to {hi:.2g} |")
    return lines


def plot(rows: list[dict], main: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ("same_iod", "diff_iod", "regress"),
                              ("same identity", "different identity", "regression")):
        for source, label, colour in (("distill", "LEAD-64", "C0"), ("byol", "hypercolumn", "C1")):
            if (source, key) not in main[0]["metrics"]:
                continue
            ax.plot([r["flops"] for r in main], [r["metrics"][(source, key)] for r in main], "o-", color=colour,
                    label=label)
            others = [r for r in rows if r not in main]
            ax.plot([r["flops"] for r in others], [r["metrics"][(source, key)] for r in others], "s", color=colour,
                    mfc="none", label=f"{label}, other shape" if others else None)
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs (stages 1 + 2)", ylabel="% IOD, validation",
               title=title)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())    # decades only: the others overlap
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="scaling.sh runs of one network and input: the trend")
    parser.add_argument("--others", nargs="*", type=Path, default=[], help="runs of other shapes: table and plot")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables there too")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot there (PNG)")
    args = parser.parse_args(argv)
    rows = []
    for run in [*args.runs, *args.others]:
        rows.append({"name": run.name, **run_compute(run), "metrics": run_metrics(run)})
    main_rows = sorted(rows[:len(args.runs)], key=lambda r: r["flops"])
    lines = report(rows, main_rows, paper_compute())
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.plot:
        plot(rows, main_rows, args.plot)
    return lines


if __name__ == "__main__":
    main()
