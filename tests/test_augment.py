"""Thin-plate-spline warps (common/warps.py) and BYOL's colour ops (common/views.py).

Expectations are worked out independently of the code under test: exact interpolation of the control
points, W(W^-1(x)) = x, a float64 least-squares affine fit where the warp must be affine, bilinear
resampling being exact on linear ramps, and the centroid of a warped Gaussian blob; the batched colour
ops against torchvision.transforms.v2.functional applied image by image with the same parameters.
Coordinates: (x, y) pixels at pixel centres, 0-based; an S-pixel image spans [-0.5, S - 0.5].
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from common.views import VIEW1, VIEW2, adjust_hue, colour, colour_jitter, grey, view_params
from common.warps import TPS, random_tps, solve_tps

S = 64
NO_WARP = dict(jitter=0.0, rotate_deg=0.0, scale=0.0, shift=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixel_grid(s: int = S) -> torch.Tensor:
    """(x, y) of every pixel centre, row-major: [s*s, 2]."""
    ys, xs = np.mgrid[0:s, 0:s]
    return torch.tensor(np.stack([xs.ravel(), ys.ravel()], -1), dtype=torch.float32)


def blob_image(centres: torch.Tensor, sigma: float = 1.5, s: int = S) -> torch.Tensor:
    """One Gaussian blob per image at centres [N, 2] (x, y): [N, 1, s, s] float32."""
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float64), torch.arange(s, dtype=torch.float64),
                            indexing="ij")
    d2 = (xs[None] - centres[:, 0, None, None].double()) ** 2 + (ys[None] - centres[:, 1, None, None].double()) ** 2
    return torch.exp(-d2 / (2 * sigma ** 2))[:, None].float()


def centroid(images: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (x, y) centroid of [N, 1, s, s] images: [N, 2] float64."""
    im = images[:, 0].double()
    s = im.shape[-1]
    ax = torch.arange(s, dtype=torch.float64)
    m = im.sum((1, 2))
    return torch.stack([(im * ax[None, None, :]).sum((1, 2)) / m, (im * ax[None, :, None]).sum((1, 2)) / m], -1)


# ------------------------------------------------------------------------------------------ spline

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backward_interpolates_control_points(seed):
    t = random_tps(6, S, gen(seed))
    assert t.ctrl_b.shape == t.ctrl_a.shape == (6, 16, 2)
    assert not torch.allclose(t.ctrl_a, t.ctrl_b, atol=0.5)          # a real warp, not a no-op
    torch.testing.assert_close(t.backward(t.ctrl_b), t.ctrl_a, atol=1e-3, rtol=0)


def test_control_lattice_is_centred_in_the_image():
    # grid x grid lattice spanning 90 % of the image about its centre (S - 1) / 2 = 31.5
    t = random_tps(1, S, gen(0), grid=4)
    lin = (S - 1) / 2 + np.linspace(-0.45, 0.45, 4) * S                 # 2.7, 21.9, 41.1, 60.3
    xs, ys = np.meshgrid(lin, lin, indexing="xy")
    np.testing.assert_allclose(t.ctrl_b[0].numpy(), np.stack([xs.ravel(), ys.ravel()], -1), atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_forward_then_backward_is_identity(seed):
    g = gen(100 + seed)
    t = random_tps(8, S, g)
    x = torch.rand(8, 150, 2, generator=g) * (S - 1)                   # anywhere in the image
    y = t.forward(x)
    err = (t.backward(y) - x).norm(dim=-1)
    assert err.max() < 1e-2
    assert (y - x).norm(dim=-1).max() > 0.5                            # the warp moved points


def test_backward_then_forward_is_identity():
    g = gen(7)
    t = random_tps(8, S, g)
    y = 8 + torch.rand(8, 100, 2, generator=g) * (S - 17)
    assert (t.forward(t.backward(y)) - y).norm(dim=-1).max() < 1e-2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_warp_has_no_folds(seed):
    # bounded jitter: the Jacobian of W keeps a positive determinant over the whole image
    t = random_tps(4, S, gen(seed))
    p = pixel_grid()[None].expand(4, -1, -1)
    h = 0.5
    jx = (t.backward(p + torch.tensor([h, 0.0])) - t.backward(p - torch.tensor([h, 0.0]))) / (2 * h)
    jy = (t.backward(p + torch.tensor([0.0, h])) - t.backward(p - torch.tensor([0.0, h]))) / (2 * h)
    det = jx[..., 0] * jy[..., 1] - jx[..., 1] * jy[..., 0]
    assert det.min() > 0.3


# ------------------------------------------------------------------------------- special cases

def test_zero_parameters_give_the_identity():
    g = gen(3)
    t = random_tps(2, S, g, **NO_WARP)
    torch.testing.assert_close(t.ctrl_a, t.ctrl_b)
    x = torch.rand(2, 200, 2, generator=g) * (S - 1)
    torch.testing.assert_close(t.backward(x), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(t.forward(x), x, atol=1e-4, rtol=0)
    img = torch.rand(2, 3, S, S, generator=g)
    out = t.warp(img)
    assert out.shape == img.shape and out.dtype == img.dtype
    torch.testing.assert_close(out, img, atol=1e-4, rtol=0)


def test_pure_shift_moves_everything_by_the_shift():
    # jitter, rotation and scale off: ctrl_a = ctrl_b + t for one vector t, so W(y) = y + t everywhere,
    # W^-1(x) = x - t, and B(y) = A(y + t): a blob at x in A lands at x - t in B.
    g = gen(11)
    tps = random_tps(3, S, g, jitter=0.0, rotate_deg=0.0, scale=0.0, shift=0.06)
    shift = (tps.ctrl_a - tps.ctrl_b)[:, :1]                            # [3, 1, 2]
    torch.testing.assert_close(tps.ctrl_a - tps.ctrl_b, shift.expand(-1, 16, -1), atol=1e-4, rtol=0)
    assert (shift.abs() <= 0.06 * S + 1e-4).all() and shift.abs().max() > 0.2
    y = torch.rand(3, 100, 2, generator=g) * (S - 1)
    torch.testing.assert_close(tps.backward(y), y + shift, atol=1e-3, rtol=0)
    torch.testing.assert_close(tps.forward(y), y - shift, atol=1e-3, rtol=0)
    x = torch.tensor([[30.0, 33.0], [28.5, 35.2], [34.0, 29.0]])
    got = centroid(tps.warp(blob_image(x)))
    np.testing.assert_allclose(got.numpy(), (x - shift[:, 0]).double().numpy(), atol=0.05)


def test_no_jitter_is_the_least_squares_affine_map():
    # without jitter, ctrl_a is a similarity of ctrl_b, so the spline is that affine map everywhere;
    # fit it independently in float64 and compare on points away from the control lattice.
    g = gen(5)
    t = random_tps(4, S, g, jitter=0.0, rotate_deg=15.0, scale=0.1, shift=0.05)
    y = torch.rand(4, 200, 2, generator=g) * (S - 1)
    for n in range(4):
        b = np.c_[t.ctrl_b[n].double().numpy(), np.ones(16)]
        coef, *_ = np.linalg.lstsq(b, t.ctrl_a[n].double().numpy(), rcond=None)   # [3, 2]
        lin = coef[:2].T
        # a similarity: lin = s * rotation, |angle| <= 15 deg, s in [0.9, 1.1]
        sc = np.sqrt(np.linalg.det(lin))
        np.testing.assert_allclose(lin / sc @ (lin / sc).T, np.eye(2), atol=1e-5)
        assert 0.9 - 1e-5 <= sc <= 1.1 + 1e-5
        assert abs(np.degrees(np.arctan2(lin[1, 0], lin[0, 0]))) <= 15 + 1e-4
        expect = np.c_[y[n].double().numpy(), np.ones(200)] @ coef
        np.testing.assert_allclose(t.backward(y)[n].numpy(), expect, atol=2e-3)


# ------------------------------------------------------------------------------------- resampling

def test_warp_samples_a_at_backward_of_each_pixel_centre():
    # bilinear resampling is exact on a linear ramp: warping the images A_x(p) = p.x and A_y(p) = p.y
    # must give W(q) at every pixel q of B whose source W(q) lies within the pixel-centre hull [0, S-1]^2.
    t = random_tps(3, S, gen(21))
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                            indexing="ij")
    ramp = torch.stack([xs, ys])[None].expand(3, -1, -1, -1).contiguous()
    out = t.warp(ramp)                                                   # [3, 2, S, S]
    q = pixel_grid()                                                     # row-major, like the image
    src = t.backward(q[None].expand(3, -1, -1))                          # [3, S*S, 2]
    inside = ((src >= 0) & (src <= S - 1)).all(-1)
    assert inside.float().mean() > 0.7
    got = out.flatten(2).transpose(1, 2)                                 # [3, S*S, 2]
    torch.testing.assert_close(got[inside], src[inside], atol=2e-3, rtol=0)


def pulled_back_blob(t, x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """The ideal warped blob, without resampling: the analytic Gaussian of A evaluated at W(q) for every
    pixel q of B (float64): [N, 1, S, S]."""
    src = t.backward(pixel_grid()[None].expand(len(x), -1, -1)).double()
    d2 = ((src - x[:, None].double()) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * sigma ** 2)).reshape(len(x), 1, S, S)


def test_spline_commutes_with_a_similarity():
    # a true TPS is equivariant: the spline through c -> s R (c + d) + m is s R (spline through
    # c -> c + d) + m. (kornia 0.9's solver, which centres its kernel on the targets, is not.)
    g = gen(5)
    c = random_tps(3, S, g).ctrl_b
    d = 3 * torch.randn(c.shape, generator=g)
    ang = torch.tensor(0.3)
    rot = torch.tensor([[ang.cos(), -ang.sin()], [ang.sin(), ang.cos()]])
    sim = lambda p: 1.2 * p @ rot.T + torch.tensor([4.0, -2.0])          # noqa: E731
    bent, full = (TPS(c, a, *solve_tps(c, a), S) for a in (c + d, sim(c + d)))
    y = torch.rand(3, 200, 2, generator=g) * (S - 1)
    torch.testing.assert_close(full.backward(y), sim(bent.backward(y)), atol=1e-3, rtol=0)
    torch.testing.assert_close(bent.backward(c), c + d, atol=1e-3, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blob_lands_at_forward_of_its_centre(seed):
    g = gen(200 + seed)
    n = 6
    t = random_tps(n, S, g)
    x = 20 + torch.rand(n, 2, generator=g) * 24                         # central region [20, 44]
    img = blob_image(x)
    torch.testing.assert_close(centroid(img), x.double(), atol=1e-3, rtol=0)   # the blob itself
    warped = t.warp(img)
    assert warped.dtype == torch.float32 and warped.shape == (n, 1, S, S)
    got = centroid(warped)
    # resampling: the bilinear warp is close to the ideal pulled-back blob
    assert (got - centroid(pulled_back_blob(t, x))).norm(dim=-1).max() < 0.06
    # geometry: the blob sits where forward() carries its centre. The centroid of a warped Gaussian is
    # not exactly the image of its centre (the area change and curvature of W weight its two sides
    # unequally: up to 0.37 px for the ideal blob over seeds 200-207), hence 0.45 px at worst, less on average.
    expect = t.forward(x[:, None])[:, 0].double()
    assert (expect - x.double()).norm(dim=-1).max() > 0.5               # it really moved
    err = (got - expect).norm(dim=-1)
    assert err.max() < 0.45, err
    assert err.mean() < 0.15, err


# ------------------------------------------------------------------------------------ determinism

def test_same_seed_gives_identical_warps():
    torch.manual_seed(0)
    a = random_tps(4, S, gen(42))
    torch.manual_seed(999)                                               # the global RNG must not matter
    torch.rand(17)
    b = random_tps(4, S, gen(42))
    for f in ("ctrl_b", "ctrl_a", "kernel", "affine"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    img = torch.rand(4, 1, S, S, generator=gen(1))
    assert torch.equal(a.warp(img), b.warp(img))
    x = torch.rand(4, 10, 2, generator=gen(2)) * (S - 1)
    assert torch.equal(a.forward(x), b.forward(x))


def test_different_seeds_give_different_warps():
    a, b = random_tps(4, S, gen(1)), random_tps(4, S, gen(2))
    assert (a.ctrl_a - b.ctrl_a).abs().max() > 0.5
    img = torch.rand(4, 1, S, S, generator=gen(1))
    assert (a.warp(img) - b.warp(img)).abs().max() > 0.1
    # and the N warps of one call differ from each other
    assert (a.ctrl_a[0] - a.ctrl_a[1]).abs().max() > 0.5


# ------------------------------------------------------------------ BYOL colour jitter, per image

TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)   # ColorJitter's fn_idx
JITTER_TOL = 1e-4          # on [0, 1]; float32 rounding only (at most 3e-6 seen over 20 seeds)


def colour_images(n: int, g: torch.Generator, s: int = 12) -> torch.Tensor:
    """n RGB images [n, 3, s, s] in [0, 1], on the uint8 grid (so channels tie, as in real data), with a
    grey patch, a saturated corner and pure primaries: ties, zero spans and clipping all occur."""
    x = torch.randint(0, 256, (n, 3, s, s), generator=g).float() / 255
    x[:, :, :3, :3] = x[:, :1, :3, :3]                                 # grey (all channels equal)
    x[:, :, -2:, -2:] = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)    # two channels tie at the maximum
    x[:, :, 0, -3:] = torch.eye(3)                                     # red, green, blue
    return x


def torchvision_jitter(img: torch.Tensor, factors, order) -> torch.Tensor:
    """The reference: one image [3, H, W] through v2.functional's ops in the given order."""
    for op in order:
        img = TV_OPS[op](img, float(factors[op]))
    return img


def test_colour_jitter_matches_torchvision_for_every_order():
    # all 24 orders, each with its own random factors from ColorJitter's ranges at twice BYOL's strength
    g = gen(0)
    orders = torch.tensor(list(itertools.permutations(range(4))))                  # [24, 4]
    n = len(orders)
    u = lambda: 2 * torch.rand(n, generator=g) - 1                                   # noqa: E731
    factors = torch.stack([1 + 0.8 * u(), 1 + 0.8 * u(), 1 + 0.4 * u(), 0.2 * u()], 1)
    x = colour_images(n, g)
    got = colour_jitter(x, factors, orders)
    ref = torch.stack([torchvision_jitter(x[i], factors[i], orders[i].tolist()) for i in range(n)])
    assert (ref - x).abs().amax((1, 2, 3)).min() > 0.05                # every image really changed
    err = (got - ref).abs().amax((1, 2, 3))
    assert err.max() < JITTER_TOL, err
    # the order matters: the same factors in one fixed order are far from the reference for most images
    fixed = colour_jitter(x, factors, orders[:1].expand(n, 4))
    assert ((fixed - ref).abs().amax((1, 2, 3)) > 1e-2).float().mean() > 0.5


def test_hue_shift_matches_torchvision_over_the_whole_circle():
    g = gen(1)
    hue = torch.linspace(-0.5, 0.5, 11)
    x = colour_images(len(hue), g)
    got = adjust_hue(x, hue)
    ref = torch.stack([TF.adjust_hue(x[i], float(h)) for i, h in enumerate(hue)])
    assert (got - ref).abs().max() < JITTER_TOL
    assert (ref - x).abs().max() > 0.5                                  # a real shift, not the identity


def test_grey_matches_rgb_to_grayscale():
    x = colour_images(4, gen(2))
    torch.testing.assert_close(grey(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", [VIEW1, VIEW2])
def test_random_colour_is_torchvision_with_the_drawn_parameters(cfg):
    # colour() draws nothing itself: jitter (p 0.8) with the drawn factors in the drawn order, then grey (p 0.2)
    n = 40
    p = view_params(n, cfg, gen(3))
    x = colour_images(n, gen(4))
    got = colour(x, p)
    keys = ("brightness", "contrast", "saturation", "hue")
    for i in range(n):
        ref = x[i]
        if p["jitter"][i]:
            ref = torchvision_jitter(ref, [p[k][i] for k in keys], p["order"][i].tolist())
        if p["grey"][i]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        assert (got[i] - ref).abs().max() < JITTER_TOL, i
    off = p["jitter"] + p["grey"] == 0
    assert off.any() and torch.equal(got[off], x[off])                 # no jitter, no grey: untouched
