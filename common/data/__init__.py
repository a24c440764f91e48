"""The data layer: every source becomes a `datasets.Dataset` in one row format, plus a uint8 tensor cache.

    data = DataSpec(dataset="mtfl", data_dir="MTFL/")    # or from_flags(DataSpec, vars(args)) (common.cli)
    ds = load_split(data, "train")             # image, landmarks [K, 2], visible [K], identity, box
    cache = load_tensors(data, "train")        # images [N, 3, S, S] uint8 (memory-mapped), landmarks...

Every script selects data the same way (common.cli.data_args): `--dataset synthetic --variant aligned|unaligned
--zoom_out LO,HI --landmarks 5|68` (the default, generated and cached on first use), a format name
with `--data_dir` (celeba, mafl, aflw_m, aflw_r, 300w, cub, mtfl, ptsfolder, imagefolder), a folder saved
with `datasets`, or a Hugging Face Hub dataset id. Pretraining reads the union of several sources with
`--add_data FORMAT:DIR` (repeated): `load_tensors(data, "pretrain")` concatenates their images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .names import FORMATS, SYNTHETIC_SPLITS  # noqa: F401 (the data layer's API)

if TYPE_CHECKING:
    import datasets

    from . import synthetic
    from .cache import TensorCache

# the readers, the synthetic faces and the cache import `datasets` (about a second): they load on first use, so
# that tools which only parse these flags (match.py) start fast
__all__ = ["DataSpec", "TensorCache", "load_split", "load_tensors", "describe"]


def __getattr__(name: str):
    if name == "TensorCache":
        from .cache import TensorCache
        return TensorCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# bump when a reader or the cache's crop/resize changes: it is part of the key (4: ptsfolder's jittered train crops)
CACHE_VERSION = 4


@dataclass(frozen=True)
class DataSpec:
    """Which images and labels a script reads (the flags of common.cli.data_args, which say what each means)."""
    dataset: str = "synthetic"
    data_dir: str | None = None
    variant: str = "aligned"
    zoom_out: tuple[float, float] = (1.0, 1.5)
    landmarks: int = 5
    image_size: int = 128
    num_images: int | None = None
    data_seed: int = 0
    data_workers: int = 2
    add_data: tuple[str, ...] = ()
    max_bad_frac: float = 0.01


def synthetic_spec(data: DataSpec, split: str) -> synthetic.SyntheticSpec:
    from . import synthetic
    if split not in synthetic.SPLITS:
        raise UserError(f"synthetic data has splits {list(synthetic.SPLITS)}, not {split!r}")
    return synthetic.SyntheticSpec(
        split=split, num_images=data.num_images or synthetic.SPLITS[split], variant=data.variant,
        zoom_out=tuple(data.zoom_out), size=data.image_size, seed=data.data_seed)


def load_split(data: DataSpec, split: str) -> datasets.Dataset:
    """One split of the selected source as a Dataset in the project's row format."""
    from . import readers, synthetic
    if data.dataset == "synthetic":
        return synthetic.load(synthetic_spec(data, split), data.landmarks, data.data_workers)
    if data.dataset in readers.READERS:
        if data.data_dir is None:
            raise UserError(f"--dataset {data.dataset} needs --data_dir (the folder as its authors ship it)")
        ds = readers.READERS[data.dataset](data.data_dir, split, max_bad_frac=data.max_bad_frac)
    else:
        ds = readers.read_hf(data.dataset, split)
    if data.num_images:
        ds = ds.select(range(min(data.num_images, len(ds))))
    return ds


def describe(data: DataSpec, split: str) -> dict:
    """What identifies a split's pixels (for cache keys and model cards)."""
    if data.dataset == "synthetic":
        return {"source": "synthetic", "key": synthetic_spec(data, split).key()}
    places = [Path(d).expanduser() for d in str(data.data_dir or data.dataset).split(os.pathsep)]   # a: b for .pts
    where = os.pathsep.join(str(p.resolve()) if p.exists() else data.dataset for p in places)
    # re-saving a dataset or replacing annotation files changes these mtimes: the cache is then rebuilt
    stamp = max((f.stat().st_mtime_ns for p in places if p.is_dir() for f in p.iterdir()), default=0)
    return {"source": data.dataset, "where": where, "stamp": stamp, "split": split,
            "num_images": data.num_images, "version": CACHE_VERSION}


def added_source(data: DataSpec, spec: str) -> DataSpec:
    """The data of one --add_data SOURCE (FORMAT:DIR, synthetic, or a saved or Hub dataset); --num_images
    keeps the first N of each source."""
    fmt, sep, folder = spec.partition(":")
    if sep and fmt in FORMATS and folder:
        dataset, data_dir = fmt, folder
    elif spec in FORMATS:
        raise UserError(f"--add_data {spec}: give its folder, as {spec}:DIR")
    else:
        dataset, data_dir = spec, None
    return dataclasses.replace(data, dataset=dataset, data_dir=data_dir, add_data=())


def union_tensors(data: DataSpec, size: int) -> TensorCache:
    """The `pretrain` split of --dataset and of every --add_data source, one after the other, without landmarks:
    each source's own cache (shared with runs that read it alone), copied once into a union cache."""
    from filelock import FileLock

    from . import synthetic
    from .cache import TensorCache, concatenate
    sources = [dataclasses.replace(data, add_data=())] + [added_source(data, s) for s in data.add_data]
    parts = [load_tensors(a, "pretrain", size) for a in sources]
    info = {"union": [describe(a, "pretrain") for a in sources], "size": size, "version": CACHE_VERSION}
    key = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    folder = synthetic.cache_root() / "tensors" / f"union-pretrain-{size}px-{key}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "meta.json").exists():
            concatenate(parts, folder, {**info, "sources": [a.dataset for a in sources]})
    return TensorCache.load(folder)


def load_tensors(data: DataSpec, split: str, size: int | None = None) -> TensorCache:
    """The split's uint8 tensor cache at `size` (default --image_size), built on first use; the `pretrain` split
    with --add_data is the union of the sources (union_tensors)."""
    from filelock import FileLock

    from . import synthetic
    from .cache import TensorCache, build_from_dataset
    size = size or data.image_size
    if split == "pretrain" and data.add_data:
        return union_tensors(data, size)
    if data.dataset == "synthetic" and size == data.image_size:
        return synthetic.tensors(synthetic_spec(data, split), data.landmarks, data.data_workers)
    info = {**describe(data, split), "size": size, "landmarks": data.landmarks}
    key = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    folder = synthetic.cache_root() / "tensors" / f"{data.dataset.replace('/', '_')}-{split}-{size}px-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # several processes (GPUs) wait for one build
        if not (folder / "meta.json").exists():
            build_from_dataset(load_split(data, split), folder, size, name=f"{data.dataset}/{split}",
                               max_bad_frac=data.max_bad_frac, source=info)
    cache = TensorCache.load(folder)
    skipped = len(cache.meta.get("skipped", []))
    if skipped > data.max_bad_frac * (len(cache) + skipped):  # built earlier with a looser threshold
        raise UserError(f"{folder}: {skipped} images were skipped when this cache was built, more than "
                        f"--max_bad_frac {data.max_bad_frac} allows (see its meta.json)")
    return cache
