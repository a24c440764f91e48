"""BYOL's batched views: crops stay inside, choices are per image, solarize only on the target view."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from common.views import (VIEW1, VIEW2, ViewConfig, blur, byol_views, colour, crop_theta, make_views, view_configs,
                          view_params)

pytestmark = pytest.mark.usefixtures("one_thread")
PLAIN = ViewConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter=0.0, grey=0.0, blur=0.0, solarize=0.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crops_stay_inside_the_image():
    p = view_params(4096, VIEW1, gen())
    theta = crop_theta(p)
    assert (theta[:, 0, 2].abs() + theta[:, 0, 0].abs() <= 1 + 1e-6).all()
    assert (theta[:, 1, 2].abs() + theta[:, 1, 1].abs() <= 1 + 1e-6).all()
    area = p["w"] * p["h"]
    assert area.min() >= 0.08 * 0.99 and area.max() <= 1 + 1e-6


def test_choices_differ_per_image_and_repeat_with_the_seed():
    a, b = view_params(64, VIEW2, gen(1)), view_params(64, VIEW2, gen(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["brightness"].unique().numel() == 64 and a["sigma"].unique().numel() == 64
    assert 0 < a["flip"].mean() < 1 and 0 < a["solarize"].sum() < 64


def test_jitter_order_is_a_uniform_permutation_per_image():
    # ColorJitter draws torch.randperm(4) per image: each of the 24 orders about equally often
    order = view_params(24000, VIEW1, gen(2))["order"]
    assert torch.equal(order.sort(1).values, torch.arange(4).expand(24000, 4))
    _, counts = order.unique(dim=0, return_counts=True)
    assert len(counts) == 24 and (counts - 1000).abs().max() < 150             # about 5 s.d. of a count


def test_views_are_a_function_of_step_seed_and_process():
    # what a resumed or distributed run relies on: the same (step, seed) gives the same views whatever the
    # global RNG, and two processes' halves of the batch are the one-process views
    images = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8, generator=gen(5))
    cfg = view_configs(32)
    torch.manual_seed(0)
    one = make_views(images, 7, 3, cfg)
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(one[:2], make_views(images, 7, 3, cfg)[:2]))
    halves = [make_views(images[4 * r:4 * (r + 1)], 7, 3, cfg, rank=r, world=2) for r in range(2)]
    for i in range(2):
        torch.testing.assert_close(torch.cat([h[i] for h in halves]), one[i], atol=1e-6, rtol=0)
    for k in one[2]:
        assert torch.equal(torch.cat([h[2][k] for h in halves]), one[2][k]), k
    assert (make_views(images, 8, 3, cfg)[0] - one[0]).abs().max() > 0.1          # another step, other views


def test_solarize_only_on_the_target_view():
    assert VIEW1.solarize == 0 and VIEW2.solarize == 0.2 and VIEW1.blur == 1.0 and VIEW2.blur == 0.1
    assert view_params(2000, VIEW1, gen()).get("solarize").sum() == 0
    share = view_params(2000, VIEW2, gen())["solarize"].mean()
    assert 0.17 < share < 0.23


def test_plain_view_is_the_resized_image_and_solarize_inverts_bright_pixels():
    img = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    p = view_params(3, PLAIN, gen())
    out = byol_views(img, p, 16)
    ref = F.interpolate(img.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-5)
    p["solarize"] = torch.tensor([0.0, 1.0, 0.0])
    sol = byol_views(img, p, 16)
    assert torch.allclose(sol[[0, 2]], ref[[0, 2]], atol=1e-5)
    assert torch.allclose(sol[1], torch.where(ref[1] < 0.5, ref[1], 1 - ref[1]), atol=1e-5)


def test_flip_mirrors_the_crop():
    img = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    p = view_params(1, dataclasses.replace(PLAIN, flip=1.0), gen())
    assert torch.allclose(byol_views(img, p, 16), img.float().flip(-1) / 255, atol=1e-5)


def test_grey_and_brightness_against_hand_values():
    x = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    p = view_params(1, PLAIN, gen())
    p["grey"] = torch.ones(1)
    y = 0.2989 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6                        # torchvision's rgb_to_grayscale weights
    assert torch.allclose(colour(x, p), torch.full_like(x, y), atol=1e-6)
    p = view_params(1, PLAIN, gen())
    p["jitter"], p["brightness"], p["contrast"], p["saturation"], p["hue"] = (torch.ones(1), torch.tensor([1.5]),
                                                                              torch.ones(1), torch.ones(1), torch.zeros(1))
    assert torch.allclose(colour(x, p), (x * 1.5).clamp(0, 1), atol=1e-5)


def test_blur_matches_torchvision_and_keeps_unblurred_images():
    """Against torchvision's gaussian_blur (reflect padding too, so the whole image, borders included), each image
    at its own sigma: BYOL's 23-tap kernel at 224 px, and at 112 px sigma and kernel halved (sigma in 224 px units;
    at sigma 1, 11 or 13 taps differ by < 1e-6)."""
    g = gen(3)
    x = torch.rand(3, 3, 224, 224, generator=g)
    y = blur(x, {"sigma": torch.tensor([2.0, 0.5, 2.0]), "blur": torch.tensor([1.0, 1.0, 0.0])})
    for i, sigma in enumerate((2.0, 0.5)):
        torch.testing.assert_close(y[i], TF.gaussian_blur(x[i], [23, 23], [sigma, sigma]), atol=1e-5, rtol=0)
    assert torch.equal(y[2], x[2])
    half = torch.rand(1, 3, 112, 112, generator=g)
    torch.testing.assert_close(blur(half, {"sigma": torch.tensor([2.0]), "blur": torch.ones(1)})[0],
                               TF.gaussian_blur(half[0], [13, 13], [1.0, 1.0]), atol=1e-5, rtol=0)
