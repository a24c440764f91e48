"""Stage 3: landmark regression on frozen features, the few-shot protocol, and its evaluation (Sec. 3.4, 4.2).

    python regress.py --features_from runs/x/distill/final --output_dir runs/x/regress           # all labels
    python regress.py --features_from runs/x/distill/final runs/x/byol/final random-resnet18 nmf:64 \\
        --hypercolumn_from runs/x/byol/final --num_train 1 5 10 20 50 100 --seeds 3               # Table 5
    accelerate launch regress.py ...                 # the runs (source x size x seed) are shared out

Each face is cropped by the protocol (--protocol dve | cl, or --resize / --crop; common/protocols.py). For every
feature source (a stage-2 or stage-1 final/, a Hub id, random-ARCH, pca:K / nmf:K of the --hypercolumn_from
hypercolumn fitted on the training images), the frozen features of each image are computed once (kept in memory
within --cache_gb), then for every --num_train and seed a LandmarkRegressor is trained on that many labelled
training images, selected on the validation split and scored on the test split: % inter-ocular distance for faces,
PCK for birds, beside the floor of predicting the training mean shape. supervised:MODEL (the supervised ceiling)
trains MODEL's network from scratch with the regressor instead, end to end on the same labels. Writes
OUTPUT/results.json, results.md, predictions.png (test images: predicted filled, true as rings), fewshot.png
(several --num_train), runs/ (one JSON per run: --resume skips them) and final/ (the first source's regressor on
the most labels, seed 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

from common.cli import (HelpWithDefaults, at_least, data_args, flag_defaults, from_flags, hub_args, pick_device,
                        run_cli, zoom_range)
from common.data import DataSpec, describe
from common.detect import DEFAULT as DEFAULT_DETECTOR, DETECTORS
from common.errors import UserError
from common.features import FeatureStore, Supervised, check_source, load_source
from common.files import write_json
from common.hub import HubTarget, data_line, model_card
from common.models import LandmarkRegressor
from common.optim import effective_lr
from common.predict import Predictor, default_model, list_inputs, predict_files
from common.protocols import PROTOCOLS, Protocol, resolve
from common.regression import (RegressorSpec, Scorer, TrainedStore, finite, load_eval_split, mean_shape, predict,
                               train_regressor, without_val)
from common.training import check_resume_args, make_accelerator, prepare_output, save_args
from common.viz import landmark_grid

logger = logging.getLogger("lead")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Landmark regression on frozen features (stage 3)", parents=[data_args()],
                                     formatter_class=HelpWithDefaults)
    g = parser.add_argument_group("Features")
    g.add_argument("--features_from", nargs="+", default=None,
                   help="one or more sources: stage-2/stage-1 final/ folders or Hub ids, random-ARCH, pca:K, nmf:K, "
                        "supervised:MODEL (MODEL's network from scratch, trained end to end with the regressor on the "
                        "same labels: the supervised ceiling)")
    g.add_argument("--hypercolumn_from", default=None, help="the stage-1 model (or random-ARCH) pca:K / nmf:K reduce")
    g.add_argument("--fit_rows", type=at_least(16), default=8192, help="hypercolumn vectors PCA / NMF are fitted on")
    g.add_argument("--cache_gb", type=float, default=4.0, help="memory for cached features (beyond: on the fly)")
    g.add_argument("--feature_batch", type=at_least(1), default=32, help="images per forward of the extractor")
    g = parser.add_argument_group("Protocol")
    g.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="the reference preprocessing by name (common/protocols.py): dve (resize 100, crop 15 a side: "
                        "70 px, DVE's aflw-mtfl and 300w configs) or cl (136, crop 20: 96 px, ContrastLandmark's and "
                        "the LEAD paper's; the default when neither this nor --resize / --crop is given)")
    g.add_argument("--resize", type=at_least(8), default=None,
                   help="instead of --protocol: each face's box is resized to this side ...")
    g.add_argument("--crop", type=at_least(8), default=None, help="... and centre-cropped to this one")
    g.add_argument("--num_train", type=at_least(1), nargs="+", default=None,
                   help="labelled training images per run (several: the few-shot curve); default all")
    g.add_argument("--seeds", type=at_least(1), default=1, help="runs per --num_train, each on other images")
    g.add_argument("--metric", default="auto", choices=["auto", "iod", "pck"], help="auto: pck for cub, else iod")
    g.add_argument("--eye_idx", type=int, nargs=2, default=None, help="eye points for iod (default: 5 or 68 points)")
    g.add_argument("--pck_alpha", type=float, default=0.05, help="PCK threshold as a share of the image side")
    g.add_argument("--score_split", default="test", choices=["test", "val"],
                   help="the split the figures are scored on: test (default), or val for studies that choose a model "
                        "or a recipe (the test split is then never read; selection and score share val)")
    g.add_argument("--test_zoom_out", type=zoom_range, default=None, metavar="LO,HI",
                   help="synthetic unaligned: the test split's zoom-out range alone (train and select at --zoom_out): "
                        "scale sensitivity to unseen scales (LEAD Fig. 9)")
    g = parser.add_argument_group("Regressor")
    g.add_argument("--intermediate", type=at_least(1), default=50, help="virtual keypoints (heatmaps) per landmark")
    g.add_argument("--shared_heatmaps", action="store_true", help="one set of --intermediate for all landmarks")
    g.add_argument("--softargmax_mul", type=float, default=100.0, help="heatmap logits are scaled by this")
    g.add_argument("--loss", default="l2", choices=["l2", "smooth_l1"])
    g.add_argument("--lr", type=float, default=8e-3,
                   help="Adam (AMSGrad) base learning rate, for 256 images (default 8e-3: DVE's 1e-3 at batch 32); "
                        "the rate used is --lr x --batch_size / 256, every stage's rule (MAE's), also when fewer "
                        "labelled images make the batch smaller; written to args.json as effective_lr")
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--batch_size", type=at_least(1), default=32)
    g.add_argument("--epochs", type=at_least(1), default=50, help="passes over the labelled images ...")
    g.add_argument("--min_steps", type=at_least(1), default=300, help="... but at least this many steps")
    g.add_argument("--eval_every", type=at_least(1), default=100, help="steps between validation passes")
    g = parser.add_argument_group("Run")
    g.add_argument("--output_dir", default="runs/regress")
    g.add_argument("--resume", action="store_true", help="keep the finished runs in OUTPUT/runs/, do the rest")
    g.add_argument("--overwrite", action="store_true", help="replace a used --output_dir")
    g.add_argument("--seed", type=int, default=0)
    hub_args(parser)
    g = parser.add_argument_group("Predict (landmarks on photos, with a trained regressor: README, Predicting)")
    g.add_argument("--predict", nargs="+", default=None, metavar="PATH",
                   help="image files, folders (recursively) or .txt lists of paths: every face's landmarks")
    g.add_argument("--model", default=None, help="a regressor's final/ or Hub id (default: the real-face recipe's "
                   "runs/demo_real/regress/final; regress68/final with --landmarks 68)")
    g.add_argument("--json", default=None, metavar="OUT.jsonl", help="one JSON line per image")
    g.add_argument("--out", default=None, metavar="DIR", help="each photo drawn with its faces and points")
    g.add_argument("--detector", default=DEFAULT_DETECTOR, choices=sorted(DETECTORS),
                   help="face detector (experiments/detectors.md)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def plan(args, n_train: int) -> list[tuple[int, int, int]]:
    """(source index, labelled images, seed) of every run; a size larger than the training split is cut to it."""
    sizes = sorted({min(n, n_train) for n in args.num_train}) if args.num_train else [n_train]
    return [(s, n, seed) for s in range(len(args.features_from)) for n in sizes for seed in range(args.seeds)]


def build_stores(args, spec: str, data: dict, device) -> tuple[dict, dict]:
    """The feature source and its stores for the three splits, train first within the --cache_gb budget (a network
    trained end to end: its training features with gradients, the others per batch, nothing cached)."""
    t0 = time.perf_counter()
    source = load_source(spec, args.hypercolumn_from, data["train"]["images"], args.fit_rows, device)
    budget, stores = args.cache_gb * 2**30, {}
    if isinstance(source, Supervised):
        budget, stores["train"] = 0, TrainedStore(source, data["train"]["images"], args.feature_batch)
    for split in ("train", "val", "test"):
        if split in stores:
            continue
        if split == "test" and data["test"] is data["val"]:      # --score_split val: the same images
            stores["test"] = stores["val"]
            continue
        stores[split] = FeatureStore(source, data[split]["images"], budget, args.feature_batch)
        budget -= stores[split].nbytes
    info = {"features_from": spec, "name": source.name, "dim": source.dim,
            "cached": {k: v.kind or "no" for k, v in stores.items()},
            "cache_mb_per_image": stores["val"].bytes_per_image / 2**20, "features_s": time.perf_counter() - t0}
    logger.info("%s: %s, %d-d, cached %s (%.2f MB per image), %.1f s", spec, source.name, source.dim,
                info["cached"], info["cache_mb_per_image"], info["features_s"])
    return stores, info


def one_run(args, stores, data, scorer, task, num_points, protocol: Protocol) -> tuple[dict, LandmarkRegressor,
                                                                                       torch.Tensor]:
    source, n, seed = task
    # the labelled images depend on (seed, n) only: every source is trained on the same ones
    run_seed = args.seed * 1_000_003 + seed
    idx = torch.randperm(len(data["train"]["images"]), generator=torch.Generator().manual_seed(run_seed))[:n]
    t0 = time.perf_counter()
    network = stores["train"].source if isinstance(stores["train"], TrainedStore) else None
    if network is not None:                                      # every run of the ceiling starts from scratch
        network.reset(run_seed)
    meta = {"features_from": args.features_from[source], "dataset": args.dataset, "protocol": protocol.name,
            "resize": protocol.resize, "crop": protocol.crop}
    reg, record = train_regressor(from_flags(RegressorSpec, vars(args)), stores, data, idx, run_seed, scorer,
                                  num_points, network, meta)
    pred = predict(reg, stores["test"], scorer.size)
    test, per_point = scorer(pred, data["test"]["landmarks"], data["test"]["visible"])
    floor, _ = scorer(mean_shape(data, idx).expand_as(pred), data["test"]["landmarks"], data["test"]["visible"])
    record.update(source=source, num_train=n, seed=seed, test=test, per_landmark=per_point, mean_shape_test=floor,
                  train_s=time.perf_counter() - t0)
    logger.info("%s, %d labelled, seed %d: test %.2f (mean shape %.2f), validation %.2f at step %d",
                args.features_from[source], n, seed, test, floor, record["val"], record["best_step"])
    return record, reg, pred


def save_final(args, hub: HubTarget, out: Path, reg: LandmarkRegressor, record: dict, pred: torch.Tensor, data: dict,
               name: str, metric: str, protocol: Protocol):
    """final/ (the regressor and its card) and predictions.png, from the first source's run on the most labels.
    config.json says what the regressor's input is: its features and the protocol's crop of the data set's box."""
    ref, feats = hub.model_ref(out), args.features_from[0]
    reg.save_pretrained(out / "final")
    load = f'load_model("{feats}")' if feats.partition(":")[0] not in ("pca", "nmf") else \
        f'load_source("{feats}", "{args.hypercolumn_from}", train_images)   # refitted on the training images'
    (out / "final" / "README.md").write_text(model_card(
        f"LEAD stage 3: landmark regressor on {name} features",
        f"A few-label landmark regressor (DVE / LEAD protocol: {reg.intermediate} soft-argmax heatmaps "
        f"{'shared by all landmarks' if reg.shared else 'per landmark'} and a linear map to its "
        f"{reg.num_points} points) trained by `regress.py` on the frozen features of "
        f"`{feats}`, which it needs at inference.",
        [f"features: `{feats}` (frozen); protocol {protocol.describe()}",
         f"{data_line(from_flags(DataSpec, vars(args)), 'train')}; {record['num_train']} labelled images, lr "
         f"{args.lr} per 256 images ({effective_lr(args.lr, args.batch_size):.3g} at batch {args.batch_size})"],
        [f"- test error ({'% inter-ocular distance' if metric == 'iod' else '100 - PCK'}): {record['test']:.2f}; "
         f"the mean shape of the labelled images scores {record['mean_shape_test']:.2f}"],
        "from common.features import load_model, load_source\nfrom common.models import LandmarkRegressor\n"
        f"features = {load}\nregressor = LandmarkRegressor.from_pretrained(\"{ref}\")\n"
        f"points, _ = regressor(features(crops))   # crops [B, 3, {protocol.crop}, {protocol.crop}] in [0, 1] -> "
        "[B, K, 2] in [-1, 1]",
        f"python regress.py --predict photo.jpg photos/ --model {ref} --json landmarks.jsonl --out drawn/   # every "
        "face, in each photo's pixels" if feats.partition(":")[0] not in ("pca", "nmf") else None,
        ["facial-landmarks", "landmark-regression"]))
    k = min(16, len(pred))
    truth = torch.where(data["test"]["visible"][..., None], data["test"]["landmarks"], float("nan"))
    landmark_grid(data["test"]["images"][:k].numpy(), pred[:k].numpy(), truth=truth[:k].numpy(),
                  cols=8, scale=3.0).save(out / "predictions.png")


def summarise(args, records: list[dict], infos: dict, data: dict, metric: str, protocol: Protocol) -> dict:
    rows = []
    for s, spec in enumerate(args.features_from):
        for n in sorted({r["num_train"] for r in records}):
            runs = [r for r in records if r["source"] == s and r["num_train"] == n]
            test = torch.tensor([r["test"] for r in runs])
            floor = torch.tensor([r["mean_shape_test"] for r in runs])
            rows.append({"features_from": spec, **{k: infos.get(s, {}).get(k) for k in ("name", "dim")},
                         "num_train": n, "runs": len(runs), "mean": test.mean().item(),
                         "std": test.std().item() if len(runs) > 1 else 0.0, "mean_shape": floor.mean().item(),
                         "per_landmark": finite(torch.tensor([[math.nan if v is None else v for v in r["per_landmark"]]
                                                              for r in runs]).nanmean(0))})
    return {"dataset": describe(from_flags(DataSpec, vars(args)), args.score_split), "score_split": args.score_split,
            "variant": args.variant,
            "metric": metric,
            "error": "% inter-ocular distance" if metric == "iod" else f"100 - PCK@{args.pck_alpha} (%)",
            "splits": {k: len(v["images"]) for k, v in data.items()}, "input": [protocol.resize, protocol.crop],
            "protocol": protocol.as_dict(),
            "sources": infos, "summary": rows, "runs": records, "command": sys.argv}


def write_reports(out: Path, results: dict) -> None:
    rows = results["summary"]
    sizes = sorted({r["num_train"] for r in rows})
    names = list(dict.fromkeys((r["features_from"], r["name"], r["dim"]) for r in rows))

    def cell(r):
        return f"{r['mean']:.2f} ± {r['std']:.2f}" if r["runs"] > 1 else f"{r['mean']:.2f}"

    scored = "Test" if results.get("score_split", "test") == "test" else "Validation"
    lines = [f"{scored} error ({results['error']}), by labelled training images; model selection on validation; "
             f"protocol {results['protocol']['describe']}.", "",
             "| features | dim | " + " | ".join(map(str, sizes)) + " |", "| --- | --- |" + " --- |" * len(sizes)]
    for spec, name, dim in names:
        by_n = {r["num_train"]: r for r in rows if r["features_from"] == spec}
        lines.append(f"| {name} (`{spec}`) | {dim} | " + " | ".join(cell(by_n[n]) for n in sizes) + " |")
    floor = {r["num_train"]: r["mean_shape"] for r in rows}
    lines.append("| mean shape (no features) | 0 | " + " | ".join(f"{floor[n]:.2f}" for n in sizes) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if len(sizes) > 1:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        labels = [n for _, n, _ in names]
        for spec, name, _ in names:
            rs = [r for r in rows if r["features_from"] == spec]
            label = name if labels.count(name) == 1 else f"{name} ({spec})"      # two of a kind: their sources
            ax.errorbar([r["num_train"] for r in rs], [r["mean"] for r in rs], [r["std"] for r in rs], label=label,
                        marker="o", capsize=3)
        ax.plot(sizes, [floor[n] for n in sizes], "k--", label="mean shape")
        ax.set(xscale="log", xlabel="labelled training images", ylabel=results["error"])
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fewshot.png", dpi=120)
        plt.close(fig)


# flags of this script that change no result: a resumed run may change them (and --num_train / --seeds only add or
# drop runs); --protocol, --resize and --crop are compared by the protocol they give (`input`)
ALSO_FREE_ON_RESUME = {"cache_gb", "feature_batch", "num_train", "seeds", "protocol", "resize", "crop"}


def check_args(args) -> tuple[HubTarget, Protocol]:
    """Every user mistake that can be seen before any work, on every process, as one line; the upload target and the
    protocol."""
    out = Path(args.output_dir)
    hub = HubTarget.from_flags(args.push_to_hub, args.hub_model_id, args.hub_private, "lead-regressor")
    protocol = resolve(args.protocol, args.resize, args.crop)
    if args.dataset == "imagefolder":
        raise UserError("--dataset imagefolder has no landmarks: regress.py needs a labelled data set "
                        "(synthetic, celeba, mafl, aflw_m, aflw_r, 300w or cub)")
    if args.test_zoom_out and args.score_split != "test":
        raise UserError("--test_zoom_out changes the test split, which --score_split val does not read")
    if args.test_zoom_out and (args.dataset != "synthetic" or args.variant != "unaligned"):
        raise UserError("--test_zoom_out applies to --dataset synthetic --variant unaligned (zoomed-out faces)")
    for spec in args.features_from:
        check_source(spec, args.hypercolumn_from)
    if check_source(args.features_from[0], args.hypercolumn_from) == "supervised":
        raise UserError(f"--features_from {args.features_from[0]}: the first source is the one final/ keeps, with the "
                        "frozen features it needs; put the supervised ceiling after a frozen source")
    if args.resume:
        if (out / "args.json").is_file() and "input" not in json.loads((out / "args.json").read_text()):
            raise UserError(f"{out} was begun before --protocol (its crops were resized twice and points outside them "
                            "left out): use a new --output_dir, or --overwrite")
        now = flags(args, protocol)
        check_resume_args(now, out, ALSO_FREE_ON_RESUME, flag_defaults(get_args_parser(), now))
    return hub, protocol


def flags(args, protocol: Protocol) -> dict:
    """args.json: the flags, the lr and the input they give."""
    return {**vars(args), "effective_lr": effective_lr(args.lr, args.batch_size),
            "input": [protocol.name, protocol.resize, protocol.crop]}


def load_data(args, protocol: Protocol) -> dict:
    spec = from_flags(DataSpec, vars(args))
    data = {split: load_eval_split(spec, split, protocol) for split in ("train", "val")}
    test = dataclasses.replace(spec, zoom_out=args.test_zoom_out or args.zoom_out)
    data["test"] = load_eval_split(test, "test", protocol) if args.score_split == "test" else data["val"]
    data["train"], dropped = without_val(data["train"], data["val"])
    if dropped:
        logger.info("%d training images are also validation images: left out of training", dropped)
    if len(data["train"]["images"]) == 0:
        raise UserError("no training image is left once the validation images are taken out")
    return data


def predict_main(args) -> dict:
    """--predict: JSON lines and pictures for every image; exit status 1 when some image could not be read."""
    jsonl, out = (Path(p) if p else None for p in (args.json, args.out))
    if jsonl is None and out is None:
        raise UserError("--predict needs --json OUT.jsonl, --out DIR or both")
    if args.resume and jsonl is None:
        raise UserError("--resume continues the --json file; give it")
    if jsonl is not None and (jsonl.is_dir() or not jsonl.parent.is_dir()):
        raise UserError(f"--json {jsonl}: " + ("a folder" if jsonl.is_dir() else f"no folder {jsonl.parent}"))
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a folder")
    for path, what in ((jsonl, "--json"), (out, "--out")):
        if path is not None and path.exists() and (not path.is_dir() or any(path.iterdir())) and not (
                args.resume or args.overwrite):
            raise UserError(f"{what} {path} exists: --resume to continue it, --overwrite to replace it")
    paths = list_inputs(args.predict, skip=out)                # before the models: a typo fails at once
    if not paths:
        raise UserError(f"--predict {' '.join(args.predict)}: no image there")
    predictor = Predictor.load(args.model or default_model(args.landmarks), args.detector, args.feature_batch,
                               pick_device(args.device))
    counts = predict_files(paths, predictor, jsonl, out, resume=args.resume, overwrite=args.overwrite)
    logger.info("%d images, %d faces in %.1f s (%.1f faces/s); %d could not be read%s", counts["images"],
                counts["faces"], counts["seconds"], counts["faces"] / max(counts["seconds"], 1e-9), counts["failed"],
                f" (with the earlier run's); {counts['done_before']} done before" if counts["done_before"] else "")
    return {**counts, "exit_status": int(counts["failed"] > 0)}


def main(args) -> dict:
    if args.predict:
        return predict_main(args)
    if not args.features_from:
        raise UserError("--features_from is required (the feature sources to train on), or --predict PATH")
    out = Path(args.output_dir)
    hub, protocol = check_args(args)
    logger.info("protocol %s; lr: %g per 256 images, %g at batch %d", protocol.describe(), args.lr,
                effective_lr(args.lr, args.batch_size), args.batch_size)
    accelerator, _ = make_accelerator("no", 1, "none", out)
    if not args.resume:
        prepare_output(out, False, args.overwrite, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        if not args.resume:
            save_args(flags(args, protocol), out)
    with accelerator.main_process_first():
        data = load_data(args, protocol)
    num_points = data["train"]["landmarks"].shape[1]
    metric = args.metric if args.metric != "auto" else "pck" if args.dataset == "cub" else "iod"
    scorer = Scorer(num_points, metric, args.eye_idx, protocol.crop, args.pck_alpha)
    tasks = plan(args, len(data["train"]["images"]))
    largest = max(t[1] for t in tasks)
    stores, infos = {}, {}
    for task in tasks[accelerator.process_index::accelerator.num_processes]:
        path = out / "runs" / "{}-{}-{}.json".format(*task)
        if args.resume and path.exists():
            continue
        if task[0] not in stores:                               # one source at a time: free the last one's cache
            stores.clear()
            stores[task[0]], infos[task[0]] = build_stores(args, args.features_from[task[0]], data,
                                                           accelerator.device)
            write_json(out / "runs" / f"source-{task[0]}.json", infos[task[0]])
        record, reg, pred = one_run(args, stores[task[0]], data, scorer, task, num_points, protocol)
        if task == (0, largest, 0):                             # before the record: a resume would skip it
            save_final(args, hub, out, reg.cpu(), record, pred, data, infos[0]["name"], scorer.metric, protocol)
        write_json(path, record)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    records = [json.loads((out / "runs" / "{}-{}-{}.json".format(*t)).read_text()) for t in tasks]
    infos = {s: json.loads(p.read_text()) for s in range(len(args.features_from))
             if (p := out / "runs" / f"source-{s}.json").exists()}
    results = summarise(args, records, infos, data, scorer.metric, protocol)
    write_json(out / "results.json", results)
    write_reports(out, results)
    logger.info("results: %s\n%s", out / "results.json", (out / "results.md").read_text())
    hub.push(out / "final", "LEAD stage 3 (landmark regressor)")   # also when a resumed run had final/ already
    return results


if __name__ == "__main__":
    run_cli(main, get_args_parser())
