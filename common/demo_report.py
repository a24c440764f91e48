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
from .protocols import PROTOCOLS

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


def read_times(out: Path) -> dict[str, float]:
    """OUTPUT/times.tsv (stage, seconds; written by demo.sh): a stage run again counts with its latest time."""
    rows: dict[str, float] = {}
    if (out / "times.tsv").is_file():
        for line in (out / "times.tsv").read_text().splitlines():
            name, _, seconds = line.partition("\t")
            rows[name] = float(seconds)
    return rows


def times_section(out: Path) -> list[str]:
    rows = read_times(out)
    lines = ["## Wall time", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {s:.0f} |" for name, s in rows.items()]
    return lines + [f"| total | {sum(rows.values()):.0f} |", ""]


def matching_section(table: dict, data: str = "synthetic", paper: bool = True, note: str = "") -> tuple[list[str],
                                                                                                   dict]:
    rows = table["models"]
    lines = [f"## Matching ({table['pairs']} same-identity and {table['pairs']} different-identity pairs of the "
             f"{data} `{table['split']}` split, at {table['size']} px)", "", *([note, ""] if note else []),
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


def goals(regression: dict, dve: dict, w300: dict, times: dict) -> list[tuple[str, bool]]:
    """The real-face goals of the recipe (issue 28), each checked on the numbers of the report."""
    out = []
    lead, rand, sup = (regression.get(k) for k in ("lead", "random", "supervised"))
    if lead and regression.get("protocol") != "dve":
        out.append((f"MTFL -> AFLW_M test with DVE's crop: the regression ran with protocol "
                    f"{regression.get('protocol')}", False))
    elif lead:
        out.append((f"MTFL -> AFLW_M test: LEAD-64 {lead['mean']:.2f} at most 0.55 x the mean shape's "
                    f"{lead['mean_shape']:.2f} ({0.55 * lead['mean_shape']:.2f})",
                    lead["mean"] <= 0.55 * lead["mean_shape"]))
    if lead and rand and sup:
        out.append((f"MTFL -> AFLW_M test: LEAD-64 {lead['mean']:.2f} closer to the supervised ceiling's "
                    f"{sup['mean']:.2f} than to the untrained network's {rand['mean']:.2f}",
                    abs(lead["mean"] - sup["mean"]) < abs(lead["mean"] - rand["mean"])))
    m, h, r = (dve.get(k) for k in ("lead", "hypercolumn", "random"))
    if m and h and r:
        out.append((f"DVE matching, different identity: LEAD-64 {m['diff_px70']:.2f} px below the untrained network's "
                    f"{r['diff_px70']:.2f} and the hypercolumn's {h['diff_px70']:.2f}",
                    m["diff_px70"] < min(r["diff_px70"], h["diff_px70"])))
        out.append((f"DVE matching, same identity: LEAD-64 {m['same_px70']:.2f} px within 10 % of the hypercolumn's "
                    f"{h['same_px70']:.2f} ({1.1 * h['same_px70']:.2f})", m["same_px70"] <= 1.1 * h["same_px70"]))
    if (lead68 := w300.get("lead")):
        out.append((f"68 points (validation): LEAD-64 {lead68['mean']:.2f} at most 0.5 x the mean shape's "
                    f"{lead68['mean_shape']:.2f} ({0.5 * lead68['mean_shape']:.2f})",
                    lead68["mean"] <= 0.5 * lead68["mean_shape"]))
    if times:
        total = sum(times.values())
        out.append((f"the whole recipe in {total / 60:.0f} minutes, at most 45", total <= 45 * 60))
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


def protocol_of(results: dict) -> str:
    """How a regression's faces were cropped, from its results.json (older ones: their sizes)."""
    if "protocol" in results:
        return results["protocol"]["describe"]
    return "resize {}, crop {}".format(*results["input"])


def real_regression(out: Path) -> tuple[list[str], dict, dict]:
    """The 5-point regression (MTFL -> AFLW_M test) and the 68-point one (AFW + HELEN, validation), each with its
    protocol and the paper's row, and what each of them is not."""
    lines, by = [], {}
    if (res := read(out / "regress" / "results.json")) is not None:
        section, rows = regression_section(
            {"% IOD": res}, f"MTFL -> AFLW_M test: MTFL's {res['splits']['train']:,} training faces, scored on the "
            f"{res['splits']['test']:,} AFLW test faces; protocol {protocol_of(res)}",
            "The paper (Table 2, AFLW_M, ResNet-50 pretrained 200 epochs on CelebA): " + ", ".join(
                f"{n} {TABLE2[row]['AFLW_M']}" for n, row in PAPER_AFLW_M.items()) + ". The papers train the "
            "regressor on 10,122 AFLW crops framed as the test faces, which are not in the data here: ours trains on "
            "MTFL's LFW and web photos, framed by the 300-W rule (common/data/readers.py), so its figure is a transfer "
            "across data sets and framings, not the AFLW_M benchmark itself.")
        lines += section
        by["aflw"] = {**rows["% IOD"], "protocol": res.get("protocol", {}).get("name")}
    if (res := read(out / "regress68" / "results.json")) is not None:
        section, rows = regression_section(
            {"% IOD": res}, f"68 points: AFW + HELEN training faces, {res['splits']['train']:,} train / "
            f"{res['splits']['val']:,} validation faces split by photo, scored on validation; outer eye corners; "
            f"protocol {protocol_of(res)}",
            "The paper (Table 2, 300-W, 689 test faces): " + ", ".join(
                f"{n} {TABLE2[row]['300W']}" for n, row in PAPER_AFLW_M.items()) + ". 300-W's test faces (and LFPW, "
            "the rest of HELEN) are not in the data here: ours is a validation figure on a tenth of AFW + HELEN, "
            "trained on a third of 300-W's 3,148 training faces.")
        lines += section
        by["300w"] = rows["% IOD"]
    return lines, by.get("aflw", {}), by.get("300w", {})


def dve_section(table: dict) -> tuple[list[str], dict]:
    """Matching by DVE's protocol, in pixels of the 70 x 70 frame, beside the paper's Table 1 (MAFL)."""
    rows, protocol = table["models"], PROTOCOLS[table["protocol"]]
    lines = [f"## Matching by {'DVE' if protocol.name == 'dve' else 'ContrastLandmark'}'s protocol "
             f"({protocol.describe()}: the {table['pairs']:,} consecutive pairs of the AFLW test faces, both images "
             "warped, arg-max on the feature grid)", "",
             "Mean error in pixels of a 70 x 70 frame (DVE's units), over every landmark of every pair; "
             "common/dve_matching.py.", ""]
    lines += matching_table(((r["name"], r) for r in rows), ("dim", "same_px70", "diff_px70")) + [""]
    lines += ["The paper (Table 1, MAFL's 500 test pairs; same / different):"
              + "".join(f" {n} {TABLE1[row][0]} / {TABLE1[row][1]};" for n, row in PAPER_MATCHING.items()).rstrip(";")
              + ". Its caption says % IOD, but its DVE row is DVE's Hourglass in these pixel units (DVE's README: "
              "0.93 / 2.37), at the 136 -> 96 px input the paper states (our `cl` sizes), with a ResNet-50 trained "
              "on CelebA; MAFL's aligned faces are not AFLW's, whose poses vary far more: side by side for scale.", ""]
    return lines, {kind(r["name"]): r for r in rows}


def real_report(out: Path, quick: bool = False) -> str:
    """runs/demo_real/report.md: the real-face recipe's figures, each with its protocol, floors and the paper's."""
    lines = ["# LEAD demo on real faces", ""]
    if quick:
        lines += ["**Quick run** (`bash demo.sh --real DIR --quick`): toy sizes; its numbers say nothing.", ""]
    lines += [f"Written by `bash demo.sh --real DIR`; measured on {machine()}. Training: stages 1 and 2 on the "
              "unlabelled MTFL training photos (and CelebA where given). Every figure names its protocol and sits "
              "beside its floors (points left in place, the mean shape), the same network untrained and, for "
              "regression, trained end to end on the same labels (the supervised ceiling). " + training_line(out), ""]
    reg_lines, regression, w300 = real_regression(out)
    dve_lines, dve = [], {}
    if (table := read(out / "match_aflw_dve" / "matching.json")) is not None:
        dve_lines, dve = dve_section(table)
    match_lines = []
    for name, what in (("aflw", "AFLW test faces (5 points)"), ("afw", "AFW (68 points)")):
        if (table := read(out / f"match_{name}" / "matching.json")) is not None:
            section, _ = matching_section(table, what, paper=False, note=(
                "This repository's protocol (common/probe.py), harder than DVE's: random pairs; for the same identity "
                "the query alone is warped, several times as strongly as DVE warps; errors in % of the inter-ocular "
                "distance."))
            match_lines += section
    checked = goals(regression, dve, w300, read_times(out))
    if checked:
        lines += ["## Goals", ""] + [f"- {'holds' if ok else 'DOES NOT HOLD'}: {text}" for text, ok in checked] + [""]
    lines += reg_lines + fewshot_section(out, "MTFL -> AFLW_M test") + dve_lines + match_lines
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
