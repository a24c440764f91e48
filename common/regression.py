"""Stage 3's training and scoring, without the command line: the protocol's crops of a split, one regressor run
(frozen features, or a network trained end to end with it: the supervised ceiling), predictions and the error.

    data = {s: load_eval_split(spec, s, protocol) for s in ("train", "val", "test")}
    reg, record = train_regressor(RegressorSpec(), stores, data, idx, seed, Scorer(5, size=70), 5)
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DataSpec, load_tensors
from .errors import UserError
from .features import FeatureStore, eval_crops
from .metrics import EYES, inter_ocular, iod_error, pck
from .models import LandmarkRegressor, to_pixels, to_unit
from .optim import effective_lr
from .protocols import Protocol


@dataclass(frozen=True)
class RegressorSpec:
    """The regressor and its training (regress.py's flags of the same names say what each means)."""
    intermediate: int = 50
    shared_heatmaps: bool = False
    softargmax_mul: float = 100.0
    loss: str = "l2"
    lr: float = 8e-3
    weight_decay: float = 5e-4
    batch_size: int = 32
    epochs: int = 50
    min_steps: int = 300
    eval_every: int = 100


def load_eval_split(data: DataSpec, split: str, protocol: Protocol) -> dict:
    """A split as the protocol's input: every face's box resized once to protocol.resize (the tensor cache at that
    size), centre-cropped to protocol.crop: images uint8 [N, 3, crop, crop], landmarks [N, K, 2], visible [N, K]."""
    cache = load_tensors(data, split, protocol.resize)
    if len(cache) == 0:
        raise UserError(f"the {split} split is empty")
    if cache.landmarks.shape[1] == 0:
        raise UserError(f"--dataset {data.dataset}: the {split} split has no landmarks; regress.py needs a labelled "
                        "data set")
    parts = []
    for s in range(0, len(cache), 256):                          # bounded memory on large sets
        b = cache.batch(range(s, min(s + 256, len(cache))))
        parts.append(eval_crops(b["images"], b["landmarks"], b["visible"], protocol.resize, protocol.crop))
    return {k: torch.cat(v) for k, v in zip(("images", "landmarks", "visible"), zip(*parts))}


def without_val(train: dict, val: dict) -> tuple[dict, int]:
    """The training images minus those that are also validation images (AFLW, 300-W and CUB carve `val` out of
    `train`, see common/data/readers.py), so that the model selected on `val` never trained on it."""
    def digest(x):
        return hashlib.sha1(x.numpy().tobytes()).digest()

    seen = {digest(x) for x in val["images"]}
    keep = torch.tensor([digest(x) not in seen for x in train["images"]])
    return {k: v[keep] for k, v in train.items()}, int((~keep).sum())


def finite(values: torch.Tensor) -> list[float | None]:
    """A list for JSON: None where a landmark was never visible (NaN is not JSON)."""
    return [None if math.isnan(v) else v for v in values.tolist()]


class Scorer:
    """The protocol's error, lower is better: % inter-ocular distance per image, or 100 - PCK (in %). `size` is the
    crop's side (PCK's threshold is alpha x size)."""

    def __init__(self, num_points: int, metric: str = "iod", eye_idx: tuple[int, int] | None = None,
                 size: int = 96, alpha: float = 0.05):
        self.metric, self.eyes, self.size, self.alpha = metric, tuple(eye_idx) if eye_idx else None, size, alpha
        if self.eyes and not all(0 <= i < num_points for i in self.eyes):
            raise UserError(f"--eye_idx {self.eyes[0]} {self.eyes[1]}: the data has points 0-{num_points - 1}")
        if metric == "iod" and self.eyes is None and num_points not in EYES:
            raise UserError(f"{num_points} landmarks: no default eye points; give --eye_idx A B or --metric pck")

    def __call__(self, pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor) -> tuple[float, list[float]]:
        """Mean error and the per-landmark errors of predictions [N, K, 2] (pixels)."""
        if self.metric == "iod":
            dist = 100 * (pred - gt).norm(dim=-1) / inter_ocular(gt, self.eyes)[:, None]
            rel = torch.where(visible, dist, float("nan"))
            return iod_error(pred, gt, self.eyes, visible).nanmean().item(), finite(rel.nanmean(0))
        hit = pck(pred, gt, visible, self.size, self.alpha)
        per_landmark = pck(pred, gt, visible, self.size, self.alpha, per_landmark=True)
        return 100 * (1 - hit.item()), finite(100 * (1 - per_landmark))


class TrainedStore:
    """The features of a network that trains with the regressor (end to end, the supervised ceiling): computed per
    batch, with gradients; the stores of the splits it is scored on are FeatureStores without a cache."""

    kind, nbytes = None, 0                                       # nothing cached (FeatureStore's fields)

    def __init__(self, source: nn.Module, images: torch.Tensor, batch: int = 32):
        self.source, self.images, self.batch = source, images, batch
        self.device = next(source.parameters()).device

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.source(self.images[idx].to(self.device).float() / 255).float()


def predict(reg: LandmarkRegressor, store: FeatureStore, size: int) -> torch.Tensor:
    with torch.no_grad():
        out = [reg(store(torch.arange(s, min(s + store.batch, len(store.images)))))[0]
               for s in range(0, len(store.images), store.batch)]
    return to_pixels(torch.cat(out).cpu(), size)


def train_regressor(spec: RegressorSpec, stores: dict, data: dict, idx: torch.Tensor, seed: int, scorer: Scorer,
                    num_points: int, network: nn.Module | None = None, input_meta: dict | None = None):
    """One run: a regressor trained on training images idx, the validation-best weights kept; `network` (the
    stores' source, trained end to end) joins the optimiser and is kept at its validation-best weights too;
    `input_meta` is what the regressor's config says of its input (LandmarkRegressor's features_from, protocol,
    resize, crop, dataset). Returns the regressor and its record (validation curve, best step)."""
    dev, size = stores["train"].device, scorer.size
    torch.manual_seed(seed)
    reg = LandmarkRegressor(stores["train"].source.dim, num_points, spec.intermediate, spec.softargmax_mul,
                            spec.shared_heatmaps, **(input_meta or {})).to(dev)
    params = list(reg.parameters()) + (list(network.parameters()) if network is not None else [])
    opt = torch.optim.Adam(params, lr=effective_lr(spec.lr, spec.batch_size), weight_decay=spec.weight_decay,
                           amsgrad=True)
    target = to_unit(data["train"]["landmarks"], size).to(dev)
    visible = data["train"]["visible"].to(dev)
    batch = min(spec.batch_size, len(idx))
    steps = max(spec.epochs * math.ceil(len(idx) / batch), spec.min_steps)
    loss_fn = F.mse_loss if spec.loss == "l2" else F.smooth_l1_loss
    kept = [reg] + ([network] if network is not None else [])
    g = torch.Generator().manual_seed(seed)
    best, curve, order = (math.inf, 0, None), [], torch.empty(0, dtype=torch.long)
    for step in range(1, steps + 1):
        if len(order) < batch:                                   # a new pass over the labelled images
            order = torch.cat([order, idx[torch.randperm(len(idx), generator=g)]])
        b, order = order[:batch], order[batch:]
        if network is not None:
            network.train()
        pred, _ = reg(stores["train"](b))
        vis = visible[b][..., None].float()
        loss = (loss_fn(pred, target[b], reduction="none") * vis).sum() / vis.sum().clamp_min(1) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % spec.eval_every == 0 or step == steps:         # model selection: validation only
            if network is not None:
                network.eval()
            val, _ = scorer(predict(reg, stores["val"], size), data["val"]["landmarks"], data["val"]["visible"])
            curve.append([step, val])
            if val < best[0]:
                best = (val, step, [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in kept])
    for m, state in zip(kept, best[2]):
        m.load_state_dict(state)
    if network is not None:
        network.eval()
    return reg, {"val": best[0], "best_step": best[1], "steps": steps, "val_curve": curve}


def mean_shape(data: dict, idx: torch.Tensor) -> torch.Tensor:
    """The floor without features: every test image gets the mean shape of the labelled training images."""
    lm, vis = data["train"]["landmarks"][idx], data["train"]["visible"][idx][..., None].float()
    return (lm * vis).sum(0) / vis.sum(0).clamp_min(1)
