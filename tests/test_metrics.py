"""Landmark metrics (common/metrics.py) against values worked out by hand.

Coordinates: (x, y) pixels at pixel centres, 0-based; an S-pixel image spans [-0.5, S - 0.5]; a feature
map of any resolution covers the whole image (grid_sample / interpolate with align_corners=False).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.metrics import inter_ocular, iod_error, match, pck, point_errors, sample_at


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def far_points(k: int, seed: int = 0) -> torch.Tensor:
    """K points far away from anything placed by hand (so a wrong index shows): [K, 2]."""
    return 500 + 100 * torch.rand(k, 2, generator=gen(seed))


# -------------------------------------------------------------------------------- inter-ocular

def test_inter_ocular_5_points_uses_eye_centres_0_and_1():
    gt = far_points(5)[None].repeat(2, 1, 1)
    gt[0, 0], gt[0, 1] = torch.tensor([10.0, 20.0]), torch.tensor([13.0, 24.0])    # 3-4-5
    gt[1, 0], gt[1, 1] = torch.tensor([40.0, 30.0]), torch.tensor([28.0, 25.0])    # 12-5-13
    torch.testing.assert_close(inter_ocular(gt), torch.tensor([5.0, 13.0]))


def test_inter_ocular_68_points_uses_outer_corners_36_and_45():
    gt = far_points(68, 1)[None].repeat(3, 1, 1)
    gt[0, 36], gt[0, 45] = torch.tensor([30.0, 50.0]), torch.tensor([70.0, 50.0])  # horizontal, 40
    gt[1, 36], gt[1, 45] = torch.tensor([0.0, 0.0]), torch.tensor([6.0, 8.0])      # 10
    gt[2, 36], gt[2, 45] = torch.tensor([1.5, 2.5]), torch.tensor([1.5, 9.5])      # vertical, 7
    # decoys at the 5-point eye indices and the inner corners (39, 42)
    gt[:, 0], gt[:, 1], gt[:, 39], gt[:, 42] = 0.0, 1000.0, 5.0, 6.0
    torch.testing.assert_close(inter_ocular(gt), torch.tensor([40.0, 10.0, 7.0]))


@pytest.mark.parametrize("k", [1, 4, 6, 15, 19, 21, 67, 98])
def test_inter_ocular_rejects_unknown_point_counts(k):
    with pytest.raises(ValueError):
        inter_ocular(torch.zeros(2, k, 2))


# -------------------------------------------------------------------------------- point errors

def test_point_errors_mean_euclidean():
    gt = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]],           # 5, 1, 0 -> 2
                         [[-6.0, 8.0], [1.0, 1.0], [0.0, -2.0]]])        # 10, sqrt 2, 2
    expect = torch.tensor([2.0, (12 + math.sqrt(2)) / 3])
    torch.testing.assert_close(point_errors(pred, gt), expect)


def test_point_errors_ignore_invisible_points():
    gt = torch.tensor([[[10.0, 10.0], [20.0, 20.0], [0.0, 0.0], [30.0, 5.0]]])
    pred = torch.tensor([[[11.0, 10.0], [20.0, 23.0], [900.0, -700.0], [30.0, 5.0]]])
    vis = torch.tensor([[True, True, False, True]])
    # visible errors 1, 3, 0 -> mean 4 / 3; the wild invisible point must not count (nor its slot)
    torch.testing.assert_close(point_errors(pred, gt, vis), torch.tensor([4 / 3]))
    # 0/1 integer masks work like booleans
    torch.testing.assert_close(point_errors(pred, gt, vis.long()), torch.tensor([4 / 3]))
    # no visible point: nan, not 0
    assert torch.isnan(point_errors(pred, gt, torch.zeros_like(vis))).all()


def test_iod_error_hand_example():
    # 5 points, eyes 10 px apart; visible errors 1 and 3 px (others invisible) -> mean 2 px = 20 % of 10
    gt = torch.tensor([[[20.0, 30.0], [30.0, 30.0], [25.0, 40.0], [21.0, 50.0], [29.0, 50.0]]])
    pred = gt.clone()
    pred[0, 0] += torch.tensor([1.0, 0.0])      # 1 px
    pred[0, 2] += torch.tensor([0.0, -3.0])     # 3 px
    pred[0, 3] += torch.tensor([40.0, 40.0])    # invisible
    vis = torch.tensor([[True, True, True, False, False]])
    # visible errors: 1, 0, 3 -> mean 4/3 px -> 13.33 %
    torch.testing.assert_close(iod_error(pred, gt, visible=vis), torch.tensor([100 * (4 / 3) / 10]))
    vis2 = torch.tensor([[True, False, True, False, False]])                # errors 1 and 3 only
    torch.testing.assert_close(iod_error(pred, gt, visible=vis2), torch.tensor([20.0]))


def test_iod_error_68_points_per_image():
    gt = far_points(68, 2)[None].repeat(2, 1, 1)
    gt[0, 36], gt[0, 45] = torch.tensor([10.0, 10.0]), torch.tensor([50.0, 40.0])   # 50 px
    gt[1, 36], gt[1, 45] = torch.tensor([10.0, 10.0]), torch.tensor([30.0, 10.0])   # 20 px
    pred = gt.clone()
    pred[:, :, 0] += 2.0                                                    # every point off by 2 px
    torch.testing.assert_close(iod_error(pred, gt), torch.tensor([4.0, 10.0]))
    # other eye points by index (e.g. the inner corners 39 and 42): the same errors over their distance
    gt[:, 39], gt[:, 42] = torch.tensor([0.0, 0.0]), torch.tensor([8.0, 0.0])       # 8 px
    pred = gt.clone()
    pred[:, :, 0] += 2.0
    torch.testing.assert_close(iod_error(pred, gt, eye_idx=(39, 42)), torch.tensor([25.0, 25.0]))


def test_pck_hand_count():
    # size 100, alpha 0.05 -> threshold 5 px
    gt = torch.zeros(2, 4, 2)
    pred = torch.tensor([[[3.0, 0.0], [4.0, 3.9], [6.0, 0.0], [0.0, 0.0]],      # 3, 5.59, 6, 0
                         [[0.0, 4.9], [0.0, 0.0], [100.0, 0.0], [3.0, 3.0]]])   # 4.9, 0, 100, 4.24
    vis = torch.tensor([[True, True, True, False],
                        [True, True, False, True]])
    # visible: 3 hit, 5.59 miss, 6 miss | 4.9 hit, 0 hit, 4.24 hit -> 4 of 6
    got = pck(pred, gt, vis, size=100)
    assert got.dtype.is_floating_point
    torch.testing.assert_close(got, torch.tensor(4 / 6))
    # alpha 0.1 at size 58 -> 5.8 px: the 5.59 px miss becomes a hit, the 6 px one stays a miss: 5 of 6
    torch.testing.assert_close(pck(pred, gt, vis, size=58, alpha=0.1), torch.tensor(5 / 6))
    # alpha 0.1 at size 64 -> 6.4 px: both become hits, 6 of 6 (the 100 px error is invisible)
    torch.testing.assert_close(pck(pred, gt, vis, size=64, alpha=0.1), torch.tensor(1.0))
    # per landmark, over the images where it is visible: 2/2, 1/2, 0/1 (the 6 px miss), 1/1 (the 4.24 px hit)
    torch.testing.assert_close(pck(pred, gt, vis, size=100, per_landmark=True), torch.tensor([1.0, 0.5, 0.0, 1.0]))
    assert pck(pred, gt, torch.zeros_like(vis), size=100, per_landmark=True).isnan().all()


def test_pck_is_the_regression_scorers_rule():
    """regress.py's Scorer (--metric pck): miss = error >= pck_alpha * crop over the visible points, its per-landmark
    errors the means over the images; 100 - PCK is that miss rate, a point exactly at the threshold a miss."""
    g = gen(1)
    gt = 32 * torch.rand(50, 15, 2, generator=g)
    pred = gt + 3 * torch.randn(50, 15, 2, generator=g)
    gt[0, 0], pred[0, 0] = torch.tensor([10.0, 10.0]), torch.tensor([14.0, 10.0])  # exactly at 0.125 x 32: a miss
    visible = torch.rand(50, 15, generator=g) > 0.3
    visible[0, 0] = True
    miss = torch.where(visible, ((pred - gt).norm(dim=-1) >= 0.125 * 32).float(), float("nan"))  # Scorer's lines
    assert 100 * (1 - pck(pred, gt, visible, 32, 0.125).item()) == pytest.approx(100 * miss.nanmean().item())
    per_landmark = pck(pred, gt, visible, 32, 0.125, per_landmark=True)
    torch.testing.assert_close(100 * (1 - per_landmark), 100 * miss.nanmean(0))
    assert pck(pred[:1, :1], gt[:1, :1], visible[:1, :1], 32, 0.125) == 0


# ------------------------------------------------------------------------------------- sampling

def test_sample_at_full_resolution_reads_pixel_centres():
    s, c = 8, 3
    f = torch.rand(2, c, s, s, generator=gen(0))
    pts = torch.tensor([[[0, 0], [7, 0], [0, 7], [3, 5], [7, 7]],
                        [[1, 2], [2, 1], [6, 4], [4, 6], [5, 5]]], dtype=torch.float32)
    got = sample_at(f, pts, s)
    assert got.shape == (2, 5, c)
    for n in range(2):
        for p in range(5):
            x, y = pts[n, p].long().tolist()
            torch.testing.assert_close(got[n, p], f[n, :, y, x], atol=1e-6, rtol=0)   # (x, y) -> [y, x]


def test_sample_at_half_resolution_is_bilinear():
    # 16 px image, 8 x 8 map: feature cell (i, j) covers image [2j - 0.5, 2j + 1.5] and is centred at
    # image x = 2j + 0.5, so image coordinate x sits at map coordinate (x - 0.5) / 2.
    f = torch.arange(2 * 64, dtype=torch.float32).reshape(1, 2, 8, 8) ** 1.5     # not linear
    v = f[0].permute(1, 2, 0)                                                     # v[i, j] = f[:, i, j]
    pts = torch.tensor([[[4.5, 6.5],     # map (2, 3): a cell centre exactly
                         [5.5, 6.5],     # map (2.5, 3): midpoint of (i=3, j=2) and (3, 3)
                         [4.5, 7.5],     # map (2, 3.5): midpoint of (3, 2) and (4, 2)
                         [5.5, 7.5],     # map (2.5, 3.5): mean of four cells
                         [1.0, 4.0],     # map (0.25, 1.75): weights 3/4, 1/4 in x; 1/4, 3/4 in y
                         [-0.5, 0.5]]])  # left border: map (-0.5, 0) clamps to column 0
    expect = torch.stack([
        v[3, 2],
        (v[3, 2] + v[3, 3]) / 2,
        (v[3, 2] + v[4, 2]) / 2,
        (v[3, 2] + v[3, 3] + v[4, 2] + v[4, 3]) / 4,
        0.25 * (0.75 * v[1, 0] + 0.25 * v[1, 1]) + 0.75 * (0.75 * v[2, 0] + 0.25 * v[2, 1]),
        v[0, 0],
    ])
    torch.testing.assert_close(sample_at(f, pts, 16)[0], expect, atol=1e-4, rtol=1e-6)


# -------------------------------------------------------------------------------------- matching

def one_hot_features(s: int, n: int = 1) -> torch.Tensor:
    """Channel y * s + x is 1 at pixel (x, y), 0 elsewhere: [n, s*s, s, s]."""
    return torch.eye(s * s).reshape(s * s, s, s)[None].repeat(n, 1, 1, 1)


def random_features(c: int, s: int, seed: int, n: int = 1) -> torch.Tensor:
    """Random unit vectors per pixel: [n, c, s, s]."""
    return F.normalize(torch.randn(n, c, s, s, generator=gen(seed)), dim=1)


@pytest.mark.parametrize("chunk", [256, 7])
def test_match_one_hot_self_is_exact(chunk):
    s = 16
    f = one_hot_features(s, 2)
    pts = torch.tensor([[[0, 0], [15, 0], [0, 15], [15, 15], [3, 9], [9, 3]],
                        [[7, 7], [8, 7], [7, 8], [1, 14], [14, 1], [5, 5]]], dtype=torch.float32)
    got, score = match(f, f, pts, s, chunk=chunk)
    assert got.shape == pts.shape and score.shape == pts.shape[:2]
    assert torch.equal(got, pts)
    torch.testing.assert_close(score, torch.ones(2, 6), atol=1e-6, rtol=0)


def test_match_finds_an_integer_shift():
    s, dx, dy = 32, 3, -2
    ref = random_features(16, s, 0)
    query = torch.roll(ref, shifts=(dy, dx), dims=(2, 3))    # query[y + dy, x + dx] = ref[y, x]
    g = gen(1)
    pts = torch.randint(4, s - 4, (1, 40, 2), generator=g).float()
    got, score = match(ref, query, pts, s)
    torch.testing.assert_close(got, pts + torch.tensor([dx, dy], dtype=torch.float32), atol=0, rtol=0)
    torch.testing.assert_close(score, torch.ones(1, 40), atol=1e-5, rtol=0)


def test_match_chunk_size_does_not_change_the_result():
    s = 24
    ref = torch.randn(2, 40, s // 2, s // 2, generator=gen(2))            # half resolution, not normalised
    query = ref.roll(1, dims=3) + 0.3 * torch.randn(2, 40, s // 2, s // 2, generator=gen(3))
    pts = torch.rand(2, 30, 2, generator=gen(4)) * (s - 1)                # fractional points too
    p1, s1 = match(ref, query, pts, s, chunk=1)
    p256, s256 = match(ref, query, pts, s, chunk=256)
    p7, s7 = match(ref, query, pts, s, chunk=7)
    assert torch.equal(p1, p256) and torch.equal(p7, p256)
    torch.testing.assert_close(s1, s256, atol=1e-5, rtol=0)
    torch.testing.assert_close(s7, s256, atol=1e-5, rtol=0)


def test_match_low_resolution_features_give_image_pixels():
    s = 64
    ref = random_features(24, 16, 5, n=2)                                   # stride 4
    query = random_features(24, 16, 6, n=2)
    pts = torch.rand(2, 50, 2, generator=gen(7)) * (s - 1)
    got, score = match(ref, query, pts, s)
    assert got.shape == (2, 50, 2) and got.dtype.is_floating_point
    assert torch.equal(got, got.round())
    assert got.min() >= 0 and got.max() <= s - 1
    # both coordinates really span the image (not confined to the 16 x 16 feature grid)
    assert got[..., 0].max() > 20 and got[..., 1].max() > 20
    assert (score <= 1 + 1e-5).all() and (score >= -1 - 1e-5).all()


def test_match_low_resolution_self_returns_the_points():
    # Same map both sides: the descriptor at pixel p is the upsampled query at p exactly (both bilinear,
    # align_corners=False), so p wins with cosine 1. Pixels 0, 1 and S-2, S-1 share clamped values, so
    # stay off the two outermost pixels of each side.
    s = 64
    f = random_features(24, 16, 8, n=2)
    pts = torch.randint(2, s - 2, (2, 40, 2), generator=gen(9)).float()
    pts[0, 0] = torch.tensor([2.0, 61.0])
    pts[0, 1] = torch.tensor([61.0, 2.0])
    got, score = match(f, f, pts, s)
    assert torch.equal(got, pts)
    torch.testing.assert_close(score, torch.ones(2, 40), atol=1e-5, rtol=0)


def test_match_low_resolution_shift_scales_with_stride():
    # a shift of one feature cell at stride 4 is a shift of 4 image pixels
    s = 64
    ref = random_features(24, 16, 10)
    query = torch.roll(ref, shifts=(1, -1), dims=(2, 3))                   # dy = +1 cell, dx = -1 cell
    pts = (4 * torch.randint(2, 14, (1, 30, 2), generator=gen(11)) + 1).float()   # interior pixels
    got, _ = match(ref, query, pts, s)
    torch.testing.assert_close(got, pts + torch.tensor([-4.0, 4.0]), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_match_low_precision_features(dtype):
    # one-hot features are exact in half precision: same answer as in float32
    s = 16
    f = one_hot_features(s)
    pts = torch.tensor([[[3, 9], [9, 3], [15, 0]]], dtype=torch.float32)
    got, score = match(f.to(dtype), f.to(dtype), pts, s)
    assert torch.equal(got, pts)
    torch.testing.assert_close(score.float(), torch.ones(1, 3), atol=1e-2, rtol=0)


def upsampled_cosine(ref, query, pts, ref_hw, query_hw):
    """The reference computation that match avoids: the query map upsampled channel by channel to the
    image, normalised, and compared with the normalised descriptors: [N, P, H*W]."""
    desc = F.normalize(sample_at(ref, pts, ref_hw), dim=-1)
    up = F.normalize(F.interpolate(query, size=query_hw, mode="bilinear", align_corners=False), dim=1)
    return torch.einsum("npc,nchw->nphw", desc, up).flatten(2)


@pytest.mark.parametrize("query_hw", [(64, 64), (50, 37), (9, 7)])
def test_match_equals_the_upsampled_cosine(query_hw):
    # non-square maps, a non-integer stride, a query of another size, and one smaller than its map
    ref = torch.randn(2, 33, 13, 11, generator=gen(12))
    query = torch.randn(2, 33, 13, 11, generator=gen(13)) + 0.5 * ref
    pts = torch.rand(2, 25, 2, generator=gen(14)) * torch.tensor([43.0, 51.0])
    sim = upsampled_cosine(ref, query, pts, (52, 44), query_hw)
    got, score = match(ref, query, pts, (52, 44), chunk=8, query_size=query_hw)
    torch.testing.assert_close(score, sim.max(-1).values, atol=1e-5, rtol=0)
    # the chosen pixel is the best one, or within rounding of it
    at = sim.gather(-1, (got[..., 1] * query_hw[1] + got[..., 0]).long()[..., None])[..., 0]
    torch.testing.assert_close(at, sim.max(-1).values, atol=1e-5, rtol=0)


def test_match_by_groups_sums_each_groups_upsampled_cosine():
    """groups: ContrastLandmark's layer-wise normalisation, each group upsampled, normalised and compared on its own,
    the cosines summed; the reference builds the upsampled maps."""
    ref = torch.randn(2, 12, 9, 9, generator=gen(15))
    query = torch.randn(2, 12, 9, 9, generator=gen(16)) + 0.5 * ref
    pts = torch.rand(2, 7, 2, generator=gen(17)) * 35
    sim = sum(upsampled_cosine(ref[:, a:b], query[:, a:b], pts, (36, 36), (36, 36)) for a, b in ((0, 4), (4, 12)))
    got, score = match(ref, query, pts, 36, chunk=3, groups=(4, 8))
    torch.testing.assert_close(score, sim.max(-1).values, atol=1e-5, rtol=0)
    at = sim.gather(-1, (got[..., 1] * 36 + got[..., 0]).long()[..., None])[..., 0]
    torch.testing.assert_close(at, sim.max(-1).values, atol=1e-5, rtol=0)
