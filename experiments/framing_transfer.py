"""Does a regressor trained on one framing of the faces transfer to faces framed otherwise? On MTFL's validation split
only (never a test face): the training faces cropped by the 300-W rule alone (readers.mtfl_box) or with the per-photo
factor of FRAME_JITTER (the reader's), the validation faces cropped at fixed factors of the rule (tighter and looser),
one regressor each on the frozen features of --model, scored on every framing (% IOD, protocol dve).

    python experiments/framing_transfer.py --model runs/demo_real/distill/final --data ../shared/data/mtfl
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import from_flags  # noqa: E402
from common.data.readers import FRAME_JITTER, _mtfl_records, mtfl_box  # noqa: E402
from common.features import FeatureStore, eval_crops, load_source  # noqa: E402
from common.imageio import crop_resize, open_rgb  # noqa: E402
from common.protocols import PROTOCOLS  # noqa: E402
from common.regression import RegressorSpec, Scorer, mean_shape, predict, train_regressor  # noqa: E402


def crops(records: list[dict], factors: np.ndarray, resize: int, crop: int) -> dict:
    """The faces cropped by mtfl_box at each record's factor, resized to `resize`, centre-cropped to `crop`."""
    images, points = [], []
    for rec, f in zip(records, factors):
        pixels, scale, offset = crop_resize(open_rgb(rec["image"]), mtfl_box(rec["landmarks"], f), resize)
        images.append(torch.from_numpy(np.array(pixels)))
        points.append(torch.from_numpy(rec["landmarks"] * scale + offset).float())
    x, lm, vis = eval_crops(torch.stack(images), torch.stack(points), torch.ones(len(images), 5, dtype=torch.bool),
                            resize, crop)
    return {"images": x, "landmarks": lm, "visible": vis}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the frozen features (a stage-2 or stage-1 final/)")
    parser.add_argument("--data", default="../shared/data/mtfl", help="MTFL as shipped")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.75, 1.0, 1.25], help="validation framings")
    parser.add_argument("--num_train", type=int, default=9000)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    protocol = PROTOCOLS["dve"]
    records = _mtfl_records(Path(args.data), "training.txt")
    train_rec, val_rec = records[:9000][:args.num_train], records[9000:]
    jitter = np.random.default_rng(0).uniform(1 - FRAME_JITTER, 1 + FRAME_JITTER, len(records))[:len(train_rec)]
    train = {"fixed": crops(train_rec, np.ones(len(train_rec)), protocol.resize, protocol.crop),
             "jittered": crops(train_rec, jitter, protocol.resize, protocol.crop)}
    vals = {f: crops(val_rec, np.full(len(val_rec), f), protocol.resize, protocol.crop) for f in args.factors}
    source = load_source(args.model)
    scorer = Scorer(5, size=protocol.crop)
    spec = from_flags(RegressorSpec, {"epochs": 1, "min_steps": args.steps, "eval_every": args.steps})
    print(f"% IOD on MTFL's {len(val_rec)} validation faces, framed at a factor of the rule; "
          f"{len(train_rec)} training faces; {args.model}")
    print("| training framing | " + " | ".join(f"val x{f:g}" for f in args.factors) + " |")
    print("| --- |" + " --- |" * len(args.factors))
    for name, data in train.items():
        stores = {"train": FeatureStore(source, data["images"], 4 * 2**30)}
        stores.update({f: FeatureStore(source, v["images"], 2**30) for f, v in vals.items()})
        first = args.factors[len(args.factors) // 2]              # selected on the rule's own framing
        runs = {"train": data, "val": vals[first]}
        reg, _ = train_regressor(spec, {"train": stores["train"], "val": stores[first]}, runs,
                                 torch.arange(len(train_rec)), 0, scorer, 5)
        errors = [scorer(predict(reg, stores[f], protocol.crop), v["landmarks"], v["visible"])[0]
                  for f, v in vals.items()]
        print(f"| {name} | " + " | ".join(f"{e:.2f}" for e in errors) + " |")
    shape = mean_shape({"train": train["fixed"]}, torch.arange(len(train_rec)))
    floor = [scorer(shape.expand_as(v["landmarks"]), v["landmarks"], v["visible"])[0] for v in vals.values()]
    print("| mean shape (fixed) | " + " | ".join(f"{e:.2f}" for e in floor) + " |")


if __name__ == "__main__":
    main()
