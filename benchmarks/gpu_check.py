"""The project on a GPU in one command: each stage for a few steps in bf16, checked, then the throughput table at
the paper's scale. Run it first on any new GPU machine; it prints PASS or FAIL per check, and exits 1 on a FAIL.

    python benchmarks/gpu_check.py                  # a CUDA machine: about 3-5 minutes on one H100 / H200
    python benchmarks/gpu_check.py --dry_run        # the same checks at toy sizes on the CPU (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --json gpu.json  # also keep every figure

The checks (stages called in-process through their main(args), on synthetic faces, --mixed_precision auto: bf16 on
a GPU that supports it):
  1. stage 1 image-level (`--objective byol`) and dense (`--objective pixel --dve_weight 4`), 2. stage 2 LEAD with
     the chunked loss (`--chunk`): the losses are finite, and a run stopped by --exit_after_steps and continued
     with --resume ends on the weights of the straight run. The checks run with deterministic kernels; where a
     kernel has none, two straight runs differ too, and resume passes when it differs no more than they do.
  3. regress.py on stage 2's features: a finite error;  4. match.py on two images with --device (auto) and --json,
     and its --benchmark on a few pairs.
Then benchmarks/throughput.py for stage 1 (resnet50, 96 px, batch 256) and stage 2 (the same): ours (auto
precision) against the usual pipeline, TFLOP/s and % of the measured peak, peak memory, and the projected time of
the paper's schedule (200 epochs of stage 1 + 20 of stage 2 on CelebA's 162,770 training images) on this device.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import byol_pretrain  # noqa: E402
import dense_distill  # noqa: E402
import match  # noqa: E402
import regress  # noqa: E402
import throughput  # noqa: E402
from common.cli import pick_device  # noqa: E402
from common.precision import precision_name  # noqa: E402

CELEBA_TRAIN = 162_770                     # CelebA's training split, the paper's pretraining set
PAPER_EPOCHS = (200, 20)                   # stage 1 (BYOL), stage 2 (LEAD)
SIZES = {   # the stages' checks and the throughput table, on a GPU and in the CPU dry run
    "gpu": {"arch": "resnet50", "image": 128, "crop": 96, "images": 512, "batch": 64, "steps": 6, "chunk": 128,
            "bench": ["--arch", "resnet50", "--size", "96", "--batch", "256", "--steps", "10", "--warmup", "3",
                      "--images", "1024"]},
    "dry": {"arch": "resnet18", "image": 32, "crop": 32, "images": 40, "batch": 8, "steps": 4, "chunk": 16,
            "bench": ["--arch", "resnet18", "--size", "32", "--batch", "4", "--steps", "1", "--warmup", "1",
                      "--images", "8", "--proj_hidden", "32", "--workers", "0", "--peak_tflops", "1"]},
}


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", help="toy sizes on the CPU: checks the check itself")
    parser.add_argument("--json", default=None, help="write the checks and the throughput figures here")
    parser.add_argument("--no_throughput", action="store_true", help="the checks only")
    return parser.parse_args(argv)


class Checks:
    """Results by name: (passed, detail), printed as they come."""

    def __init__(self):
        self.results = {}

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.results[name] = {"passed": bool(passed), "detail": detail}
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}", flush=True)

    def run(self, name: str, fn) -> None:
        """fn() -> (passed, detail); an exception is a FAIL with its message, and the next check still runs.
        Each check begins with a fresh Accelerate state: the state holds one precision per process, and the stages
        ask for theirs (auto: bf16) while regress.py asks for fp32."""
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(True)
        t0 = time.perf_counter()
        try:
            passed, detail = fn()
        except Exception as e:                      # noqa: BLE001: a check reports, it does not stop the others
            passed, detail = False, f"{type(e).__name__}: {e}"
        self.add(name, passed, f"{detail} ({time.perf_counter() - t0:.1f} s)")


def deterministic(on: bool) -> None:
    """Deterministic kernels for the resume checks (cuBLAS needs its workspace set before its first use)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = on, False
    torch.use_deterministic_algorithms(on, warn_only=True)


def stage_argv(size: dict, out: Path, extra: list[str]) -> list[str]:
    return ["--dataset", "synthetic", "--image_size", str(size["image"]), "--num_images", str(size["images"]),
              "--crop_size", str(size["crop"]), "--batch_size", str(size["batch"]), "--max_steps", str(size["steps"]),
              "--log_every", "1", "--checkpoint_every", "100", "--probe_pairs", "0", "--warmup_epochs", "0",
              "--output_dir", str(out), *extra]


def losses_of(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def weights_gap(a: Path, b: Path) -> float:
    """Largest absolute difference between two final/ folders' weights (inf if their tensors differ in kind)."""
    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    if x.keys() != y.keys():
        return math.inf
    return max(((x[k].double() - y[k].double()).abs().max().item() if x[k].numel() else 0.0) for k in x)


def train_and_resume(module, argv: list[str], out: Path) -> tuple[bool, str]:
    """A straight run, the same run stopped half way and resumed; finite losses and the same weights."""
    parser = module.get_args_parser()
    module.main(parser.parse_args(argv(out / "straight")))
    losses = losses_of(out / "straight")
    half = str(len(losses) // 2)
    module.main(parser.parse_args(argv(out / "split") + ["--exit_after_steps", half]))
    module.main(parser.parse_args(argv(out / "split") + ["--resume"]))
    precision = json.loads((out / "straight" / "args.json").read_text())["precision"]
    finite = all(math.isfinite(v) for v in losses)
    gap = weights_gap(out / "straight", out / "split")
    detail = (f"{precision_name(precision)}, losses {losses[0]:.3f} -> {losses[-1]:.3f}, "
              f"resumed weights differ by {gap:.2g}")
    if gap == 0 or not finite:
        return finite and gap == 0, detail
    module.main(parser.parse_args(argv(out / "again")))          # what non-deterministic kernels alone give
    noise = weights_gap(out / "straight", out / "again")
    return gap <= 2 * noise, detail + f" (two straight runs: {noise:.2g})"


def check_stages(checks: Checks, size: dict, tmp: Path) -> None:
    arch = ["--arch", size["arch"], "--optimizer", "adam", "--lr", f"{1e-3 * 256 / size['batch']:g}"]   # 1e-3 per step
    if size["arch"] == "resnet18":
        arch += ["--proj_hidden", "32", "--proj_dim", "16"]
    for name, objective in (("stage 1 image-level", ["--objective", "byol"]),
                            ("stage 1 dense", ["--objective", "pixel", "--dve_weight", "4"])):
        folder = tmp / name.replace(" ", "_")
        checks.run(name, lambda f=folder, o=objective: train_and_resume(
            byol_pretrain, lambda out: stage_argv(size, out, arch + o), f))
    teacher = tmp / "stage_1_dense" / "straight" / "final"
    lead = ["--init_from", str(teacher), "--objective", "lead", "--chunk", str(size["chunk"]), "--lr", "1e-2"]
    checks.run("stage 2 LEAD, chunked loss", lambda: train_and_resume(
        dense_distill, lambda out: stage_argv(size, out, lead), tmp / "stage2"))


def check_downstream(checks: Checks, size: dict, tmp: Path) -> None:
    student, teacher = tmp / "stage2" / "straight" / "final", tmp / "stage_1_dense" / "straight" / "final"
    data = ["--dataset", "synthetic", "--image_size", str(size["image"]), "--num_images", str(size["images"])]

    def regression():
        args = regress.get_args_parser().parse_args(
            data + ["--features_from", str(student), "--resize", str(size["crop"] * 5 // 4),
                    "--crop", str(size["crop"]), "--epochs", "1", "--min_steps", "10", "--eval_every", "5",
                    "--output_dir", str(tmp / "regress")])
        regress.main(args)
        row = json.loads((tmp / "regress" / "results.json").read_text())["summary"][0]
        return math.isfinite(row["mean"]), f"test error {row['mean']:.2f} % IOD (mean shape {row['mean_shape']:.2f})"

    def two_images():
        out = tmp / "match.json"
        args = match.get_args_parser().parse_args(data + ["--model", str(student), "--ref", "test:0", "--query",
                                                          "test:1", "--json", str(out), "--device", "auto"])
        match.main(args)
        got = json.loads(out.read_text())
        points = torch.tensor(got["query_points"])
        return bool(torch.isfinite(points).all()) and len(got["scores"]) == len(points), \
            f"{len(points)} points on {pick_device('auto')}"

    def benchmark():
        args = match.get_args_parser().parse_args(data + ["--benchmark", "--model", str(student), str(teacher),
                                                          "--pairs", "8", "--output_dir", str(tmp / "matching")])
        table = match.main(args)
        errors = [m["same_iod"] for m in table["models"]] + [m["diff_iod"] for m in table["models"]]
        return all(math.isfinite(e) for e in errors), "same / different identity % IOD " + " / ".join(
            f"{e:.1f}" for e in errors)

    checks.run("regress.py", regression)
    checks.run("match.py two images", two_images)
    checks.run("match.py --benchmark", benchmark)


def throughput_table(size: dict) -> dict:
    """Both stages through benchmarks/throughput.py, with the projected time of the paper's schedule."""
    from accelerate.state import AcceleratorState
    table = {}
    for stage in (1, 2):
        AcceleratorState._reset_state(True)
        print(f"\n-- throughput, stage {stage}", flush=True)
        table[stage] = throughput.measure(throughput.get_args(["--stage", str(stage), *size["bench"], "--baseline"]))
    print("\n| stage | ours /s | baseline /s | speed-up | TFLOP/s (% of peak) | peak memory GiB | paper schedule, "
          "ours / baseline h |\n| --- | --- | --- | --- | --- | --- | --- |")
    for stage, epochs in zip((1, 2), PAPER_EPOCHS):
        ours, base = table[stage]["ours"], table[stage]["baseline"]
        hours = [epochs * CELEBA_TRAIN / f["rate"] / 3600 for f in (ours, base)]
        table[stage]["paper_hours"] = {"ours": hours[0], "baseline": hours[1], "epochs": epochs}
        print(f"| {stage} ({table[stage]['precision']}) | {ours['rate']:.1f} | {base['rate']:.1f} | "
              f"{ours['rate'] / base['rate']:.2f}x | {ours['tflops']:.3g} ({100 * ours['peak_share']:.1f} %) | "
              f"{ours['memory_gib']:.2f} | {hours[0]:.2f} / {hours[1]:.2f} ({epochs} epochs) |")
    total = [sum(table[s]["paper_hours"][k] for s in (1, 2)) for k in ("ours", "baseline")]
    print(f"\nthe paper's 200 + 20 epochs on {CELEBA_TRAIN:,} images: {total[0]:.1f} h ours, {total[1]:.1f} h the "
          "usual pipeline, on this one device")
    return table


@contextlib.contextmanager
def cpu_only(on: bool):
    """The dry run stays on the CPU on a machine with a GPU too: torch and Accelerate are told there is none."""
    if not on:
        yield
        return
    available, use_cpu = torch.cuda.is_available, os.environ.get("ACCELERATE_USE_CPU")
    torch.cuda.is_available, os.environ["ACCELERATE_USE_CPU"] = (lambda: False), "true"
    try:
        yield
    finally:
        torch.cuda.is_available = available
        if use_cpu is None:
            del os.environ["ACCELERATE_USE_CPU"]
        else:
            os.environ["ACCELERATE_USE_CPU"] = use_cpu


@contextlib.contextmanager
def private_cache(folder: Path):
    """The checks' synthetic data in `folder`, never in the user's cache (LEAD_CACHE restored after)."""
    before = os.environ.get("LEAD_CACHE")
    os.environ["LEAD_CACHE"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["LEAD_CACHE"]
        else:
            os.environ["LEAD_CACHE"] = before


def main(argv=None) -> int:
    args = get_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"error: no CUDA device (torch {torch.__version__}); run with --dry_run to check the check on the CPU",
              file=sys.stderr)
        return 2
    kind = "dry" if args.dry_run else "gpu"
    size = SIZES[kind]
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(f"gpu_check on {where}, torch {torch.__version__}, {kind} sizes", flush=True)
    checks, t0, table = Checks(), time.perf_counter(), {}
    with cpu_only(args.dry_run), tempfile.TemporaryDirectory() as tmp:
        with private_cache(Path(tmp) / "cache"):
            deterministic(True)
            try:
                check_stages(checks, size, Path(tmp))
                check_downstream(checks, size, Path(tmp))
            finally:
                deterministic(False)
        if not args.no_throughput:               # a check too: an error in it still leaves the summary and the JSON
            checks.run("throughput", lambda: (bool(table.update(throughput_table(size)) or table), "the table above"))
    failed = [k for k, v in checks.results.items() if not v["passed"]]
    print(f"\n{len(checks.results) - len(failed)} of {len(checks.results)} checks passed in "
          f"{time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where, "torch": torch.__version__, "checks": checks.results,
                                               "throughput": table or None}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
