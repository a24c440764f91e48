"""The matching probe: does a dense feature put a face's points where they belong?

This repository's protocol (match.py --benchmark --protocol ours; DVE's own is common/dve_matching.py), the
same two kinds of pair as DVE's, ContrastLandmark's and LEAD's Table 1, on labelled images of a tensor cache:
  same identity  an image against a random TPS warp of itself (several times DVE's warps); the truth is the warp;
  different id.  the landmarks of image A carried to a random image B of another identity, against B's own.
Errors are in pixels at the probe size and in % of the inter-ocular distance, next to the floor of
leaving every point where it is. matching_table writes them as markdown wherever a table of them is shown
(match.py --benchmark's log, the model cards, demo.sh's report.md, ABLATIONS.md).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .warps import warped_pairs
from .metrics import inter_ocular, match

if TYPE_CHECKING:
    from .data import DataSpec


def resized(cache, idx: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, size, size] in [0, 1] and their landmarks at that size."""
    b = cache.batch(idx)
    s = b["images"].shape[-1]
    images = F.interpolate(b["images"].float() / 255, size=(size, size), mode="area" if size < s else "bilinear")
    return images, (b["landmarks"] + 0.5) * (size / s) - 0.5


def _summary(err: torch.Tensor, floor: torch.Tensor, iod: torch.Tensor, name: str) -> dict[str, float]:
    rel, rel_floor = 100 * err / iod[:, None], 100 * floor / iod[:, None]
    return {f"{name}_px": err.mean().item(), f"{name}_iod": rel.mean().item(),
            f"{name}_iod_median": rel.median().item(), f"{name}_miss": (rel > 100).float().mean().item(),
            f"{name}_floor_px": floor.mean().item(), f"{name}_floor_iod": rel_floor.mean().item()}


def other_faces(identity: np.ndarray, i: int) -> np.ndarray:
    """Indices of the faces of another identity than face i; an unknown identity (-1: MTFL, AFLW, AFW, whose
    annotations name no person) makes any other image count as another identity."""
    unknown = (identity < 0) | (identity[i] < 0)
    return np.flatnonzero(((identity != identity[i]) | unknown) & (np.arange(len(identity)) != i))


@torch.no_grad()
def matching_probe(extract, cache, size: int, pairs: int = 100, seed: int = 0, batch: int = 25) -> dict[str, float]:
    """Same- and different-identity matching of `extract` (images [N, 3, s, s] in [0, 1] ->
    feature maps covering the image) on `pairs` pairs of each kind, drawn with `seed`."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(cache)
    ident = np.asarray(cache.identity)
    a = rng.choice(n, size=pairs, replace=pairs > n)
    b = np.array([rng.choice(other_faces(ident, i)) for i in a])
    out: dict[str, list] = {"same": [], "same_floor": [], "diff": [], "diff_floor": [], "iod_a": [], "iod_b": []}
    for s in range(0, pairs, batch):
        img_a, lm_a = resized(cache, a[s:s + batch], size)
        feat_a = extract(img_a)                                  # the reference of both kinds of pair
        warped, truth, _ = warped_pairs(img_a, lm_a, g)
        out["same"].append((match(feat_a, extract(warped), lm_a, size)[0] - truth).norm(dim=-1))
        out["same_floor"].append((lm_a - truth).norm(dim=-1))
        img_b, lm_b = resized(cache, b[s:s + batch], size)
        out["diff"].append((match(feat_a, extract(img_b), lm_a, size)[0] - lm_b).norm(dim=-1))
        out["diff_floor"].append((lm_a - lm_b).norm(dim=-1))
        out["iod_a"].append(inter_ocular(truth))
        out["iod_b"].append(inter_ocular(lm_b))
    cat = {k: torch.cat(v) for k, v in out.items()}
    return {**_summary(cat["same"], cat["same_floor"], cat["iod_a"], "same"),
            **_summary(cat["diff"], cat["diff_floor"], cat["iod_b"], "diff")}


@torch.no_grad()
def photo_probe(extract, size: int, pairs: int = 50, seed: int = 0) -> dict[str, float]:
    """Same-image matching under random TPS warps on a real photograph that ships with scikit-image
    (`astronaut`, a portrait): its head and shoulders (the top-centre 320 x 320 of 512 x 512, framed
    like the synthetic faces), resized to `size`. Errors in pixels at that size, and the floor."""
    from skimage.data import astronaut

    g = torch.Generator().manual_seed(seed)
    photo = torch.from_numpy(astronaut()[:320, 80:400]).permute(2, 0, 1)[None].float() / 255
    photo = F.interpolate(photo, size=(size, size), mode="area")
    points = size * (0.2 + 0.6 * torch.rand(pairs, 16, 2, generator=g))   # inside, away from the borders
    warped, truth, _ = warped_pairs(photo.expand(pairs, -1, -1, -1), points, g)
    ref, query = extract(torch.cat([photo, warped])).split([1, pairs])   # one photo: its features once
    err = (match(ref.expand(pairs, -1, -1, -1), query, points, size)[0] - truth).norm(dim=-1)
    return {"photo_px": err.mean().item(), "photo_px_median": err.median().item(),
            "photo_floor_px": (points - truth).norm(dim=-1).mean().item()}


def probe_data(data: DataSpec):
    """The labelled faces a training run's matching probe uses, and a line that says which: the run's own
    validation split when it has landmarks (and two faces or more), else the synthetic validation faces at the
    same --image_size (an image folder, a source without landmarks or without a val split)."""
    from .data import load_split, load_tensors
    from .errors import UserError
    labelled = data.dataset == "synthetic"
    if data.dataset not in ("synthetic", "imagefolder"):    # an image folder has no landmarks: not read again
        try:                                                # the rows first: no cache of images without landmarks
            labelled = "landmarks" in load_split(data, "val").column_names
        except UserError:                                   # no val split
            pass
    if labelled:
        cache = load_tensors(data, "val")
        if cache.landmarks.shape[1] and len(cache) >= 2:
            known = bool((np.asarray(cache.identity) >= 0).any())
            return cache, (f"--dataset {data.dataset}, val split, {len(cache)} faces"
                           + ("" if known else "; identities unknown: two images count as two identities"))
    synthetic = dataclasses.replace(data, dataset="synthetic", data_dir=None, num_images=None, add_data=())
    cache = load_tensors(synthetic, "val")
    return cache, (f"the synthetic val split ({len(cache)} faces, {synthetic.variant}), because --dataset "
                   f"{data.dataset} has no labelled val split of two faces or more")


def guarded(probe, *args, **kwargs):
    """probe(*args, **kwargs), or None with a warning when it fails: a probe is a diagnostic, and never costs a
    training run its weights or its end."""
    import logging
    try:
        return probe(*args, **kwargs)
    except Exception as e:
        logging.getLogger("lead").warning("matching probe failed, skipped (%s: %s)", type(e).__name__,
                                          str(e).splitlines()[0][:200] if str(e) else "")
        return None


def probe_all(extractors: dict, cache, size: int, pairs: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """matching_probe and photo_probe for each named extractor (images in [0, 1] -> feature maps)."""
    return {name: {**matching_probe(f, cache, size, pairs=pairs, seed=seed),
                   **photo_probe(f, size, pairs=max(pairs // 2, 1), seed=seed)} for name, f in extractors.items()}


def probe_line(results: dict[str, dict[str, float]]) -> str:
    """One log line: each extractor's mean errors, then the floor of leaving points in place."""
    first = next(iter(results.values()))

    def col(key: str, floor: str, fmt: str) -> str:
        return " / ".join(fmt % r[key] for r in results.values()) + " / " + fmt % first[floor]

    return (f"probe ({' / '.join(results)} / points left in place): "
            f"same identity {col('same_iod', 'same_floor_iod', '%.1f')} % IOD, "
            f"different identity {col('diff_iod', 'diff_floor_iod', '%.1f')} % IOD, "
            f"astronaut photo {col('photo_px', 'photo_floor_px', '%.2f')} px")


# The matching table's columns: a result's key -> (header, format spec or function). A result is probe_all's
# figures of one model, with its "dim" where known.
MATCH_COLUMNS = {
    "dim": ("dim", ""),
    "same_px": ("same id. px", ".2f"), "same_iod": ("same id. % IOD", ".1f"),
    "diff_px": ("different id. px", ".2f"), "diff_iod": ("different id. % IOD", ".1f"),
    "diff_iod_median": ("different id. median % IOD", ".1f"),
    "diff_miss": ("different id. > 1 IOD", lambda share: f"{100 * share:.0f} %"),
    "photo_px": ("astronaut px", ".2f"),
    "same_px70": ("same id. px at 70", ".2f"), "diff_px70": ("different id. px at 70", ".2f"),   # DVE's protocol
}
FLOORED = ("same_px", "same_iod", "diff_px", "diff_iod", "photo_px", "same_px70", "diff_px70")   # have a floor


def floor_of(result: dict) -> dict:
    """The figures of leaving every point where it is (no features: dim 0), under the keys of a model's."""
    return {"dim": 0, **{k: result.get(k.replace("_", "_floor_", 1)) for k in FLOORED}}


def matching_table(rows, columns, label: str = "features") -> list[str]:
    """The matching table in markdown (Table 1's kind): a row per (name, result) of `rows`, the result's figures of
    `columns` (keys of MATCH_COLUMNS, or (key, header, format) for any other key, such as a paper's figure), then
    the floor of leaving the points in place (the same pairs for every model: the first result's floor).
    A missing figure is '–'; the floor row leaves blank what has no floor."""
    cols = [c if isinstance(c, tuple) else (c, *MATCH_COLUMNS[c]) for c in columns]
    rows = list(rows)
    lines = [_line([label, *(header for _, header, _ in cols)]), _line(["---"] * (len(cols) + 1))]
    lines += [_line([name, *(_cell(result.get(k), fmt, "–") for k, _, fmt in cols)]) for name, result in rows]
    first = next((result for _, result in rows if any(floor_of(result)[k] is not None for k in FLOORED)), None)
    if first is not None:
        floor = floor_of(first)
        lines.append(_line(["points left in place", *(_cell(floor.get(k), fmt, "") for k, _, fmt in cols)]))
    return lines


def _cell(value, fmt, missing: str) -> str:
    if value is None:
        return missing
    return fmt(value) if callable(fmt) else format(value, fmt)


def _line(cells) -> str:
    """A markdown table row; an empty cell as '| |'."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def probe_table(probe_result: dict, data: str | None = None) -> list[str]:
    """The training probe's matching table (a model card's), with the floor; `data` says on what."""
    if not probe_result:
        return []
    return ([f"Matching probe on {data}.", ""] if data else []) + \
        matching_table(probe_result.items(), ("same_iod", "diff_iod", "photo_px"), "matching probe (mean)")
