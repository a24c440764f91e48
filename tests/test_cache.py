"""The uint8 tensor cache: crop boxes map points exactly, bad images are skipped and listed."""
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from common.data.cache import TensorCache, build_from_dataset
from common.imageio import crop_resize
from common.data.images import features, records_to_dataset


def dot_image(w, h, x, y):
    a = np.zeros((h, w, 3), np.uint8)
    a[y, x] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize("box,size", [
    ([-0.5, -0.5, 39.5, 39.5], 20),      # whole image, halved
    ([9.5, 4.5, 29.5, 24.5], 40),        # a 20 px square, doubled
    ([-10.5, -10.5, 49.5, 49.5], 30),    # larger than the image: zero padding
])
def test_crop_resize_maps_points_onto_their_pixels(box, size):
    """A single bright pixel and its coordinates, mapped by the returned affine, must agree with the
    intensity centroid of the resized picture (computed from pixels, not from the map)."""
    x, y = 17, 12
    arr, scale, offset = crop_resize(dot_image(40, 40, x, y), box, size)
    lum = arr.astype(np.float64).mean(0)
    ys, xs = np.mgrid[:size, :size]
    centroid = np.array([(lum * xs).sum(), (lum * ys).sum()]) / lum.sum()
    mapped = np.array([x, y]) * scale + offset
    assert np.allclose(mapped, centroid, atol=0.05), (mapped, centroid)
    # by hand: x_cache = (x - x0) * size / (x1 - x0) - 0.5
    assert np.allclose(mapped, (np.array([x, y]) - np.array(box[:2])) * size / (box[2] - box[0]) - 0.5)


def test_padding_outside_the_image_is_black():
    img = Image.new("RGB", (10, 10), (200, 100, 50))
    arr, _, _ = crop_resize(img, [-10.5, -0.5, 9.5, 19.5], 20)
    assert (arr[:, 2:8, 2:8] == 0).all()                 # the left/bottom quarter lies outside
    assert (arr[:, 2:8, 13:18] == np.array([200, 100, 50])[:, None, None]).all()


def _dataset(tmp_path, n_good, bad_kinds):
    recs = []
    for i in range(n_good):
        p = tmp_path / f"good{i}.png"
        dot_image(32, 32, 5 + i, 9).save(p)
        recs.append({"image": str(p), "landmarks": [[5 + i, 9]], "identity": i})
    ds = records_to_dataset(recs, "fixture", num_points=1)
    # bad files that only a full decode finds: a truncated JPEG with a valid header
    rows = ds.to_list()
    for j, kind in enumerate(bad_kinds):
        p = tmp_path / f"bad{j}.jpg"
        buf = tmp_path / "full.jpg"
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, quality=95)
        data = buf.read_bytes()
        p.write_bytes(data[: len(data) // 3] if kind == "truncated" else data[:20])
        rows.append({**rows[0], "image": {"bytes": None, "path": str(p)}})
    return datasets.Dataset.from_list(rows, features=features(1))


def test_build_skips_undecodable_images_and_lists_them(tmp_path):
    ds = _dataset(tmp_path, 5, ["truncated"])
    cache = build_from_dataset(ds, tmp_path / "cache", 16, "fixture", max_bad_frac=0.5)
    assert len(cache) == 5 and cache.images.shape == (5, 3, 16, 16) and cache.images.dtype == np.uint8
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert [p for p, _ in meta["skipped"]] == [str(tmp_path / "bad0.jpg")]
    assert list(cache.rows) == [0, 1, 2, 3, 4]
    # landmark of row 2 (pixel (7, 9) of 32 px) at half scale
    assert np.allclose(cache.landmarks[2, 0], np.array([7, 9]) * 0.5 - 0.25)
    again = TensorCache.load(tmp_path / "cache")
    assert np.array_equal(again.images, cache.images) and list(again.identity) == [0, 1, 2, 3, 4]


def test_build_fails_past_the_bad_share(tmp_path):
    ds = _dataset(tmp_path, 3, ["truncated", "header"])
    with pytest.raises(UserError, match=r"2 of 5 images are bad .*bad0.jpg"):
        build_from_dataset(ds, tmp_path / "cache", 16, "fixture", max_bad_frac=0.1)
    assert not (tmp_path / "cache").exists()


def test_unfinished_cache_is_not_loaded(tmp_path):
    TensorCache.create(tmp_path / "c", 2, 8, 1)
    with pytest.raises(FileNotFoundError, match="not a finished tensor cache"):
        TensorCache.load(tmp_path / "c")


def test_a_bad_first_row_is_skipped_too(tmp_path):
    ds = _dataset(tmp_path, 3, ["truncated"])
    rows = ds.to_list()
    ds = datasets.Dataset.from_list([rows[-1]] + rows[:-1], features=features(1))   # the bad one first
    cache = build_from_dataset(ds, tmp_path / "cache", 16, "fixture", max_bad_frac=0.5)
    assert len(cache) == 3 and list(cache.rows) == [1, 2, 3]
