"""The matching probe on a small synthetic split."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data import synthetic
from common.data.synthetic import SyntheticSpec
from common.probe import matching_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def patches(images):
    n, c, h, w = images.shape
    p = F.unfold(images, 5, padding=2).reshape(n, c * 25, h, w)
    return p - p.mean(1, keepdim=True)


def test_probe_reports_errors_next_to_their_floors(cache_dir):
    cache = synthetic.tensors(SyntheticSpec(split="val", num_images=20, size=64), 5, workers=1)
    r = matching_probe(patches, cache, 64, pairs=12, seed=3, batch=5)
    assert r["same_iod"] < r["same_floor_iod"]                 # exact warps: local patches follow them
    assert 0 <= r["diff_miss"] <= 1 and r["same_iod_median"] <= r["same_iod"] * 2
    # the different-identity floor by hand: the same pairs, points left where they are
    rng = np.random.default_rng(3)
    ident = np.asarray(cache.identity)
    a = rng.choice(20, size=12, replace=False)
    b = np.array([rng.choice(np.flatnonzero(ident != ident[i])) for i in a])
    lm = torch.from_numpy(np.array(cache.landmarks))
    iod = (lm[b, 0] - lm[b, 1]).norm(dim=-1)
    floor = 100 * ((lm[a] - lm[b]).norm(dim=-1) / iod[:, None]).mean()
    assert r["diff_floor_iod"] == pytest.approx(floor.item(), rel=1e-5)
    assert r == matching_probe(patches, cache, 64, pairs=12, seed=3, batch=5)   # seeded


def test_one_renderer_writes_every_matching_table():
    """matching_table: a row per model, '–' where a model lacks a figure, the floor row from the first result that
    has one (blank where a column has no floor), every row as wide as the header."""
    from common.probe import matching_table
    figures = {"dim": 64, "same_px": 1.234, "same_iod": 3.45, "diff_px": 2.5, "diff_iod": 7.77, "diff_miss": 0.125,
               "photo_px": 0.9, "same_floor_px": 5.5, "same_floor_iod": 12.3, "diff_floor_px": 8.8,
               "diff_floor_iod": 20.1, "photo_floor_px": 4.4}
    lines = matching_table([("none yet", {}), ("lead-64", figures)],
                           ("dim", "same_px", "same_iod", "diff_iod", "diff_miss", ("paper", "paper", ".2f")))
    assert lines == ["| features | dim | same id. px | same id. % IOD | different id. % IOD | different id. > 1 IOD "
                     "| paper |",
                     "| --- | --- | --- | --- | --- | --- | --- |",
                     "| none yet | – | – | – | – | – | – |",
                     "| lead-64 | 64 | 1.23 | 3.5 | 7.8 | 12 % | – |",
                     "| points left in place | 0 | 5.50 | 12.3 | 20.1 | | |"]
    assert matching_table([("x", {"same_iod": 1.0})], ("same_iod",), "probe")[-1] == "| x | 1.0 |"     # no floor
