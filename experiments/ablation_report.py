"""ABLATIONS.md from the results of experiments/ablations.py: every table in the paper's layout, the paper's
published figures beside ours, and each claim checked against our numbers (holds / does not hold)."""
from __future__ import annotations

import json
from pathlib import Path

from common.paper import TABLE1, TABLE3, TABLE4, TABLE5, TABLE6         # the paper's figures
from common.probe import matching_table

STAGE1_NAME = {"byol": "BYOL (LEAD)", "moco": "MoCo (CL)"}
# ContrastLandmark's loss on LEAD's FPN decoder (the "same decoder"), and on its own 1x1 projector
CLS = (("CL-64", "s2-moco-cl64"), ("CL-64, 1x1 projector", "s2-moco-cl64-linear"))
LEAD = ("LEAD-64", "s2-byol-lead64")                  # the LEAD run compared with them (few-shot, scale, claims)


def load(out: Path) -> dict:
    """Our figures by model path: matching (test split), aligned regression, few-shot, scale, parts."""
    def summary(folder):
        path = out / folder / "results.json"
        return json.loads(path.read_text())["summary"] if path.exists() else []
    match = json.loads((out / "match" / "matching.json").read_text())["models"]
    return {"match": {m["model"]: m for m in match},
            "regress": {r["features_from"]: r for r in summary("regress")},
            "fewshot": summary("fewshot"),
            "scale": {name: {r["features_from"]: r for r in summary(f"scale_{name}")} for name in ("seen", "unseen")},
            "parts": json.loads((out / "parts" / "parts.json").read_text())["results"]}


def fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def verdict(ok: bool) -> str:
    return "**holds**" if ok else "**does not hold**"


def path_of(out: Path, name: str) -> str:
    return str(out / name / "final")


# the matching tables' columns after the first two: ours (% IOD), then the paper's (with_paper)
OURS_AND_PAPER = (("same_iod", "same (ours)", ".1f"), ("diff_iod", "different (ours)", ".1f"),
                  ("paper_same", "same (paper)", ".2f"), ("paper_diff", "different (paper)", ".2f"))


def with_paper(ours: dict, paper: tuple, **cells) -> dict:
    """A row of a matching table: our figures, the paper's (same, different) and any other `cells`."""
    return {**ours, "paper_same": paper[0], "paper_diff": paper[1], **cells}


def table1(out: Path, r: dict, dims: list[int]) -> tuple[list[str], list[str]]:
    m = r["match"]
    lines = ["## Table 1: matching (same / different identity)", "",
             "Ours: synthetic test split, % IOD, mean over the pairs; the paper: MAFL, its published figures.", ""]
    rows = [("CL", d, path_of(out, f"s2-moco-cl{d}")) for d in dims] + \
           [("CL, 1x1 projector", 64, path_of(out, "s2-moco-cl64-linear"))] + \
           [("LEAD", d, path_of(out, f"s2-byol-lead{d}")) for d in dims] + \
           [("BYOL + NMF", 64, "nmf:64"), ("BYOL + NMF", 256, "nmf:256"),
            ("CL", "hypercolumn", path_of(out, "s1-moco")),
            ("LEAD", "hypercolumn", path_of(out, "s1-byol"))]
    table = []
    for name, dim, key in rows:
        ours = m.get(key, {})
        paper = TABLE1.get((name.split(",")[0], 3840 if dim == "hypercolumn" else dim), (None, None))
        shown = f"{ours['dim']} (hypercolumn)" if dim == "hypercolumn" and ours else dim
        table.append((name, with_paper(ours, paper, dim=shown)))
    table += [("untrained network", ours) for key, ours in m.items() if key.startswith("random-")]
    lines += matching_table(table, (("dim", "feat. dim", ""), *OURS_AND_PAPER), "method") + [""]
    lead, nmf = m.get(path_of(out, LEAD[1]), {}), m.get("nmf:64", {})
    claims = []
    if lead and nmf:
        claims.append(f"Table 1, LEAD-64 matches better than NMF-64 of the same hypercolumn (same and different "
                      f"identity): {verdict(lead['same_iod'] < nmf['same_iod'] and lead['diff_iod'] < nmf['diff_iod'])}"
                      f" ({lead['same_iod']:.1f} / {lead['diff_iod']:.1f} vs. {nmf['same_iod']:.1f} / "
                      f"{nmf['diff_iod']:.1f}).")
    for cl_name, run in CLS:
        cl = m.get(path_of(out, run), {})
        if lead and cl:
            claims.append(f"Table 1, LEAD-64 matches the same identity better than {cl_name}: "
                          f"{verdict(lead['same_iod'] < cl['same_iod'])} "
                          f"({lead['same_iod']:.1f} vs. {cl['same_iod']:.1f}).")
    return lines, claims


def table3(out: Path, r: dict, dims: list[int]) -> tuple[list[str], list[str]]:
    m = r["match"]
    lines = ["## Table 3: the projection head of stage 2 (matching)", ""]
    rows = [(64, 0, "s2-byol-lead64-head0"), (64, 64, "s2-byol-lead64-head64"), (64, 256, "s2-byol-lead64")]
    rows += [(d, 256, f"s2-byol-lead{d}") for d in dims if d != 64]
    got, table = {}, []
    for dim, head, name in rows:
        ours = m.get(path_of(out, name), {})
        got[(dim, head)] = ours.get("diff_iod")
        table.append((str(dim), with_paper(ours, TABLE3[(dim, head)], head=head or "✗")))
    lines += matching_table(table, (("head", "head dim", ""), *OURS_AND_PAPER), "feat. dim") + [""]
    claims = []
    if None not in (got.get((64, 0)), got.get((64, 256))):
        claims.append(f"Table 3, a projection head (256) improves different-identity matching over none: "
                      f"{verdict(got[(64, 256)] < got[(64, 0)])} ({got[(64, 256)]:.1f} vs. {got[(64, 0)]:.1f}).")
    return lines, claims


def mean_shape(rows) -> float | None:
    """The regression's floor: the training mean shape for every test face (the same for every source)."""
    rows = list(rows)
    return rows[0]["mean_shape"] if rows else None


def regression_error(r: dict, key: str) -> float | None:
    row = r["regress"].get(key)
    return row["mean"] if row else None


def table4_and_6(out: Path, r: dict, dims: list[int]) -> tuple[list[str], list[str]]:
    lines = ["## Table 4: feature dimension (aligned regression, all labels)", "",
             "Ours: synthetic aligned test split, % IOD; the paper: MAFL.", "",
             "| method | feat. dim | ours | paper |", "| --- | --- | --- | --- |"]
    for d in dims:
        for name, run in (("CL", f"s2-moco-cl{d}"), ("LEAD", f"s2-byol-lead{d}")):
            lines.append(f"| {name} | {d} | {fmt(regression_error(r, path_of(out, run)), 2)} | "
                         f"{TABLE4[(name, d)]['MAFL']:.2f} |")
    floor = mean_shape(r["regress"].values())
    lines.append(f"| mean shape (no features) | | {fmt(floor, 2)} | |")
    lines += ["", "## Table 6: stage-1 × stage-2 objectives (aligned regression, % IOD)", "",
              "Ours: synthetic aligned test split; the paper: AFLW_M. Each cell: ours (paper).", "",
              "| stage 1 | stage 2 | " + " | ".join(str(d) for d in dims) + " |",
              "| --- | --- |" + " --- |" * len(dims)]
    claims, wins = [], []
    for s1 in ("moco", "byol"):
        for s2 in ("cl", "lead"):
            cells = []
            for d in dims:
                ours = regression_error(r, path_of(out, f"s2-{s1}-{s2}{d}"))
                cells.append(f"{fmt(ours, 2)} ({TABLE6[(s1, s2)][d]:.2f})")
            lines.append(f"| {STAGE1_NAME[s1]} | {s2.upper()} | " + " | ".join(cells) + " |")
            linear = regression_error(r, path_of(out, f"s2-{s1}-{s2}64-linear"))
            if linear is not None:
                lines.append(f"| {STAGE1_NAME[s1]} | {s2.upper()}, 1x1 projector | {fmt(linear, 2)} "
                             f"({TABLE6[(s1, s2)][64]:.2f}) |" + " – |" * (len(dims) - 1))
                lead = regression_error(r, path_of(out, f"s2-{s1}-lead64"))
                if lead is not None:
                    wins.append((s1, "64, 1x1", lead < linear))
        for d in dims:
            lead = regression_error(r, path_of(out, f"s2-{s1}-lead{d}"))
            cl = regression_error(r, path_of(out, f"s2-{s1}-cl{d}"))
            if lead is not None and cl is not None:
                wins.append((s1, d, lead < cl))
    lines += [f"| mean shape (no features) | | {fmt(floor, 2)} |" + " |" * (len(dims) - 1), ""]
    if wins:
        held = sum(w for *_, w in wins)
        claims.append(f"Table 6, LEAD's stage 2 regresses better than CL's whatever the stage 1: "
                      f"{verdict(held == len(wins))} (in {held} of {len(wins)} cells).")
    return lines, claims


def table5(out: Path, r: dict) -> tuple[list[str], list[str]]:
    rows = {}
    for s in r["fewshot"]:
        rows.setdefault(s["features_from"], {})[s["num_train"]] = (s["mean"], s["std"])
    sizes = sorted({n for v in rows.values() for n in v})
    lines = ["## Table 5: number of annotations (aligned regression, % IOD, mean ± std over seeds)", "",
             "Ours: synthetic aligned test split; the paper (in brackets): AFLW_M, its sizes 1, 5, 10, 20, 50, "
             "100.", "",
             "| method | " + " | ".join(str(n) for n in sizes) + " |", "| --- |" + " --- |" * len(sizes)]
    claims = []
    for name, run in (*CLS, LEAD):
        got = rows.get(path_of(out, run), {})
        paper = TABLE5[(name.split("-")[0], 64)]
        cells = [f"{got[n][0]:.1f} ± {got[n][1]:.1f}" + (f" ({paper[n]})" if n in paper else "") if n in got
                 else "–" for n in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    floor = {s["num_train"]: s["mean_shape"] for s in r["fewshot"]}
    lines.append("| mean shape (no features) | " + " | ".join(fmt(floor.get(n)) for n in sizes) + " |")
    lines += ["", "Picture: `fewshot.png` (regress.py's curve, with the mean shape's error)."]
    lead = rows.get(path_of(out, LEAD[1]), {})
    for cl_name, run in CLS:
        cl = rows.get(path_of(out, run), {})
        both = [n for n in sizes if n in lead and n in cl]
        if both:
            held = sum(lead[n][0] < cl[n][0] for n in both)
            claims.append(f"Table 5, LEAD-64 beats {cl_name} at every number of annotations: "
                          f"{verdict(held == len(both))} (at {held} of {len(both)} sizes).")
    return lines + [""], claims


def scale_table(out: Path, r: dict) -> tuple[list[str], list[str]]:
    lines = ["## Fig. 9: sensitivity to scale (unaligned regression, trained at zoom-out 1-1.5)", "",
             "| method | test at 1-1.5 (seen) | test at 1.5-2 (unseen) | increase |", "| --- | --- | --- | --- |"]
    got = {}
    for name, run in (*CLS, LEAD):
        seen = r["scale"]["seen"].get(path_of(out, run), {}).get("mean")
        unseen = r["scale"]["unseen"].get(path_of(out, run), {}).get("mean")
        got[name] = (seen, unseen)
        rise = fmt(unseen - seen, 2) if None not in (seen, unseen) else "–"
        lines.append(f"| {name} | {fmt(seen, 2)} | {fmt(unseen, 2)} | {rise} |")
    seen, unseen = (mean_shape(r["scale"][k].values()) for k in ("seen", "unseen"))
    lines.append(f"| mean shape (no features) | {fmt(seen, 2)} | {fmt(unseen, 2)} | |")
    claims = []
    drawn = {name: v for name, v in got.items() if None not in v}
    if LEAD[0] in drawn and len(drawn) > 1:
        scale_picture(drawn, out / "scale.png")
        lines += ["", "Picture: `scale.png`."]
    for cl_name, _ in CLS:
        if LEAD[0] in drawn and cl_name in drawn:
            (ls, lu), (cs, cu) = drawn[LEAD[0]], drawn[cl_name]
            claims.append(f"Fig. 9, LEAD-64 is better than {cl_name} at seen and unseen scales: "
                          f"{verdict(ls < cs and lu < cu)}; and less sensitive to unseen scales: "
                          f"{verdict(lu - ls < cu - cs)}.")
    return lines + [""], claims


def scale_picture(got: dict[str, tuple[float, float]], path: Path) -> None:
    """Fig. 9 in two bars a method: error at the seen and the unseen zoom-out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for i, (name, errors) in enumerate(got.items()):
        ax.bar([i - 0.2, i + 0.2], errors, width=0.4, color=["tab:blue", "tab:orange"])
    ax.set_xticks(range(len(got)), list(got))
    ax.legend(handles=[Patch(color="tab:blue", label="zoom-out 1-1.5 (seen)"),
                       Patch(color="tab:orange", label="zoom-out 1.5-2 (unseen)")], fontsize=8, ncol=2,
              loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set(ylabel="error (% IOD)", title="regression trained at zoom-out 1-1.5")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parts_table(r: dict) -> tuple[list[str], list[str]]:
    lines = ["## Fig. 5-6, supplement Fig. 14: part discovery", "",
             "Part consistency: for each landmark, the share of faces whose part there is the landmark's most "
             "frequent part (mean over landmarks). Retrieval: each landmark labelled by its nearest neighbour "
             "(cosine) among the landmarks of other identities.", "",
             "| model | NMF consistency | k-means consistency | landmark retrieval | chance |",
             "| --- | --- | --- | --- | --- |"]
    for spec, res in r["parts"].items():
        nmf, km = res.get("nmf", {}).get("consistency"), res.get("kmeans", {}).get("consistency")
        name = Path(spec).parent.name if spec.endswith("final") else spec
        lines.append(f"| {name} | {fmt(nmf, 2)} | {fmt(km, 2)} | {res['retrieval_accuracy']:.2f} | "
                     f"{res['chance']:.2f} |")
    claims = []
    trained = [res for spec, res in r["parts"].items() if not spec.startswith("random-")]
    random = [res for spec, res in r["parts"].items() if spec.startswith("random-")]
    if trained and random and "nmf" in random[0]:
        ok = all(t["nmf"]["consistency"] > random[0]["nmf"]["consistency"] for t in trained if "nmf" in t)
        claims.append(f"Fig. 5-6, stage-1 features factorise into parts more consistent across faces than an "
                      f"untrained network's: {verdict(ok)}.")
    return lines + ["", "Pictures: `parts_*.png` (each face, then its positions coloured by NMF part / k-means "
                    "cluster), `tsne_*.png` (t-SNE of the landmark features, coloured by landmark).", ""], claims


def caveats(out: Path, r: dict) -> list[str]:
    """Where a claim's evidence is void: a model no better than its floor (points left in place, the mean shape),
    or a stage 1 that matches across identities worse than an untrained network."""
    found = []
    for name, run in (*CLS, LEAD, ("the BYOL hypercolumn", "s1-byol")):
        m, reg = r["match"].get(path_of(out, run)), r["regress"].get(path_of(out, run))
        if m and m["same_iod"] > 0.97 * m["same_floor_iod"]:
            found.append(f"{name} matches the same identity no better than leaving the points in place "
                         f"({m['same_iod']:.1f} vs. {m['same_floor_iod']:.1f}).")
        if reg and reg["mean"] > 0.97 * reg["mean_shape"]:
            found.append(f"{name}'s aligned regression is at the mean shape's ({reg['mean']:.2f} vs. "
                         f"{reg['mean_shape']:.2f}): its features carry no landmark information a regressor finds.")
    random = next((m for k, m in r["match"].items() if k.startswith("random-")), None)
    for s1, name in (("byol", "BYOL"), ("moco", "MoCo")):
        m = r["match"].get(path_of(out, f"s1-{s1}"))
        if m and random and m["diff_iod"] > random["diff_iod"]:
            found.append(f"Stage 1 ({name}) matches across identities worse than an untrained network "
                         f"({m['diff_iod']:.1f} vs. {random['diff_iod']:.1f}): the stage 2s on it distil features that "
                         f"do not transfer.")
    return [f"- {c}" for c in found]


def write_report(out: Path, scale: str, times: dict, dims: list[int]) -> Path:
    """OUT/ABLATIONS.md from the runs in OUT; `dims`: the feature dimensions of the grid."""
    r = load(out)
    (out / "scale.png").unlink(missing_ok=True)                   # drawn again below when its figures are there
    sections, claims = [], []
    for lines, found in (table1(out, r, dims), table3(out, r, dims), table4_and_6(out, r, dims), table5(out, r),
                         scale_table(out, r), parts_table(r)):
        sections += lines
        claims += found
    head = [f"# Ablations at {scale} scale", "",
            f"Written by `experiments/ablations.py --scale {scale}`; runs in `{out}`. Total wall time of the runs: "
            f"{sum(times.values()) / 60:.0f} min.", "",
            "Our figures are on the synthetic faces at this scale and are not comparable in value with the paper's "
            "(real data, resnet50 at 96 px, full schedules); what can be compared is the direction of each claim.",
            "", "## Claims", ""] + [f"- {c}" for c in claims] + [""]
    if warn := caveats(out, r):
        head += ["Caveats: where the evidence for a claim is void.", ""] + warn + [""]
    report = out / "ABLATIONS.md"
    report.write_text("\n".join(head + sections + ["## Wall time per run (s)", "",
                                                   ", ".join(f"{k} {v}" for k, v in times.items()), ""]))
    return report


STALE = "> Written for an earlier run whose claims differ from these: check it against the tables."


def section(text: str, title: str) -> str | None:
    """The '## title' section of a markdown text, up to the next '## ' heading; None if absent."""
    start = text.find(f"\n## {title}\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start + 1:end + 1 if end >= 0 else len(text)]


def publish(report: Path, results: Path) -> Path:
    """Copies REPORT to RESULTS/ABLATIONS.md, keeping the hand-written '## Reading' of the file it replaces (put
    after the claims; flagged as stale when the claims or caveats it was written for have changed)."""
    new, dest = report.read_text(), results / "ABLATIONS.md"
    old = dest.read_text() if dest.exists() else ""
    reading, claims = section(old, "Reading"), section(new, "Claims")
    if reading and claims:
        reading = reading.rstrip("\n") + "\n\n"                # a blank line before the next heading
        if section(old, "Claims") != claims and STALE not in reading:
            body = reading.removeprefix("## Reading\n").lstrip("\n")
            reading = f"## Reading\n\n{STALE}\n\n{body}"
        cut = new.find(claims) + len(claims)
        new = new[:cut] + reading + new[cut:]
    results.mkdir(parents=True, exist_ok=True)
    dest.write_text(new)
    return dest
