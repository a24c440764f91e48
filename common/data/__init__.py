"""The data layer: every source becomes a `datasets.Dataset` in one row format, plus a uint8 tensor cache.

    parser = argparse.ArgumentParser(parents=[data_args()])
    ds = load_split(args, "train")             # image, landmarks [K, 2], visible [K], identity, box
    cache = load_tensors(args, "train")        # images [N, 3, S, S] uint8 (memory-mapped), landmarks...

Every script selects data the same way: `--dataset synthetic --variant aligned|unaligned
--zoom_out LO,HI --landmarks 5|68` (the default, generated and cached on first use), a format name
with `--data_dir` (celeba, mafl, aflw_m, aflw_r, 300w, cub, mtfl, ptsfolder, imagefolder), a folder saved
with `datasets`, or a Hugging Face Hub dataset id. Pretraining reads the union of several sources with
`--add_data FORMAT:DIR` (repeated): `load_tensors(args, "pretrain")` concatenates their images.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import datasets

    from . import synthetic
    from .cache import TensorCache

# the readers, the synthetic faces and the cache import `datasets` (about a second): they load on first use, so
# that tools which only parse these flags (match.py) start fast
__all__ = ["TensorCache", "data_args", "load_split", "load_tensors", "describe"]
FORMATS = ("celeba", "mafl", "aflw_m", "aflw_r", "300w", "cub", "mtfl", "ptsfolder", "imagefolder")   # READERS' keys
SYNTHETIC_SPLITS = {"pretrain": 5000, "train": 1000, "val": 300, "test": 500}


def __getattr__(name: str):
    if name == "TensorCache":
        from .cache import TensorCache
        return TensorCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
CACHE_VERSION = 1  # bump when a reader or the cache's crop/resize changes: it is part of the key


def zoom_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 1,1.5), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= LO <= HI, got {text!r}")
    return lo, hi


def at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def data_args() -> argparse.ArgumentParser:
    """The data flags every script shares (use as a parent parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("Data")
    g.add_argument("--dataset", default="synthetic",
                   help="synthetic (default, generated here), a format name with --data_dir "
                        f"({', '.join(FORMATS)}), a folder saved with datasets, or a Hub dataset id")
    g.add_argument("--data_dir", default=None, help="root folder of a --dataset format, as its authors ship it")
    g.add_argument("--variant", default="aligned", choices=["aligned", "unaligned"],
                   help="synthetic faces: aligned (MAFL/CelebA-like crops) or unaligned (AFLW_R-like, wider pose/scale)")
    g.add_argument("--zoom_out", type=zoom_range, default=(1.0, 1.5),
                   help="synthetic unaligned: range of zoom-out factors, e.g. 1,1.5 (seen) or 1.5,2 (unseen)")
    g.add_argument("--landmarks", type=int, default=5, choices=[5, 68],
                   help="synthetic: 5 MAFL points or the 68 300-W points")
    g.add_argument("--image_size", type=at_least(32), default=128, help="synthetic render size and tensor-cache size")
    g.add_argument("--num_images", type=at_least(1), default=None,
                   help=f"synthetic: images in the split (defaults {SYNTHETIC_SPLITS}); other sources: keep the first N")
    g.add_argument("--data_seed", type=int, default=0, help="synthetic: which faces (same seed, same bytes)")
    g.add_argument("--data_workers", type=at_least(1), default=2, help="processes that render synthetic faces")
    g.add_argument("--add_data", action="append", default=[], metavar="SOURCE",
                   help="pretraining (the unlabelled `pretrain` split of stages 1 and 2) also reads SOURCE, its "
                        "landmarks unused: FORMAT:DIR (e.g. imagefolder:photos/, mtfl:MTFL/), synthetic, or a saved "
                        "or Hub dataset; repeat for more (default: none)")
    g.add_argument("--max_bad_frac", type=float, default=0.01,
                   help="fail the load when more than this share of images is unreadable (they are skipped and listed)")
    return parser


def synthetic_spec(args, split: str) -> synthetic.SyntheticSpec:
    from . import synthetic
    if split not in synthetic.SPLITS:
        raise UserError(f"synthetic data has splits {list(synthetic.SPLITS)}, not {split!r}")
    return synthetic.SyntheticSpec(
        split=split, num_images=args.num_images or synthetic.SPLITS[split], variant=args.variant,
        zoom_out=tuple(args.zoom_out), size=args.image_size, seed=args.data_seed)


def load_split(args, split: str) -> datasets.Dataset:
    """One split of the selected source as a Dataset in the project's row format."""
    from . import readers, synthetic
    if args.dataset == "synthetic":
        return synthetic.load(synthetic_spec(args, split), args.landmarks, args.data_workers)
    if args.dataset in readers.READERS:
        if args.data_dir is None:
            raise UserError(f"--dataset {args.dataset} needs --data_dir (the folder as its authors ship it)")
        ds = readers.READERS[args.dataset](args.data_dir, split, max_bad_frac=args.max_bad_frac)
    else:
        ds = readers.read_hf(args.dataset, split)
    if args.num_images:
        ds = ds.select(range(min(args.num_images, len(ds))))
    return ds


def describe(args, split: str) -> dict:
    """What identifies a split's pixels (for cache keys and model cards)."""
    if args.dataset == "synthetic":
        return {"source": "synthetic", "key": synthetic_spec(args, split).key()}
    local = Path(args.data_dir or args.dataset).expanduser()
    where = str(local.resolve()) if local.exists() else args.dataset
    # re-saving a dataset or replacing annotation files changes these mtimes: the cache is then rebuilt
    stamp = max((f.stat().st_mtime_ns for f in local.iterdir()), default=0) if local.is_dir() else 0
    return {"source": args.dataset, "where": where, "stamp": stamp, "split": split,
            "num_images": args.num_images, "version": CACHE_VERSION}


def added_source(args, spec: str) -> argparse.Namespace:
    """The data flags of one --add_data SOURCE (FORMAT:DIR, synthetic, or a saved or Hub dataset); --num_images
    keeps the first N of each source."""
    fmt, sep, folder = spec.partition(":")
    if sep and fmt in FORMATS and folder:
        dataset, data_dir = fmt, folder
    elif spec in FORMATS:
        raise UserError(f"--add_data {spec}: give its folder, as {spec}:DIR")
    else:
        dataset, data_dir = spec, None
    return argparse.Namespace(**{**vars(args), "dataset": dataset, "data_dir": data_dir, "add_data": []})


def union_tensors(args, size: int) -> TensorCache:
    """The `pretrain` split of --dataset and of every --add_data source, one after the other, without landmarks:
    each source's own cache (shared with runs that read it alone), copied once into a union cache."""
    from filelock import FileLock

    from . import synthetic
    from .cache import TensorCache, concatenate
    sources = [argparse.Namespace(**{**vars(args), "add_data": []})] + [added_source(args, s) for s in args.add_data]
    parts = [load_tensors(a, "pretrain", size) for a in sources]
    info = {"union": [describe(a, "pretrain") for a in sources], "size": size, "version": CACHE_VERSION}
    key = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    folder = synthetic.cache_root() / "tensors" / f"union-pretrain-{size}px-{key}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "meta.json").exists():
            concatenate(parts, folder, {**info, "sources": [a.dataset for a in sources]})
    return TensorCache.load(folder)


def load_tensors(args, split: str, size: int | None = None) -> TensorCache:
    """The split's uint8 tensor cache at `size` (default --image_size), built on first use; the `pretrain` split
    with --add_data is the union of the sources (union_tensors)."""
    from filelock import FileLock

    from . import synthetic
    from .cache import TensorCache, build_from_dataset
    size = size or args.image_size
    if split == "pretrain" and getattr(args, "add_data", None):
        return union_tensors(args, size)
    if args.dataset == "synthetic" and size == args.image_size:
        return synthetic.tensors(synthetic_spec(args, split), args.landmarks, args.data_workers)
    info = {**describe(args, split), "size": size, "landmarks": args.landmarks}
    key = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    folder = synthetic.cache_root() / "tensors" / f"{args.dataset.replace('/', '_')}-{split}-{size}px-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # several processes (GPUs) wait for one build
        if not (folder / "meta.json").exists():
            build_from_dataset(load_split(args, split), folder, size, name=f"{args.dataset}/{split}",
                               max_bad_frac=args.max_bad_frac, source=info)
    cache = TensorCache.load(folder)
    skipped = len(cache.meta.get("skipped", []))
    if skipped > args.max_bad_frac * (len(cache) + skipped):  # built earlier with a looser threshold
        raise UserError(f"{folder}: {skipped} images were skipped when this cache was built, more than "
                        f"--max_bad_frac {args.max_bad_frac} allows (see its meta.json)")
    return cache
