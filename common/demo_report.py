"""The demo's report: OUTPUT/report.md from the files the stages wrote (nothing is trained or measured here).

    python -m common.demo_report runs/demo [--quick]
    python -m common.demo_report runs/demo_real --real [--quick]       # bash demo.sh --real DIR

Reads OUTPUT/times.tsv (stage, seconds: written by demo.sh), match/matching.json, regress_aligned/ and
regress_unaligned/results.json, fewshot/results.json, and checks the claims the demo must show (trained features
beat random ones and the floors; LEAD-64 keeps most of the hypercolumn's accuracy; cross-identity matching beats
its floor), each as a line that says whether it holds.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .paper import TABLE1, TABLE2, TABLE4, TABLE5
from .probe import matching_table

# the paper's rows (common/paper.py) quoted under our tables, as the report names them
PAPER_MATCHING = {"LEAD-64": ("LEAD", 64), "NMF-64": ("BYOL + NMF", 64), "LEAD hypercolumn (3840-d)": ("LEAD", 3840)}
PAPER_REGRESSION = {"LEAD-64 (Table 4)": TABLE4[("LEAD", 64)], "LEAD best (Table 2)": TABLE2["LEAD"]}
PAPER_AFLW_M = {"LEAD": "LEAD", "ContrastLandmark": "CL", "DVE": "DVE"}          # Table 2's AFLW_M column


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def kind(name: str) -> str:
    """lead / hypercolumn / nmf / random from a source's name (lead-64, hypercolumn-960, nmf-64, random-resnet18)."""
    return name.split("-")[0]


def times_section(out: Path) -> list[str]:
    rows: dict[str, float] = {}
    if (out / "times.tsv").is_file():
        for line in (out / "times.tsv").read_text().splitlines():
            name, _, seconds = line.partition("\t")
            rows[name] = float(seconds)                           # a stage run again: its latest time
    lines = ["## Wall time", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {s:.0f} |" for name, s in rows.items()]
    return lines + [f"| total | {sum(rows.values()):.0f} |", ""]


def matching_section(table: dict, data: str = "synthetic", paper: bool = True) -> tuple[list[str], dict]:
    rows = table["models"]
    lines = [f"## Matching ({table['pairs']} same-identity and {table['pairs']} different-identity pairs of the "
             f"{data} `{table['split']}` split, at {table['size']} px)", "",
             "Mean error in pixels at the model's input size and in % of the inter-ocular distance (IOD); different "
             "identity also gives its median and the share of matches more than one IOD off. The astronaut column "
             "is scikit-image's real photo under the same warps (pixels).", ""]
    lines += matching_table(((r["name"], r) for r in rows), ("dim", "same_px", "same_iod", "diff_px", "diff_iod",
                                                             "diff_iod_median", "diff_miss", "photo_px")) + [""]
    if paper:
        lines += ["The paper (Table 1, MAFL, ResNet-50 at 96 px; same / different):"
                  + "".join(f" {n} {TABLE1[row][0]} / {TABLE1[row][1]};"
                            for n, row in PAPER_MATCHING.items()).rstrip(";") + ".", ""]
    return lines, {kind(r["name"]): r for r in rows}


def regression_section(results: dict[str, dict], title: str = "all labelled training images, % IOD on the test "
                       "split", paper: str | None = None) -> tuple[list[str], dict]:
    """Aligned and unaligned regression on all labels: one row per feature source, the mean shape last; `paper`
    (default: Tables 2 and 4 on MAFL and AFLW_R) is the line of published figures under it."""
    names, by_variant = [], {}
    for variant, res in results.items():
        by_variant[variant] = {s["name"]: s for s in res["summary"]}
        names += [n for n in by_variant[variant] if n not in names]
    cols = list(results)
    lines = [f"## Landmark regression ({title})", "",
             "| features | dim | " + " | ".join(cols) + " |", "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for n in names:
        dim = next(v[n]["dim"] for v in by_variant.values() if n in v)
        lines.append(f"| {n} | {dim} | " + " | ".join(
            f"{by_variant[c][n]['mean']:.2f}" if n in by_variant[c] else "" for c in cols) + " |")
    lines.append("| mean shape (no features) | 0 | " + " | ".join(
        f"{next(iter(by_variant[c].values()))['mean_shape']:.2f}" for c in cols) + " |")
    if paper is None:
        paper = "The paper (aligned ~ MAFL, unaligned ~ AFLW_R; ResNet-50): " + "; ".join(
            f"{n}: MAFL {row['MAFL']}, AFLW_R {row['AFLW_R']}" for n, row in PAPER_REGRESSION.items()) + "."
    lines += ["", paper, ""]
    return lines, {c: {kind(n): s for n, s in v.items()} for c, v in by_variant.items()}


def fewshot_section(out: Path, data: str = "aligned") -> list[str]:
    md = out / "fewshot" / "results.md"
    if not md.is_file():
        return []
    lead = TABLE5[("LEAD", 64)]
    return [f"## Few labels ({data})", "", md.read_text().strip(), "",
            f"The paper (Table 5, AFLW_M, LEAD-64, {' / '.join(map(str, lead))} labels): "
            f"{' | '.join(map(str, lead.values()))}.", ""] + \
        (["![few-shot curve](fewshot/fewshot.png)", ""] if (out / "fewshot" / "fewshot.png").is_file() else [])


def claims(match: dict, regression: dict) -> list[tuple[str, bool]]:
    """The demo's claims, each checked on the numbers above."""
    out = []
    lead, hyper, rand = match.get("lead"), match.get("hypercolumn"), match.get("random")
    if lead and rand:
        out.append((f"same-image matching: LEAD-64 {lead['same_iod']:.1f} % IOD beats random init "
                    f"{rand['same_iod']:.1f} and points left in place {lead['same_floor_iod']:.1f}",
                    lead["same_iod"] < min(rand["same_iod"], lead["same_floor_iod"])))
        best = min(rand["diff_iod"], lead["diff_floor_iod"])
        out.append((f"cross-identity matching: LEAD-64 {lead['diff_iod']:.1f} % IOD beats the better of random init "
                    f"and points left in place ({best:.1f})", lead["diff_iod"] < best))
        out.append((f"astronaut photo: LEAD-64 {lead['photo_px']:.2f} px, random init {rand['photo_px']:.2f} px, "
                    f"points left in place {lead['photo_floor_px']:.2f} px (trained beats the floor)",
                    lead["photo_px"] < lead["photo_floor_px"]))
    if lead and hyper:
        gain_h = hyper["same_floor_iod"] - hyper["same_iod"]
        kept = (lead["same_floor_iod"] - lead["same_iod"]) / gain_h if gain_h > 0 else float("nan")
        out.append((f"LEAD-64 keeps {100 * kept:.0f} % of the {hyper['dim']}-d hypercolumn's same-image gain over "
                    f"the floor ({hyper['dim'] // lead['dim']}x fewer channels)", finite(kept) and kept >= 0.5))
    for variant, rows in regression.items():
        if "lead" in rows and "random" in rows:
            r = rows["lead"]
            out.append((f"regression ({variant}): LEAD-64 {r['mean']:.2f} beats random init "
                        f"{rows['random']['mean']:.2f} and the mean shape {r['mean_shape']:.2f}",
                        r["mean"] < min(rows["random"]["mean"], r["mean_shape"])))
    return out


def report(out: Path, quick: bool = False) -> str:
    lines = ["# LEAD demo on synthetic faces", ""]
    if quick:
        lines += ["**Quick run** (`bash demo.sh --quick`): every step at toy size, to check the pipeline; "
                  "its numbers say nothing about the method.", ""]
    lines += ["Written by `bash demo.sh` (`python -m common.demo_report`). Everything here is measured on the "
              "embedded synthetic faces with a CPU-sized model (ResNet-18, 64 px views, minutes of training); the "
              "paper's numbers are for real faces (CelebA pretraining, MAFL / AFLW / 300-W), ResNet-50 at 96 px and "
              "200 + 20 epochs on GPUs. They are shown beside ours for scale, not as a like-for-like comparison.", ""]
    match_lines, match = ([], {})
    if (table := read(out / "match" / "matching.json")) is not None:
        match_lines, match = matching_section(table)
    results = {v: r for v in ("aligned", "unaligned") if (r := read(out / f"regress_{v}" / "results.json"))}
    reg_lines, regression = regression_section(results) if results else ([], {})
    checked = claims(match, regression)
    if checked:
        lines += ["## Claims", ""] + [f"- {'holds' if ok else 'DOES NOT HOLD'}: {text}" for text, ok in checked] + [""]
    lines += match_lines + reg_lines + fewshot_section(out)
    if (out / "match.png").is_file():
        lines += ["## A matching picture", "", "Points of a reference face carried to a face of another identity "
                  "by `match.py` with the LEAD-64 features:", "", "![matching](match.png)", ""]
    return "\n".join(lines + times_section(out))


def machine() -> str:
    """The machine the figures were measured on, in words: CPU model, cores, bf16 matrix units, torch."""
    import os
    import platform

    import torch
    model, flags = platform.processor() or platform.machine(), ""
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), model)
        flags = "with AMX bf16" if "amx_bf16" in info else "without AMX"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{model} ({os.cpu_count()} cores, {flags}){gpu}, torch {torch.__version__}"


def goals(regression: dict, aflw: dict, afw: dict) -> list[tuple[str, bool]]:
    """The real-face goals of the recipe (issue 21), each checked on the numbers of the report."""
    out = []
    lead, rand = regression.get("lead"), regression.get("random")
    if lead and rand:
        out.append((f"regression on AFLW: LEAD-64 {lead['mean']:.2f} at most 0.6 x the mean shape's "
                    f"{lead['mean_shape']:.2f} ({0.6 * lead['mean_shape']:.2f})", lead["mean"] <= 0.6 * lead["mean_shape"]))
        out.append((f"regression on AFLW: LEAD-64 {lead['mean']:.2f} at least 20 % below the untrained network's "
                    f"{rand['mean']:.2f} ({0.8 * rand['mean']:.2f})", lead["mean"] <= 0.8 * rand["mean"]))
    for name, match in (("AFLW", aflw), ("AFW", afw)):
        if match.get("lead") and match.get("random"):
            m, r = match["lead"], match["random"]
            out.append((f"same identity ({name}): LEAD-64 {m['same_iod']:.1f} % IOD beats the untrained network's "
                        f"{r['same_iod']:.1f}", m["same_iod"] < r["same_iod"]))
    if afw.get("lead") and afw.get("random"):
        m, best = afw["lead"], min(afw["random"]["diff_iod"], afw["lead"]["diff_floor_iod"])
        out.append((f"different identity (AFW, 68 points): LEAD-64 {m['diff_iod']:.1f} % IOD at least 20 % below "
                    f"the better of the untrained network and points left in place ({best:.1f}; bar {0.8 * best:.1f})",
                    m["diff_iod"] <= 0.8 * best))
    return out



def training_line(out: Path) -> str:
    """What stages 1 and 2 ran, from their args.json: network, views, steps, batch, precision."""
    from .precision import precision_name, recorded_precision
    parts = []
    for stage, name in (("byol", "stage 1"), ("distill", "stage 2")):
        if (a := read(out / stage / "args.json")) is not None:
            net = f"{a['arch']}, " if "arch" in a else ""
            parts.append(f"{name} {net}{a['max_steps']:,} steps of {a['batch_size']} images at {a['crop_size']} px "
                         f"({precision_name(recorded_precision(a))})")
    return "Trained: " + "; ".join(parts) + "." if parts else ""


def real_report(out: Path, quick: bool = False) -> str:
    """runs/demo_real/report.md: the real-face recipe's figures, each beside its floors and the paper's."""
    lines = ["# LEAD demo on real faces", ""]
    if quick:
        lines += ["**Quick run** (`bash demo.sh --real DIR --quick`): toy sizes; its numbers say nothing.", ""]
    lines += [f"Written by `bash demo.sh --real DIR`; measured on {machine()}. Training: stages 1 and 2 on the "
              "unlabelled MTFL training photos (and CelebA where given); regression: MTFL's training faces, "
              "selected on its validation faces, tested on the 2,995 AFLW faces of AFLW_M; matching: the AFLW test "
              "faces (5 points) and AFW (68 points). Every figure sits beside its floors: points left in place, "
              "the mean shape, and the same network untrained at the same input size. " + training_line(out), ""]
    regression, reg_lines = {}, []
    if (res := read(out / "regress" / "results.json")) is not None:
        reg_lines, by = regression_section(
            {"AFLW (% IOD)": res}, "on AFLW_M: MTFL's training faces, % IOD on the 2,995 AFLW test faces",
            "The paper (Table 2, AFLW_M, ResNet-50 pretrained 200 epochs on CelebA, regressor trained on 10,122 AFLW "
            "faces): " + ", ".join(f"{n} {TABLE2[row]['AFLW_M']}" for n, row in PAPER_AFLW_M.items()) + ".")
        regression = by["AFLW (% IOD)"]
    matches, match_lines = {}, []
    for name, what in (("aflw", "AFLW (MTFL test faces, 5 points)"), ("afw", "AFW (68 points)")):
        if (table := read(out / f"match_{name}" / "matching.json")) is not None:
            section, matches[name] = matching_section(table, what, paper=False)
            match_lines += section
    checked = goals(regression, matches.get("aflw", {}), matches.get("afw", {}))
    if checked:
        lines += ["## Goals", ""] + [f"- {'holds' if ok else 'DOES NOT HOLD'}: {text}" for text, ok in checked] + [""]
    lines += reg_lines + fewshot_section(out, "AFLW test faces") + match_lines
    if (out / "match.png").is_file():
        lines += ["## A matching picture", "", "A face's points carried to another person's by `match.py` with the "
                  "LEAD-64 features (`match.png`, beside this report; made from the data set, never committed).", "",
                  "![matching](match.png)", ""]
    return "\n".join(lines + times_section(out))


def main(argv: list[str]) -> int:
    quick, real = "--quick" in argv, "--real" in argv
    argv = [a for a in argv if a not in ("--quick", "--real")]
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m common.demo_report RUN_FOLDER [--quick] [--real] (e.g. runs/demo)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    (out / "report.md").write_text(real_report(out, quick) if real else report(out, quick))
    print(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
