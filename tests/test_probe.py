"""The matching probe on a small synthetic split."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data import synthetic
from common.data.synthetic import SyntheticSpec
from common.probe import matching_probe, other_faces

pytestmark = pytest.mark.usefixtures("one_thread")


def patches(images):
    n, c, h, w = images.shape
    p = F.unfold(images, 5, padding=2).reshape(n, c * 25, h, w)
    return p - p.mean(1, keepdim=True)


class Reads:
    """A cache that records the rows each batch() reads: the probe's pairs as it uses them, not as it draws them
    (per chunk of pairs, the reference images A, then the images B of another identity)."""

    def __init__(self, cache):
        self.cache, self.reads = cache, []

    def __len__(self):
        return len(self.cache)

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def batch(self, idx):
        self.reads.append(np.array(idx))
        return self.cache.batch(idx)

    def pairs(self):
        return np.concatenate(self.reads[0::2]), np.concatenate(self.reads[1::2])


def test_probe_reports_errors_next_to_their_floors(cache_dir):
    cache = synthetic.tensors(SyntheticSpec(split="val", num_images=20, size=64), 5, workers=1)
    seen = Reads(cache)
    r = matching_probe(patches, seen, 64, pairs=12, seed=3, batch=5)
    assert r["same_iod"] < r["same_floor_iod"]                 # exact warps: local patches follow them
    assert 0 <= r["diff_miss"] <= 1 and r["same_iod_median"] <= r["same_iod"] * 2
    a, b = seen.pairs()
    ident = np.asarray(cache.identity)
    assert len(a) == len(b) == 12 and len(set(a)) == 12       # 12 pairs, no reference twice (20 faces to draw from)
    assert ((0 <= a) & (a < 20) & (0 <= b) & (b < 20)).all()
    assert (ident[a] != ident[b]).all() and len(set(ident[a])) > 1            # another identity, of several
    # the different-identity floor from its definition, on the pairs the probe read: A's points left in place on B
    lm = torch.from_numpy(np.array(cache.landmarks))
    iod = (lm[b, 0] - lm[b, 1]).norm(dim=-1)                   # points 0 and 1 of the 5: the eyes
    floor = 100 * ((lm[a] - lm[b]).norm(dim=-1) / iod[:, None]).mean()
    assert r["diff_floor_iod"] == pytest.approx(floor.item(), rel=1e-5)
    again = Reads(cache)
    assert r == matching_probe(patches, again, 64, pairs=12, seed=3, batch=5)              # seeded: same figures
    assert all(np.array_equal(x, y) for x, y in zip(seen.pairs(), again.pairs()))          # on the same pairs
    other = Reads(cache)
    matching_probe(patches, other, 64, pairs=12, seed=4, batch=5)
    assert not np.array_equal(other.pairs()[0], a)                                          # another seed, others


def test_other_faces_by_hand():
    # identities 7, 7, 8 and one unknown (-1: any other image counts as another identity)
    identity = np.array([7, 7, 8, -1])
    assert other_faces(identity, 0).tolist() == [2, 3]
    assert other_faces(identity, 2).tolist() == [0, 1, 3]
    assert other_faces(identity, 3).tolist() == [0, 1, 2]      # never the image itself


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
