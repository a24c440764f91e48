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
