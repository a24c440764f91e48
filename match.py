"""Matching (Sec. 4.1, Table 1, Fig. 3-4): carry points from a reference image to a query image, or run the
matching benchmark.

    python match.py --ref a.jpg --query b.jpg --ref_points "30,40;60,40" --json out.json --out match.png
    python match.py --ref a.jpg --query b.jpg --heatmap 0 --out fig3.png          # point 0's similarity map
    python match.py --benchmark --model runs/x/distill/final runs/x/byol/final random-resnet18 nmf:64 \\
        --hypercolumn_from runs/x/byol/final --pairs 500                            # Table 1 on the test split

A point's descriptor is read at the point (bilinearly) in the reference's feature map; its match is the arg-max
of the cosine similarity over the query's feature map upsampled to the input resolution (as ContrastLandmark).
Images of any size and mode are converted to RGB (EXIF rotation applied); each photo is cropped to its largest
face (common/detect.py; --no_face_crop: the whole frame, as when no face is found or the reference points leave
the face), and the crop is resized to the model's training size (its config.json, or --size); a whole frame is
resized so that its shorter side is that size. Query points can only land inside the query's crop. Points are
mapped back to each image's own pixels.
Heavy modules are imported when needed: the two-image command spends most of its time importing torch.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

DEMO_MODEL = "runs/demo/distill/final"            # the demo's, trained on synthetic faces (bash demo.sh)
REAL_MODEL = "runs/demo_real/distill/final"       # the real-face recipe's (bash demo.sh --real DIR)
PICTURE_HEIGHT = 256                              # --out draws both images at this height
logger = logging.getLogger("lead")


def get_args_parser() -> argparse.ArgumentParser:
    from common.cli import HelpWithDefaults, at_least, data_args  # light: `datasets` loads only when data is read
    from common.protocols import PROTOCOLS
    parser = argparse.ArgumentParser("Point matching between images with dense features", parents=[data_args()],
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--model", nargs="+", default=None,
                        help=f"stage-2 or stage-1 final/, Hub id, random-ARCH, pca:K, nmf:K (default: for photos and real "
                             f"data sets {REAL_MODEL} when it exists, for the synthetic faces {DEMO_MODEL})")
    parser.add_argument("--hypercolumn_from", default=None, help="the stage-1 model that pca:K / nmf:K reduce")
    parser.add_argument("--size", type=int, default=None, help="shorter side fed to the model (default: its own)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model runs (default auto: cuda when a GPU is available, else cpu)")
    g = parser.add_argument_group("Two images")
    g.add_argument("--ref", help="reference image, or SPLIT:INDEX of --dataset (its landmarks are the points; SPLIT "
                                 "pretrain, train, val, test or all)")
    g.add_argument("--query", help="query image, or SPLIT:INDEX of --dataset")
    g.add_argument("--ref_points", default=None, help='points of the reference, "x,y;x,y" in its pixels')
    g.add_argument("--ref_points_file", default=None, help="a JSON list of [x, y] in the reference's pixels")
    g.add_argument("--grid", type=int, default=5, help="without points: a grid x grid lattice over the reference")
    g.add_argument("--json", default=None, help="write ref_points, query_points, scores here")
    g.add_argument("--out", default=None, help="draw the pair with the matches (PNG)")
    g.add_argument("--heatmap", type=int, default=None, help="with --out: draw point I's similarity over the query")
    g.add_argument("--no_face_crop", action="store_true",
                   help="match the whole frames; by default each photo in which a face is found is cropped to its "
                        "largest face (common/detect.py), framed as the training faces, and matched at the model's size")
    g = parser.add_argument_group("Benchmark")
    g.add_argument("--benchmark", action="store_true", help="run the matching benchmark instead")
    g.add_argument("--protocol", default="ours", choices=("ours", *sorted(PROTOCOLS)),
                   help="ours: random pairs, the query alone warped (strongly), errors in % IOD and px at --size; "
                        "dve: DVE's test_matching.py exactly (consecutive pairs, both images mildly warped, arg-max on "
                        "the feature grid, px of a 70 x 70 frame: the paper's Table 1); cl: ContrastLandmark's reading "
                        "of it (96 px, features upsampled and normalised; common/dve_matching.py)")
    g.add_argument("--pairs", type=at_least(1), default=None,
                   help="pairs of each kind (same / different identity); default 500 (ours), all (dve, cl)")
    g.add_argument("--split", default="test", help="data split of the benchmark")
    g.add_argument("--output_dir", default="runs/matching", help="where matching.json goes")
    g.add_argument("--fit_rows", type=int, default=8192, help="hypercolumn vectors PCA / NMF are fitted on")
    g.add_argument("--seed", type=int, default=0)
    return parser


def fail(message: str):
    from common.errors import UserError
    raise UserError(message)


def read_points(args, width: int, height: int, box=None) -> list[list[float]]:
    """The reference points in its pixels: --ref_points, --ref_points_file, or a centred grid over `box` (the face;
    default the whole image)."""
    if args.ref_points and args.ref_points_file:
        fail("give --ref_points or --ref_points_file, not both")
    if args.ref_points:
        try:
            points = [[float(v) for v in p.split(",")] for p in args.ref_points.strip().strip(";").split(";")]
        except ValueError:
            fail(f'--ref_points {args.ref_points!r}: expected "x,y;x,y"')
    elif args.ref_points_file:
        try:
            points = json.loads(Path(args.ref_points_file).read_text())
        except (OSError, ValueError) as e:
            fail(f"--ref_points_file {args.ref_points_file}: cannot read a JSON list of [x, y] ({type(e).__name__})")
    else:
        x0, y0, x1, y1 = box or (-0.5, -0.5, width - 0.5, height - 0.5)
        ticks = [(0.2 + 0.6 * i / max(args.grid - 1, 1)) for i in range(args.grid)]
        return [[min(max(x0 + t * (x1 - x0), -0.5), width - 0.5), min(max(y0 + u * (y1 - y0), -0.5), height - 0.5)]
                for u in ticks for t in ticks]
    if not isinstance(points, list) or not points or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in points):
        fail("the reference points must be a non-empty list of [x, y] pairs")
    for x, y in points:
        if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            fail(f"point ({x:g}, {y:g}) is outside the reference image ({width} x {height})")
    return points


def load_image(args, path: str):
    """An image file (RGB, EXIF rotation applied), or SPLIT:INDEX, a row of --dataset at its cache size with
    its landmarks. Returns (image, landmarks or None)."""
    from common.imageio import BadImage, open_rgb
    if path is None:
        fail("two-image matching needs --ref and --query (or --benchmark)")
    split, _, index = path.rpartition(":")
    if split in ("pretrain", "train", "val", "test", "all") and index.isdigit() and not Path(path).exists():
        from PIL import Image

        from common.cli import from_flags
        from common.data import DataSpec, load_tensors
        cache = load_tensors(from_flags(DataSpec, vars(args)), split)
        if int(index) >= len(cache):
            fail(f"{path}: the {split} split has {len(cache)} images")
        row = cache.batch([int(index)])
        visible = row["visible"][0].bool()
        return Image.fromarray(row["images"][0].permute(1, 2, 0).numpy()), row["landmarks"][0][visible].tolist()
    try:
        return open_rgb(path, exif=True), None
    except BadImage as e:
        fail(f"{path}: {e}")


def to_model(image, side: int, box=None):
    """An RGB image as a model input [1, 3, h, w] in [0, 1] and the affine map (scale [2], offset [2]) that takes
    its points to the input's: the square `box` (a face crop) resized to side x side, or without one the whole
    image with min(h, w) = side."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    if box is not None:
        from common.imageio import crop_resize
        pixels, scale, offset = crop_resize(image, box, side)
        return torch.tensor(pixels)[None].float() / 255, torch.from_numpy(scale), torch.from_numpy(offset)
    w, h = image.size
    s = side / min(w, h)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h])
    return x, scale, 0.5 * scale - 0.5                           # (p + 0.5) * scale - 0.5


def inside(points, box) -> bool:
    x0, y0, x1, y1 = box
    return all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in points)


def face_boxes(args, images: dict) -> dict:
    """Each photo's face crop (common.detect.face_box), or None: with --no_face_crop, for a data set's row (cropped
    to its box already), or where no face is found (the whole frame is then matched, and the log says so)."""
    if args.no_face_crop:
        return {k: None for k in images}
    from common.detect import face_box
    boxes = {k: None if labelled else face_box(image) for k, (image, labelled) in images.items()}
    for k, box in boxes.items():
        if box is None and not images[k][1]:
            logger.info("--%s: no face found, the whole frame is matched", k)
    return boxes


def resolve_model(args, real: bool) -> list[str]:
    """--model, else the demo's model for the data at hand: the real-face recipe's for photos and real data sets
    (`real`), the synthetic demo's for synthetic faces, the other one when that one has not been trained."""
    if args.model:
        return args.model
    order = [REAL_MODEL, DEMO_MODEL] if real else [DEMO_MODEL, REAL_MODEL]
    found = [m for m in order if (Path(m) / "config.json").is_file()]
    if not found:
        fail(f"no --model given, and neither demo model ({DEMO_MODEL}, {REAL_MODEL}) exists: run `bash demo.sh` "
             "(or `bash demo.sh --real DIR`) first, or pass --model (a stage-2 or stage-1 final/ folder or a Hub id)")
    if found[0] != order[0]:
        logger.info("--model: %s (%s has not been trained)", found[0], order[0])
    return found[:1]


def match_two(args, loaded=None) -> dict:
    """The two-image command; returns (and writes with --json) the points in each image's own pixels. `loaded`: the
    feature source of --model, already loaded (app.py loads it once)."""
    import time
    (ref, landmarks), (query, query_lm) = load_image(args, args.ref), load_image(args, args.query)
    spec = resolve_model(args, real=args.dataset != "synthetic" or landmarks is None or query_lm is None)[0]
    boxes = face_boxes(args, {"ref": (ref, landmarks is not None), "query": (query, query_lm is not None)})
    points = landmarks if landmarks and not (args.ref_points or args.ref_points_file) else \
        read_points(args, *ref.size, boxes["ref"])
    if boxes["ref"] is not None and not inside(points, boxes["ref"]):      # points beyond the face: whole frames
        logger.info("reference points outside the face found in --ref: the whole frames are matched")
        boxes = {"ref": None, "query": None}
    if args.heatmap is not None and not 0 <= args.heatmap < len(points):
        fail(f"--heatmap {args.heatmap}: there are {len(points)} points (0-{len(points) - 1})")
    import torch

    from common.cli import pick_device
    from common.features import check_source, load_source
    if check_source(spec, args.hypercolumn_from) in ("pca", "nmf"):
        fail(f"{spec}: pca / nmf need training images; use them in --benchmark")
    device = pick_device(args.device)
    source = (loaded or load_source(spec)).to(device)
    t0 = time.perf_counter()
    side = args.size or source.input_size
    (xr, sr, orr), (xq, sq, oq) = to_model(ref, side, boxes["ref"]), to_model(query, side, boxes["query"])
    ref_model = torch.tensor(points, dtype=torch.float32) * sr + orr
    from common.metrics import match
    with torch.no_grad():
        fr, fq = source(xr.to(device)).float().cpu(), source(xq.to(device)).float().cpu()
    q_model, scores = match(fr, fq, ref_model[None], xr.shape[-2:], query_size=xq.shape[-2:])
    q_pts = (q_model[0] - oq) / sq
    result = {"model": spec, "input_size": side, "ref": args.ref, "query": args.query, "ref_points": points,
              "query_points": q_pts.tolist(), "scores": scores[0].tolist(), "ref_face": boxes["ref"],
              "query_face": boxes["query"]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    result["seconds_model_to_json"] = time.perf_counter() - t0
    if args.out:
        t1 = time.perf_counter()
        heat = None
        if args.heatmap is not None:
            heat = in_image(heatmap(fr, fq, ref_model[args.heatmap], xr.shape[-2:], xq.shape[-2:]), sq, oq, query.size,
                            PICTURE_HEIGHT)
        from common.viz import match_picture
        match_picture(ref, query, points, result["query_points"], heat, args.heatmap, PICTURE_HEIGHT,
                      boxes=(boxes["ref"], boxes["query"])).save(args.out)
        result["seconds_picture"] = time.perf_counter() - t1
    return result


def in_image(heat, scale, offset, size, height: int):
    """A map over the model's input [h, w] laid over the image of `size` (w, h) through the input's affine map, at
    the picture's `height` (the image scaled to it); 0 where the input does not reach (outside a face crop)."""
    import torch
    import torch.nn.functional as F
    s = height / size[1]
    w, h = max(1, round(size[0] * s)), height
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    at = ((torch.stack([xs, ys], -1) + 0.5) / s - 0.5) * scale + offset    # picture pixel -> image -> model pixel
    grid = (2 * at + 1) / torch.tensor([heat.shape[1], heat.shape[0]]) - 1
    return F.grid_sample(heat[None, None], grid[None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0, 0]


def heatmap(fr, fq, point, ref_hw, query_hw):
    """Cosine similarity [h, w] of one reference point's descriptor with every position of the query (upsampled)."""
    import torch.nn.functional as F
    from common.metrics import sample_at
    desc = F.normalize(sample_at(fr.float(), point[None, None], ref_hw)[0, 0], dim=0)
    up = F.normalize(F.interpolate(fq.float(), size=tuple(query_hw), mode="bilinear", align_corners=False)[0], dim=0)
    return (desc[:, None, None] * up).sum(0)


def benchmark(args) -> dict:
    """Table 1: same- and different-identity matching of every model on --pairs pairs of each kind."""
    import torch
    import torch.nn.functional as F
    from common.cli import from_flags, pick_device
    from common.data import DataSpec, load_tensors
    from common.features import check_source, load_model, load_source
    from common.probe import matching_table, probe_all
    from common.protocols import PROTOCOLS
    data = from_flags(DataSpec, vars(args))
    specs = resolve_model(args, real=args.dataset != "synthetic")
    reduced = [check_source(spec, args.hypercolumn_from) in ("pca", "nmf") for spec in specs]
    device = pick_device(args.device)
    sources = {spec: load_source(spec).to(device) for spec, r in zip(specs, reduced) if not r}
    owners = list(sources.values()) + ([load_model(args.hypercolumn_from)] if any(reduced) else [])
    protocol = PROTOCOLS.get(args.protocol)
    if protocol and args.size:
        fail(f"--size {args.size} with --protocol {args.protocol}: the protocol's crop ({protocol.crop} px) is the size")
    size = protocol.crop if protocol else args.size or max(s.input_size for s in owners)   # one size for all
    if any(reduced):                                          # PCA / NMF fitted on training images as evaluated
        train = load_tensors(data, "train", protocol.resize if protocol else None)
        fit = torch.from_numpy(train.images[:min(len(train), 1000)].copy()).float()
        if protocol:
            fit = fit[..., protocol.margin:protocol.margin + size, protocol.margin:protocol.margin + size]
        fit = F.interpolate(fit, size=(size, size), mode="area").round().to(torch.uint8)
        sources.update({spec: load_source(spec, args.hypercolumn_from, fit, args.fit_rows).to(device)
                        for spec, r in zip(specs, reduced) if r})
    names = [sources[spec].name for spec in specs]
    names = [n if names.count(n) == 1 else spec for n, spec in zip(names, specs)]   # two of a kind: their paths
    extract = {n: (lambda x, s=sources[spec]: s(x.to(device)).float().cpu()) for n, spec in zip(names, specs)}
    if protocol is None:
        results = probe_all(extract, load_tensors(data, args.split), size, args.pairs or 500, args.seed)
    else:                                                     # each image resized once to the protocol's size
        from common.dve_matching import dve_matching
        cache = load_tensors(data, args.split, protocol.resize)
        results = {n: dve_matching(extract[n], cache, protocol, args.protocol, args.pairs, args.seed,
                                   groups=sources[spec].groups) for n, spec in zip(names, specs)}
    table = {"size": size, "pairs": args.pairs or 500 if protocol is None else results[names[0]]["pairs"],
             "split": args.split, "protocol": args.protocol,
             "models": [{"name": n, "model": spec, "dim": sources[spec].dim, **results[n]}
                        for n, spec in zip(names, specs)]}
    from common.files import write_json
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "matching.json", table)
    columns = ("dim", "same_px", "same_iod", "diff_px", "diff_iod", "photo_px") if protocol is None else \
        ("dim", "same_px70", "diff_px70")
    shown = matching_table(((m["name"], m) for m in table["models"]), columns)
    logger.info("matching, protocol %s (%d pairs of each kind, %d px, %s split) -> %s\n%s", args.protocol,
                table["pairs"], size, args.split, out / "matching.json", "\n".join(shown))
    return table


def main(args) -> dict:
    if args.benchmark:
        return benchmark(args)
    if args.protocol != "ours":
        fail(f"--protocol {args.protocol} is a --benchmark protocol; two images are matched at the model's size")
    result = match_two(args)
    logger.info("%d points matched in %.2f s from the loaded model%s", len(result["ref_points"]),
                result["seconds_model_to_json"], f" -> {args.json}" if args.json else "")
    return result


if __name__ == "__main__":
    from common.cli import run_cli
    run_cli(main, get_args_parser())
