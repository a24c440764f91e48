"""Frozen dense features for regression and matching: one loader for every model source, the PCA / NMF
baselines of the hypercolumn, and a store that computes each image's features once within a memory budget.

    source = load_source("runs/x/distill/final")        # stage 2: compact features at 1/4 resolution
    source = load_source("runs/x/byol/final")           # stage 1: its hypercolumn (960-d or 3840-d)
    source = load_source("random-resnet18")             # the same architecture untrained (fixed seed)
    source = load_source("nmf:64", hypercolumn_from="runs/x/byol/final", fit_images=train_images)
    maps = source(images)                               # images [N, 3, S, S] in [0, 1] -> [N, C, h, w]
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .errors import UserError
from .models import ARCHS, DenseExtractor, ResNetEncoder, stage_of

logger = logging.getLogger("lead")
KINDS = {"encoder": "hypercolumn", "extractor": "compact"}        # the features of each stage's final/


class FeatureSource(nn.Module):
    """A frozen extractor split in two, so that a cache can keep the cheap half: parts(x) is what is stored per
    image (the compact map, or a hypercolumn's per-layer maps at their own resolution, 8x smaller than the
    upsampled hypercolumn), assemble(parts) the features [N, C, h, w]."""

    def __init__(self, name: str, dim: int, input_size: int = 96):
        super().__init__()
        self.name, self.dim, self.input_size = name, dim, input_size      # the side the model was trained at
        self.groups = (dim,)          # channels normalised together (a hypercolumn: each layer's), for matching

    def parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def assemble(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.assemble(self.parts(x))


class Compact(FeatureSource):
    def __init__(self, model: DenseExtractor, name: str):
        super().__init__(name, model.feature_dim, model.input_size)
        self.model = model.eval().requires_grad_(False)

    def parts(self, x):
        return [self.model(x)]


class Hypercolumn(FeatureSource):
    def __init__(self, encoder: ResNetEncoder, name: str):
        super().__init__(name, encoder.hypercolumn_dim, encoder.input_size)
        self.encoder = encoder.eval().requires_grad_(False)
        if encoder.normalize_layers:
            self.groups = tuple(encoder.channels)

    def parts(self, x):
        return self.encoder.layers(x)

    def assemble(self, parts):
        return self.encoder.hypercolumn_of([p.float() for p in parts])


class Supervised(FeatureSource):
    """The network of a frozen source (a stage-2 extractor or a stage-1 encoder's hypercolumn), re-initialised and
    trainable: regress.py trains it end to end with the regressor on the labels, the supervised ceiling of the
    frozen features. reset(seed) draws fresh weights (the architecture's own initialisation)."""

    def __init__(self, base: Compact | Hypercolumn):
        network = base.model if isinstance(base, Compact) else base.encoder
        super().__init__(f"supervised-{base.name}", base.dim, base.input_size)
        self.base, self.network = base, network
        self.reset(0)

    def reset(self, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(self.network)(**self.network._hub_mixin_config)
        self.network.load_state_dict(fresh.state_dict())
        self.network.requires_grad_(True)

    def parts(self, x):
        return self.base.parts(x)

    def assemble(self, parts):
        return self.base.assemble(parts)


class Reduced(FeatureSource):
    """A hypercolumn projected to k channels by PCA (mean [C], basis [k, C]) or NMF (basis [k, C] >= 0)."""

    def __init__(self, base: Hypercolumn, kind: str, basis: torch.Tensor, mean: torch.Tensor | None = None):
        super().__init__(f"{kind}-{len(basis)}", len(basis), base.input_size)
        self.base, self.kind = base, kind
        self.register_buffer("basis", basis)
        self.register_buffer("mean", mean if mean is not None else torch.zeros(basis.shape[1]))

    def parts(self, x):
        h = rearrange(self.base(x).float(), "n c h w -> n h w c")
        if self.kind == "pca":
            w = (h - self.mean) @ self.basis.T
        else:
            w = nmf_project(h.reshape(-1, h.shape[-1]), self.basis).reshape(*h.shape[:3], -1)
        return [rearrange(w, "n h w k -> n k h w")]


def fit_pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [C] and the top-k principal directions [k, C] of rows x [M, C]."""
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:k]


def fit_nmf(x: torch.Tensor, k: int, iters: int = 200, seed: int = 0) -> torch.Tensor:
    """Non-negative basis H [k, C] with x [M, C] >= 0 ~ W H (Frobenius loss, Lee and Seung's multiplicative
    updates from a random start scaled like scikit-learn's)."""
    if (x < 0).any():
        raise ValueError("NMF needs non-negative features")
    g = torch.Generator().manual_seed(seed)
    scale = (x.mean() / k).sqrt()
    w = scale * torch.rand(len(x), k, generator=g, dtype=x.dtype).to(x.device)
    h = scale * torch.rand(k, x.shape[1], generator=g, dtype=x.dtype).to(x.device)
    eps = torch.finfo(x.dtype).eps
    for _ in range(iters):
        h *= (w.T @ x) / (w.T @ w @ h + eps)
        w *= (x @ h.T) / (w @ (h @ h.T) + eps)
    return h


def nmf_project(x: torch.Tensor, h: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Non-negative codes W [M, k] of rows x [M, C] on a fixed basis h [k, C]: the W-updates of fit_nmf, with
    x h^T and h h^T computed once (each iteration is then [M, k] x [k, k])."""
    xh, hh = x @ h.T, h @ h.T
    w = torch.full_like(xh, 1.0 / len(h)) * (x.mean() / h.mean().clamp_min(1e-12))
    eps = torch.finfo(x.dtype).eps
    for _ in range(iters):
        w *= xh.clamp_min(0) / (w @ hh + eps)
    return w


def read_config(source: str) -> dict:
    """config.json of a model folder or Hub id; a one-line error otherwise."""
    local = Path(source)
    if local.exists():
        if not (local / "config.json").is_file() or not (local / "model.safetensors").is_file():
            raise UserError(f"{source}: not a model folder (needs config.json and model.safetensors)")
        return json.loads((local / "config.json").read_text())
    try:
        from huggingface_hub import hf_hub_download
        return json.loads(Path(hf_hub_download(source, "config.json")).read_text())
    except Exception as e:
        raise UserError(f"{source}: no such folder, and not a reachable Hub model ({type(e).__name__})") from None


def check_source(spec: str, hypercolumn_from: str | None = None) -> str:
    """The kind of a --features_from / --model value (compact, hypercolumn, random, pca, nmf) without loading
    weights, so that a mistake fails before hours of work on the other sources; a one-line error otherwise."""
    kind, _, k = spec.partition(":")
    if kind == "supervised":
        if not k or k.partition(":")[0] in ("pca", "nmf", "supervised") or check_source(k) not in (
                "compact", "hypercolumn", "random"):
            raise UserError(f"{spec}: expected supervised:MODEL with MODEL a stage-1 or stage-2 final/ (its network, "
                            "trained from scratch)")
        return kind
    if kind in ("pca", "nmf"):
        if not k.isdigit() or int(k) < 1:
            raise UserError(f"{spec}: expected {kind}:K with K a positive number of components")
        if hypercolumn_from is None:
            raise UserError(f"{spec} reduces a stage-1 hypercolumn: give it with --hypercolumn_from")
        if check_source(hypercolumn_from) not in ("hypercolumn", "random"):
            raise UserError(f"--hypercolumn_from {hypercolumn_from}: not a stage-1 model or random-ARCH")
        return kind
    if spec.startswith("random-"):
        if spec.removeprefix("random-") not in ARCHS:
            raise UserError(f"{spec}: unknown architecture (random-ARCH with ARCH in {', '.join(ARCHS)})")
        return "random"
    config = read_config(spec)
    stage = stage_of(config)
    if stage == "regressor":
        raise UserError(f"{spec}: a landmark regressor (regress.py's final/), not features: give a stage-1 or "
                        "stage-2 final/")
    if stage not in KINDS:
        raise UserError(f"{spec}: config.json is neither a stage-1 nor a stage-2 model "
                        f"({f'stage {stage!r}' if stage else sorted(config)})")
    return KINDS[stage]


def load_model(source: str) -> FeatureSource:
    """A stage-2 final/ (compact features), a stage-1 final/ (hypercolumn), a Hub id of either, or random-ARCH."""
    kind = check_source(source)
    if kind == "random":
        with torch.random.fork_rng(devices=[]):              # a fixed draw, the caller's random state untouched
            torch.manual_seed(0)
            return Hypercolumn(ResNetEncoder(source.removeprefix("random-")), source)
    try:
        if kind == "compact":
            model = DenseExtractor.from_pretrained(source)
            kind = "cl" if model.spatial_softmax else "lead"       # heatmaps: ContrastLandmark's export
            return Compact(model, f"{kind}-{model.feature_dim}")
        enc = ResNetEncoder.from_pretrained(source)
        return Hypercolumn(enc, f"hypercolumn-{enc.hypercolumn_dim}")
    except Exception as e:                                    # a config that does not fit its weights
        first = (str(e).strip().splitlines() or [""])[0]      # one line: size mismatches list every tensor
        raise UserError(f"{source}: cannot load the model ({type(e).__name__}: {first})") from None


@torch.no_grad()
def sample_rows(source: FeatureSource, images: torch.Tensor, rows: int, per_image: int = 16, batch: int = 32,
                seed: int = 0) -> torch.Tensor:
    """`rows` feature vectors [rows, C] (fewer if the images have fewer positions), `per_image` random positions
    from each of enough random images of `images` (uint8 [N, 3, S, S]), or more per image if they are few."""
    g = torch.Generator().manual_seed(seed)
    per_image = max(per_image, -(-rows // len(images)))
    chosen = images[torch.randperm(len(images), generator=g)[:-(-rows // per_image)]]
    out = []
    for s in range(0, len(chosen), batch):
        f = rearrange(source(chosen[s:s + batch].float() / 255).float(), "n c h w -> n (h w) c")
        pick = torch.rand(len(f), f.shape[1], generator=g).argsort(1)[:, :per_image]     # distinct positions
        out.append(torch.gather(f, 1, pick[..., None].expand(-1, -1, f.shape[-1])).reshape(-1, f.shape[-1]))
    return torch.cat(out)[:rows]


def load_source(spec: str, hypercolumn_from: str | None = None, fit_images: torch.Tensor | None = None,
                fit_rows: int = 8192, device: str | torch.device = "cpu") -> FeatureSource:
    """Any --features_from / --model value. pca:K and nmf:K reduce the hypercolumn of `hypercolumn_from`,
    fitted on `fit_images` (uint8, the evaluated data set's training images: never its test images)."""
    kind, _, k = spec.partition(":")
    if check_source(spec, hypercolumn_from) == "supervised":
        return Supervised(load_model(k)).to(device)
    if check_source(spec, hypercolumn_from) not in ("pca", "nmf"):
        return load_model(spec).to(device)
    if fit_images is None:
        raise UserError(f"{spec} is fitted on the evaluated data set's training images: none were given")
    base = load_model(hypercolumn_from).to(device)
    x = sample_rows(base, fit_images.to(device), fit_rows)
    if int(k) > min(x.shape):
        raise UserError(f"{spec}: K is larger than the {x.shape[1]}-d hypercolumn or the {len(x)} fitted rows")
    logger.info("fitting %s on %d hypercolumn rows of %d training images", spec, len(x), len(fit_images))
    if kind == "pca":
        mean, basis = fit_pca(x, int(k))
        return Reduced(base, "pca", basis, mean).to(device)
    return Reduced(base, "nmf", fit_nmf(x, int(k))).to(device)


class FeatureStore:
    """The features of a fixed set of images (uint8 [N, 3, S, S]), computed once and kept in memory in fp16:
    the finished features when they fit in `budget` bytes (a hypercolumn is then never upsampled again), else
    the source's parts (8x smaller for a hypercolumn, assembled per batch), else nothing (computed per batch).
    `kind` says which: "features", "parts" or None."""

    def __init__(self, source: FeatureSource, images: torch.Tensor, budget: float, batch: int = 32):
        self.source, self.images, self.batch = source, images, batch
        self.device = next(source.buffers(), next(source.parameters(), torch.empty(0))).device
        with torch.no_grad():
            parts = source.parts(images[:1].to(self.device).float() / 255)
            full = source.assemble(parts)
        sizes = {"features": full[0].numel() * 2, "parts": sum(p[0].numel() * 2 for p in parts)}
        self.kind = next((k for k, b in sizes.items() if b * len(images) <= budget), None)
        self.bytes_per_image = sizes[self.kind or "parts"]
        self.nbytes = self.bytes_per_image * len(images) if self.kind else 0
        self.stored = self._compute() if self.kind else None

    @torch.no_grad()
    def _compute(self) -> list[torch.Tensor]:
        stored = None                                            # filled in place: the budget is the peak
        for s in range(0, len(self.images), self.batch):
            new = self.source.parts(self.images[s:s + self.batch].to(self.device).float() / 255)
            if self.kind == "features":
                new = [self.source.assemble(new)]
            if stored is None:
                stored = [torch.empty(len(self.images), *p.shape[1:], dtype=torch.float16) for p in new]
            for whole, p in zip(stored, new):
                whole[s:s + len(p)] = p.half().cpu()
        return stored

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Features [len(idx), C, h, w] (fp32, on the source's device) of images idx."""
        if self.kind is None:
            return self.source(self.images[idx].to(self.device).float() / 255).float()
        stored = [p[idx].to(self.device) for p in self.stored]
        return (stored[0] if self.kind == "features" else self.source.assemble(stored)).float()


def eval_crops(images: torch.Tensor, landmarks: torch.Tensor, visible: torch.Tensor, resize: int, crop: int):
    """The regression protocol's input (DVE): uint8 images [N, 3, S, S] resized to `resize` (nothing to do when S is
    already `resize`, as regress.py loads them), centre crop `crop`; landmarks [N, K, 2] (pixel centres) moved with
    them. Points that fall outside the crop stay as they are, scored like the others (DVE keeps them)."""
    x = images
    if images.shape[-1] != resize:
        x = F.interpolate(images.float(), size=(resize, resize), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    top = (resize - crop) // 2
    points = (landmarks + 0.5) * (resize / images.shape[-1]) - 0.5 - top
    return x[..., top:top + crop, top:top + crop].contiguous(), points, visible.bool()
