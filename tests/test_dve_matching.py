"""DVE's matching protocol (common/dve_matching.py) against a small independent re-derivation, in plain numpy and
scipy, of what DVE's utils/tps.py and test_matching.py compute: the thin-plate-spline sampling grid, the warp of an
image (grid_sample with align_corners=True and zero padding), the landmarks' nearest-pixel inverse (a KD-tree),
find_descriptor's arg-max on the feature grid and compute_pixel_err's 70 x 70 frame."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from common.dve_matching import (WARP, design, draw_warp, dve_matching, match_cells, match_pixels, sampling_grid,
                                 views)
from common.protocols import Protocol


def fixed_weights(seed: int) -> np.ndarray:
    """A warp's weights [103, 2]: kernel weights of DVE's size, then an affine part (rotation 3 deg, scale 1.04,
    shift (0.03, -0.02))."""
    rng = np.random.default_rng(seed)
    rot, sc = math.radians(3), 1.04
    aff = [[0.03, -0.02], [sc * math.cos(rot), -sc * math.sin(rot)], [sc * math.sin(rot), sc * math.cos(rot)]]
    return np.concatenate([rng.normal(0, 0.005, (100, 2)), aff]).astype(np.float32)


def np_grid(weights: np.ndarray, side: int) -> np.ndarray:
    """DVE's sampling grid, pixel by pixel: g(x, y) = sum_j U(|p - c_j|^2) w_j + t + x a_1 + y a_2."""
    ticks, ctrl_ticks = np.linspace(-1, 1, side), np.linspace(-1, 1, 10)
    ctrl = np.array([(cx, cy) for cy in ctrl_ticks for cx in ctrl_ticks])        # row by row, x fastest
    grid = np.zeros((side, side, 2))
    for r in range(side):
        for c in range(side):
            d2 = ((ctrl - [ticks[c], ticks[r]]) ** 2).sum(1)
            grid[r, c] = (d2 * np.log(d2 + 1e-5)) @ weights[:100] + weights[100] + ticks[c] * weights[101] \
                + ticks[r] * weights[102]
    return grid


def np_sample(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear sampling of image [C, S, S] at grid [S, S, 2] in [-1, 1] (corner pixels at -1 and 1), zero outside."""
    c, side, _ = image.shape
    out = np.zeros((c, side, side))
    for r in range(side):
        for q in range(side):
            x, y = (grid[r, q] + 1) / 2 * (side - 1)
            x0, y0 = math.floor(x), math.floor(y)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= xx < side and 0 <= yy < side:
                        out[:, r, q] += wy * wx * image[:, yy, xx]
    return out


def np_nearest(points: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """DVE's warp_keypoints: the pixel whose sampling position (in pixels) is nearest to each point."""
    side = grid.shape[0]
    _, idx = cKDTree(((grid + 1) / 2 * (side - 1)).reshape(-1, 2)).query(points)
    return np.stack([idx % side, idx // side], 1).astype(float)


def test_sampling_grid_is_the_thin_plate_spline_of_its_weights():
    w = fixed_weights(0)
    ours = sampling_grid(torch.from_numpy(w)[None], design(14), 14)[0].numpy()
    np.testing.assert_allclose(ours, np_grid(w, 14), atol=1e-5)


def test_two_views_and_their_landmarks_by_hand(one_thread):
    side, margin = 16, 3
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (1, 3, side, side)).astype(np.uint8)
    points = np.array([[[4.3, 5.1], [10.2, 9.7], [7.0, 12.4]]])
    w1, w2 = fixed_weights(1), fixed_weights(2)
    one, two, kp_one, kp_two = views(torch.from_numpy(image), torch.from_numpy(points).float(),
                                     torch.from_numpy(np.stack([w1, w2]))[None], design(side), margin)
    g1, g2 = np_grid(w1, side), np_grid(w2, side)
    once = np_sample(image[0].astype(float), g1)
    twice = np_sample(once, g2)
    cut = slice(margin, side - margin)
    # uint8 by truncation, as DVE's .to(torch.uint8); a value within 1e-3 of an integer may truncate either way
    for ours, ref in ((one[0], twice), (two[0], once)):
        diff = ours.numpy().astype(float) - np.floor(ref[:, cut, cut])
        near = np.abs(ref[:, cut, cut] - np.round(ref[:, cut, cut])) < 1e-3
        assert (np.abs(diff)[~near] == 0).all() and (np.abs(diff)[near] <= 1).all()
    kp_single = np_nearest(points[0], g1)
    np.testing.assert_array_equal(kp_two[0].numpy(), kp_single - margin)              # view 2: I o g1
    np.testing.assert_array_equal(kp_one[0].numpy(), np_nearest(kp_single, g2) - margin)   # view 1: I o g1 o g2


def dve_find_descriptor(x, y, source, target, stride):
    """test_matching.py's find_descriptor, written again with numpy (source, target [C, H, W])."""
    c, h, w = source.shape
    cx, cy = min(w - 1, max(int(np.round(x / stride)), 0)), min(h - 1, max(int(np.round(y / stride)), 0))
    corr = source[:, cy, cx] @ target.reshape(c, h * w)
    best = int(corr.argmax())
    return (best % w) * stride, (best // w) * stride


def test_grid_arg_max_is_dves_find_descriptor():
    """match_cells against find_descriptor point by point."""
    rng = np.random.default_rng(3)
    source, target = rng.normal(size=(2, 2, 8, 24, 24)).astype(np.float32)
    points = rng.uniform(-2, 97, (2, 5, 2)).astype(np.float32)                    # some off the image: clamped
    ours = match_cells(torch.from_numpy(source), torch.from_numpy(target), torch.from_numpy(points), 96).numpy()
    for n in range(2):
        for k in range(5):
            assert tuple(ours[n, k]) == pytest.approx(dve_find_descriptor(*points[n, k], source[n], target[n], 4.0))


def test_upsampled_matching_finds_a_unique_descriptor():
    """ContrastLandmark's matcher: a feature map whose every pixel is distinct (its coordinates) carries each point
    to its own rounded pixel."""
    side = 12
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")
    ax, ay = xs / side * math.pi / 2, ys / side * math.pi / 2                      # a quarter turn across the map
    maps = torch.stack([torch.cos(ax), torch.sin(ax), torch.cos(ay), torch.sin(ay)])[None]   # two unit circles
    points = torch.tensor([[[2.4, 3.6], [9.5, 1.2], [11.0, 11.0]]])
    found = match_pixels(maps, maps, points, side, (2, 2))
    torch.testing.assert_close(found, torch.round(points))


def test_warps_are_drawn_at_dves_strength():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_warp(g) for _ in range(400)])
    kernel = draws[:, :100].flatten()
    assert kernel.std().item() == pytest.approx(math.sqrt((WARP["warpsd_all"] ** 2 + WARP["warpsd_subset"] ** 2) / 2),
                                                rel=0.05)
    aff = draws[:, 101:]                                                         # [[sc cos, -sc sin], [sc sin, sc cos]]
    torch.testing.assert_close(aff[:, 0, 0], aff[:, 1, 1])
    torch.testing.assert_close(aff[:, 0, 1], -aff[:, 1, 0])
    scale = aff[:, 0].norm(dim=-1)
    assert scale.std().item() == pytest.approx(WARP["scalesd"], rel=0.15)
    assert draws[:, 100].std(0).mean().item() == pytest.approx(WARP["transsd"], rel=0.15)
    again = torch.Generator().manual_seed(0)
    assert torch.equal(draw_warp(again), draws[0])                               # seeded: the same warps


class Cache:
    """A split at 40 px: four images, three landmarks each, all visible."""

    def __init__(self, n=5):
        g = torch.Generator().manual_seed(0)
        self.images = (255 * torch.rand(n, 3, 40, 40, generator=g)).to(torch.uint8)
        self.landmarks = 10 + 20 * torch.rand(n, 3, 2, generator=g)

    def __len__(self):
        return len(self.images)

    def batch(self, idx):
        idx = list(idx)
        return {"images": self.images[idx], "landmarks": self.landmarks[idx],
                "visible": torch.ones(len(idx), 3, dtype=torch.bool)}


def dve_errors(cache, extract, side, crop, imwidth_over_frame):
    """test_matching.py's loop, written again: the dataset's item i is (view 1, view 2) of image i, warps drawn per
    item in order (g1, then g2) from torch's generator seeded 0; a batch of two items is [A_v1, A_v2, B_v1, B_v2]
    (dict_coll); source = A's view 1 (descs[0::2][0]), same = A's view 2, different = B's view 2 (descs[1::2][1]);
    each landmark's error in pixels scaled by 70 / (imwidth - 2 crop)."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(2 * (len(cache) // 2)):
        w1, w2 = draw_warp(g).numpy(), draw_warp(g).numpy()
        g1, g2 = np_grid(w1, side), np_grid(w2, side)
        image, points = cache.images[i].numpy().astype(float), cache.landmarks[i].numpy()
        once = np_sample(image, g1)
        twice = np_sample(once, g2)
        kp1 = np_nearest(points, g1)
        items.append((np.floor(twice[:, crop:-crop, crop:-crop]), np.floor(once[:, crop:-crop, crop:-crop]),
                      np_nearest(kp1, g2) - crop, kp1 - crop))
    same, diff = [], []
    for k in range(0, len(items), 2):
        (a_v1, a_v2, kp_a1, kp_a2), (_, b_v2, _, kp_b2) = items[k], items[k + 1]
        descs = [extract(torch.from_numpy(v / 255).float()[None])[0].numpy() for v in (a_v1, a_v2, b_v2)]
        stride = a_v1.shape[-1] / descs[0].shape[-1]
        for ki, (x, y) in enumerate(kp_a1):
            for errors, target, truth in ((same, descs[1], kp_a2), (diff, descs[2], kp_b2)):
                px, py = dve_find_descriptor(x, y, descs[0], target, stride)
                errors.append(imwidth_over_frame * math.hypot(truth[ki, 0] - px, truth[ki, 1] - py))
    return np.mean(same), np.mean(diff)


def test_protocol_is_dves_loop_on_the_same_images():
    """dve_matching against DVE's loop written again in numpy on five images (the fifth left out: two pairs), with an
    extractor that keeps where things are (a 4 x 4 average pool, stride 4): the same pairs, roles and errors."""
    cache, protocol = Cache(5), Protocol("tiny", 40, 28)
    extract = lambda x: torch.nn.functional.avg_pool2d(x, 4)                       # noqa: E731
    result = dve_matching(extract, cache, protocol)
    assert result["pairs"] == 2 and result["points"] == 2 * 3
    same, diff = dve_errors(cache, extract, 40, 6, 70 / 28)
    assert result["same_px70"] == pytest.approx(same, abs=1e-3) and result["diff_px70"] == pytest.approx(diff, abs=1e-3)
    assert result["same_px70"] != pytest.approx(result["diff_px70"], abs=0.1)    # the roles are not interchangeable
    assert dve_matching(extract, cache, protocol, pairs=1)["pairs"] == 1
    cl = dve_matching(extract, cache, protocol, matcher="cl", groups=(3,))       # ContrastLandmark's: 69 / 27 a px
    assert all(np.isfinite(v) for v in cl.values()) and cl["pairs"] == 2
