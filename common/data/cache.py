"""The uint8 tensor cache: every image decoded, cropped to its `box` and resized once.

Training never decodes a JPEG in its hot loop: it slices `images` ([N, 3, S, S] uint8, a
memory-mapped .npy file, no pickle) and moves whole batches to the accelerator. A folder holds
    images.npy     uint8  [N, 3, S, S]
    landmarks.npy  float32 [N, K, 2]  in cache pixels (same convention as the rows: pixel centres)
    visible.npy    bool   [N, K]
    identity.npy   int64  [N]
    rows.npy       int64  [N]          the dataset row each image came from (bad rows are skipped)
    meta.json      size, count, source, and the list of skipped files
meta.json is written last, so a folder without it is an unfinished build and is rebuilt.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import torch

from ..imageio import crop_resize
from .images import BadImage, BadLedger, open_rgb

logger = logging.getLogger("lead.data")
ARRAYS = ("images", "landmarks", "visible", "identity", "rows")


class TensorCache:
    def __init__(self, folder: Path, arrays: dict[str, np.ndarray], meta: dict):
        self.folder, self.meta = Path(folder), meta
        for k in ARRAYS:
            setattr(self, k, arrays[k])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @classmethod
    def create(cls, folder: Path, n: int, size: int, num_points: int) -> "TensorCache":
        """Empty memory-mapped arrays to fill; call finish() when done."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shapes = {"images": ((n, 3, size, size), np.uint8), "landmarks": ((n, num_points, 2), np.float32),
                  "visible": ((n, num_points), np.bool_), "identity": ((n,), np.int64), "rows": ((n,), np.int64)}
        arrays = {k: np.lib.format.open_memmap(folder / f"{k}.npy", mode="w+", dtype=dt, shape=sh)
                  for k, (sh, dt) in shapes.items()}
        arrays["rows"][:] = np.arange(n)
        return cls(folder, arrays, {})

    @classmethod
    def open(cls, folder: Path, mode: str = "r") -> "TensorCache":
        folder = Path(folder)
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode=mode, allow_pickle=False) for k in ARRAYS}
        meta_path = folder / "meta.json"
        return cls(folder, arrays, json.loads(meta_path.read_text()) if meta_path.exists() else {})

    @classmethod
    def load(cls, folder: Path) -> "TensorCache":
        if not (Path(folder) / "meta.json").exists():
            raise FileNotFoundError(f"{folder}: not a finished tensor cache (no meta.json)")
        return cls.open(folder)

    def finish(self, meta: dict) -> None:
        for k in ARRAYS:
            getattr(self, k).flush()
        self.meta = {**meta, "count": len(self), "size": self.size}
        (self.folder / "meta.json").write_text(json.dumps(self.meta, indent=1))

    def batch(self, idx) -> dict[str, torch.Tensor]:
        """Rows `idx` as tensors (copied out of the memory map)."""
        idx = np.asarray(idx)
        return {"images": torch.from_numpy(np.ascontiguousarray(self.images[idx])),
                "landmarks": torch.from_numpy(np.ascontiguousarray(self.landmarks[idx])),
                "visible": torch.from_numpy(np.ascontiguousarray(self.visible[idx])),
                "identity": torch.from_numpy(np.ascontiguousarray(self.identity[idx]))}


def build_from_dataset(ds: datasets.Dataset, folder: Path, size: int, name: str,
                       max_bad_frac: float = 0.01, source: dict | None = None) -> TensorCache:
    """Decode every row once; rows whose image cannot be decoded are skipped, counted and listed
    in meta.json (and the build fails past max_bad_frac). Written to a temporary folder first."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        cache = _fill(ds, tmp, size, name, max_bad_frac, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    del cache
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return TensorCache.load(folder)


def _fill(ds: datasets.Dataset, tmp: Path, size: int, name: str, max_bad_frac: float,
          source: dict | None) -> TensorCache:
    has_lm = "landmarks" in ds.column_names
    k = ds.features["landmarks"].shape[0] if has_lm else 0  # from the schema: row 0 may be a bad image
    cache = TensorCache.create(tmp, len(ds), size, k)
    try:                                 # what the reader skipped already (records_to_dataset): counted here too
        before = [tuple(b) for b in json.loads(ds.info.description or "{}").get("skipped", [])]
    except (ValueError, AttributeError):
        before = []
    ledger = BadLedger(name, max_bad_frac, total=len(ds) + len(before), bad=before)
    raw = ds.cast_column("image", datasets.Image(decode=False))
    n = 0
    for i, row in enumerate(raw):
        src = row["image"]
        try:
            img = open_rgb(src["bytes"] if src.get("bytes") else src["path"])
        except BadImage as e:
            ledger.add(src.get("path") or f"row {i}", str(e))
            continue
        box = row.get("box") or [-0.5, -0.5, img.width - 0.5, img.height - 0.5]
        cache.images[n], scale, offset = crop_resize(img, box, size)
        if has_lm:
            cache.landmarks[n] = np.asarray(row["landmarks"], np.float32) * scale + offset
            cache.visible[n] = row.get("visible") or True
        cache.identity[n] = row.get("identity", -1) if row.get("identity") is not None else -1
        cache.rows[n] = i
        n += 1
    ledger.report()
    cache = _truncate(cache, n)
    cache.finish({**(source or {}), "name": name, "skipped": ledger.bad})
    return cache


def concatenate(parts: list[TensorCache], folder: Path, meta: dict) -> TensorCache:
    """One cache holding the images of `parts` (same size) one after the other, without landmarks (identity -1);
    their skipped files are listed together. Written to a temporary folder, then renamed into place."""
    folder = Path(folder)
    if len({p.size for p in parts}) != 1:
        raise ValueError(f"caches of different sizes: {[p.size for p in parts]}")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out = TensorCache.create(tmp, sum(len(p) for p in parts), parts[0].size, 0)
    start = 0
    for part in parts:
        for s in range(0, len(part), 1024):                       # bounded memory
            chunk = part.images[s:s + 1024]
            out.images[start + s:start + s + len(chunk)] = chunk
        start += len(part)
    out.identity[:] = -1
    out.finish({**meta, "skipped": [b for p in parts for b in p.meta.get("skipped", [])],
                "counts": [len(p) for p in parts]})
    del out
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return TensorCache.load(folder)


def _truncate(cache: TensorCache, n: int) -> TensorCache:
    """Drop the unused tail left by skipped images (rewrites the arrays only when needed)."""
    if n == len(cache):
        return cache
    arrays = {}
    for k in ARRAYS:
        full = getattr(cache, k)
        kept = np.array(full[:n])
        del full
        np.save(cache.folder / f"{k}.npy", kept, allow_pickle=False)
        arrays[k] = np.load(cache.folder / f"{k}.npy", mmap_mode="r+", allow_pickle=False)
    return TensorCache(cache.folder, arrays, cache.meta)
