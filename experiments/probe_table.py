"""Markdown rows of the stage-1 matching probe from runs' metrics.jsonl (the tables of
experiments/cross_identity.md):

    .venv/bin/python experiments/probe_table.py runs/x_pixel_a runs/x_pixel_b

Each run gives a row per probe it logged (the last only with --last), then the untrained network
and the points-left-in-place floor of the first run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HEAD = ("| run | step | s | same % IOD mean / median / >1 IOD | different % IOD mean / median / >1 IOD "
        "| astronaut px mean / median |\n| --- | --- | --- | --- | --- | --- |")


def cells(p: dict) -> str:
    return (f"{p['same_iod']:.1f} / {p['same_iod_median']:.1f} / {100 * p['same_miss']:.0f} % | "
            f"{p['diff_iod']:.1f} / {p['diff_iod_median']:.1f} / {100 * p['diff_miss']:.0f} % | "
            f"{p['photo_px']:.2f} / {p['photo_px_median']:.2f}")


def rows(run: Path, last: bool) -> tuple[list[str], dict]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if "probe" in r and r["probe"]]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    out = [f"| {run.name} | {r['step']} | {elapsed.get(r['step'], float('nan')):.0f} | {cells(r['probe']['trained'])} |"
           for r in (probes[-1:] if last else probes)]
    return out, probes[-1]["probe"] if probes else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--last", action="store_true", help="only each run's final probe")
    args = parser.parse_args()
    print(HEAD)
    first = {}
    for run in args.runs:
        out, probe = rows(run, args.last)
        print("\n".join(out))
        first = first or probe
    if first:
        r, t = first["random"], first["trained"]
        print(f"| untrained network | | | {cells(r)} |")
        print(f"| points left in place | | | {t['same_floor_iod']:.1f} | {t['diff_floor_iod']:.1f} | "
              f"{t['photo_floor_px']:.2f} |")


if __name__ == "__main__":
    main()
