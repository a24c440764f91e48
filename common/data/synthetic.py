"""The synthetic face data set: splits, generation in worker processes, and the on-disk cache.

Each split is drawn once and stored under the cache folder, keyed by everything that changes its
pixels (variant, size, zoom-out range, split, count, seed, generator version):
    KEY/dataset/     datasets.save_to_disk: image (PNG), landmarks (68), visible, landmarks5,
                     visible5, identity, box
    KEY/tensors/     the uint8 tensor cache of the same images (see common/data/cache.py)
Identities never repeat across splits (their parameters are drawn from a per-split stream), so the
test faces are people the model has not seen.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from filelock import FileLock
from PIL import Image

from . import faces
from .cache import TensorCache
from .images import png_bytes
from .names import SYNTHETIC_SPLITS

logger = logging.getLogger("lead.data")
SPLITS = SYNTHETIC_SPLITS
SPLIT_SEED = {"pretrain": 0, "train": 1, "val": 2, "test": 3}
IMAGES_PER_IDENTITY = 5
BATCH = 32  # cache-friendly on a CPU; images do not depend on it


@dataclass(frozen=True)
class SyntheticSpec:
    split: str = "train"
    num_images: int = 1000
    variant: str = "aligned"
    zoom_out: tuple[float, float] = (1.0, 1.5)
    size: int = 128
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": faces.GENERATOR_VERSION}, sort_keys=True)
        return f"{self.split}-{self.variant}-{self.size}px-{self.num_images}-" + hashlib.sha1(blob.encode()).hexdigest()[:10]


def sample_params(spec: SyntheticSpec) -> dict[str, torch.Tensor]:
    """Every image's parameters, drawn up front from one stream per (seed, split)."""
    g = torch.Generator().manual_seed(1_000_003 * spec.seed + SPLIT_SEED[spec.split])
    n_id = -(-spec.num_images // IMAGES_PER_IDENTITY)
    ident = faces.sample_identities(n_id, g)
    ids = torch.arange(spec.num_images) // IMAGES_PER_IDENTITY
    p = faces.sample_images(ident, ids, g, spec.variant, spec.zoom_out, spec.size)
    p["identity"] = ids + 10_000_000 * SPLIT_SEED[spec.split]  # unique across splits
    return p


def _slice(p: dict[str, torch.Tensor], a: int, b: int) -> dict[str, torch.Tensor]:
    return {k: v[a:b] for k, v in p.items()}


def render_uint8(p: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    return faces.render(p, size).mul_(255).add_(0.5).to(torch.uint8)


def landmarks(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel landmarks [N, 68, 2] and visibility [N, 68], in chunks to bound memory."""
    out = [faces.project(q, faces.canonical_landmarks(q))
           for q in (_slice(p, a, a + 4096) for a in range(0, len(p["yaw"]), 4096))]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


_WORKER: dict = {}


def _init_worker(spec: SyntheticSpec, encode: bool, threads: int | None = 1) -> None:
    if threads:
        torch.set_num_threads(threads)  # one process per core beats two threads per process here
    _WORKER.update(p=sample_params(spec), spec=spec, encode=encode)


def _render_chunk(start: int) -> tuple[int, np.ndarray, list[bytes]]:
    p, spec, encode = _WORKER["p"], _WORKER["spec"], _WORKER["encode"]
    imgs = render_uint8(_slice(p, start, start + BATCH), spec.size).numpy()
    return start, imgs, [png_bytes(Image.fromarray(a.transpose(1, 2, 0))) for a in imgs] if encode else []


def iter_rendered(spec: SyntheticSpec, workers: int, encode: bool = True):
    """Yield (start, uint8 images [B, 3, S, S], PNG bytes or []) in order; workers > 1 renders in
    forked processes with one intra-op thread each (as torch's DataLoader workers do)."""
    starts = range(0, spec.num_images, BATCH)
    if workers <= 1:
        _init_worker(spec, encode, threads=None)
        yield from map(_render_chunk, starts)
        return
    with mp.get_context("fork").Pool(workers, _init_worker, (spec, encode)) as pool:
        yield from pool.imap(_render_chunk, starts)


def features() -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(), "identity": datasets.Value("int64"),
        "box": datasets.List(datasets.Value("float32"), length=4),
        "landmarks": datasets.Array2D((68, 2), "float32"), "visible": datasets.List(datasets.Value("bool"), length=68),
        "landmarks5": datasets.Array2D((5, 2), "float32"), "visible5": datasets.List(datasets.Value("bool"), length=5),
    })


def _rows(spec: SyntheticSpec, workers: int, tensors: str):
    """Rows for datasets.Dataset.from_generator; also fills the tensor cache at `tensors`."""
    cache = TensorCache.open(Path(tensors), mode="r+")
    lm, vis = torch.from_numpy(np.array(cache.landmarks)), torch.from_numpy(np.array(cache.visible))
    lm5, vis5 = faces.mafl_points(lm, vis)
    box = [-0.5, -0.5, spec.size - 0.5, spec.size - 0.5]
    for start, imgs, pngs in iter_rendered(spec, workers):
        cache.images[start:start + len(imgs)] = imgs
        for j, png in enumerate(pngs):
            i = start + j
            yield {"image": {"bytes": png, "path": None},
                   "identity": int(cache.identity[i]), "box": box,
                   "landmarks": lm[i].numpy(), "visible": vis[i].tolist(),
                   "landmarks5": lm5[i].numpy(), "visible5": vis5[i].tolist()}
    cache.images.flush()


def _write(spec: SyntheticSpec, tmp: Path, workers: int) -> None:
    p = sample_params(spec)
    lm, vis = landmarks(p)
    cache = TensorCache.create(tmp / "tensors", spec.num_images, spec.size, num_points=68)
    cache.landmarks[:], cache.visible[:], cache.identity[:] = lm.numpy(), vis.numpy(), p["identity"].numpy()
    ds = datasets.Dataset.from_generator(  # _rows fills the images through its own memory map
        _rows, features=features(), cache_dir=str(tmp / "hf"),
        gen_kwargs={"spec": spec, "workers": workers, "tensors": str(tmp / "tensors")})
    ds.save_to_disk(str(tmp / "dataset"))
    del ds
    cache.finish({"source": "synthetic", **asdict(spec), "generator": faces.GENERATOR_VERSION})  # last


def build(spec: SyntheticSpec, folder: Path, workers: int = 2) -> float:
    """Generate one split into `folder` (dataset/ + tensors/) atomically; returns seconds taken."""
    t0 = time.perf_counter()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(spec, tmp, workers)
    except BaseException:  # a killed or failed build leaves nothing that looks finished
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp / "hf", ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    seconds = time.perf_counter() - t0
    logger.info("synthetic %s: %d images in %.1f s (%s)", spec.split, spec.num_images, seconds, folder)
    return seconds


def cache_root() -> Path:
    return Path(os.environ.get("LEAD_CACHE", Path.home() / ".cache" / "lead"))


def ensure(spec: SyntheticSpec, workers: int = 2, root: Path | None = None) -> Path:
    """The split's folder, generated on first use; a file lock makes concurrent processes (several
    GPUs, several scripts) wait for one build instead of racing."""
    folder = (root or cache_root()) / "synthetic" / spec.key()
    if not (folder / "tensors" / "meta.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if not (folder / "tensors" / "meta.json").exists():
                build(spec, folder, workers)
    return folder


def load(spec: SyntheticSpec, num_points: int = 68, workers: int = 2, root: Path | None = None) -> datasets.Dataset:
    """The split as a Dataset in the project's row format, generating it on first use."""
    folder = ensure(spec, workers, root)
    ds = datasets.load_from_disk(str(folder / "dataset"))
    if num_points == 5:
        ds = ds.remove_columns(["landmarks", "visible"]).rename_columns(
            {"landmarks5": "landmarks", "visible5": "visible"})
    elif num_points == 68:
        ds = ds.remove_columns(["landmarks5", "visible5"])
    else:
        raise ValueError(f"--landmarks must be 5 or 68, got {num_points}")
    return ds


def tensors(spec: SyntheticSpec, num_points: int = 68, workers: int = 2, root: Path | None = None) -> TensorCache:
    """The split's uint8 tensor cache (generated with the dataset), landmarks selected."""
    folder = ensure(spec, workers, root)
    cache = TensorCache.load(folder / "tensors")
    if num_points == 5:
        cache.landmarks, cache.visible = [x.numpy() for x in faces.mafl_points(
            torch.from_numpy(np.array(cache.landmarks)), torch.from_numpy(np.array(cache.visible)))]
    return cache
