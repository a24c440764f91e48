"""The pixel-level objective: the correspondence between two views, the dense grid, the loss."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import byol_pretrain
from common.views import ViewConfig, byol_views, cell_centres, crop_theta, view_correspondence, view_params
from common.errors import UserError
from common.losses import dve_loss, dve_views, pixel_loss
from common.models import ResNetEncoder, dense_grid

pytestmark = pytest.mark.usefixtures("one_thread")
# crops and flips only: the colour of a view is the colour of the image
GEOMETRY = ViewConfig(size=32, scale=(0.2, 1.0), flip=0.5, jitter=0.0, grey=0.0, blur=0.0, solarize=0.0)


def ramp(n: int, s: int) -> torch.Tensor:
    """Float images whose channels are x, y (normalised) and 1: bilinear resampling is exact on
    them, so the value at a position says where in the source it is."""
    c = (2 * torch.arange(s, dtype=torch.float32) + 1) / s - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)])[None].repeat(n, 1, 1, 1)


def test_resampling_view_2_at_the_correspondence_reproduces_view_1():
    g = torch.Generator().manual_seed(0)
    n, grid = 64, 8
    p1, p2 = view_params(n, GEOMETRY, g), view_params(n, GEOMETRY, g)
    assert 0 < p1["flip"].sum() < n
    src = ramp(n, 128)
    theta = [crop_theta(p) for p in (p1, p2)]
    v1, v2 = (F.grid_sample(src, F.affine_grid(t, [n, 3, 32, 32], align_corners=False), align_corners=False)
              for t in theta)
    pos, inside = view_correspondence(p1, p2, grid)
    assert pos.shape == (n, grid * grid, 2) and inside.shape == (n, grid * grid)
    assert 0.2 < inside.float().mean() < 1
    cells = cell_centres(grid)[None].expand(n, -1, -1)
    at1 = F.grid_sample(v1, cells[:, :, None], align_corners=False)[..., 0]          # [n, 3, g*g]
    at2 = F.grid_sample(v2, pos[:, :, None], align_corners=False)[..., 0]
    err = (at1 - at2).abs().amax(1)                                                   # [n, g*g]
    hull = inside & (pos.abs() <= 1 - 1 / 32).all(-1)          # within view 2's pixel centres (no padding)
    assert hull.float().mean() > 0.2 and err[hull].max() < 1e-4
    # "inside" is the crop box of view 2 in the source, computed another way
    x, y = at1[:, 0], at1[:, 1]
    box = ((x - p2["cx"][:, None]).abs() <= p2["w"][:, None] + 1e-4) & \
          ((y - p2["cy"][:, None]).abs() <= p2["h"][:, None] + 1e-4)
    far = ((x - p2["cx"][:, None]).abs() - p2["w"][:, None]).abs().minimum(
        ((y - p2["cy"][:, None]).abs() - p2["h"][:, None]).abs()) > 1e-2                # not on the border
    assert torch.equal(inside[far], box[far])


def test_views_of_the_script_carry_the_same_correspondence():
    # byol_views (uint8 in) and view_correspondence agree: a bright dot of the source is found at the
    # same place through both views
    g = torch.Generator().manual_seed(3)
    cfg = dataclasses.replace(GEOMETRY, scale=(0.6, 1.0))
    p1, p2 = view_params(1, cfg, g), view_params(1, cfg, g)
    img = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    img[..., 30:34, 28:32] = 255
    v1, v2 = byol_views(img, p1, 32), byol_views(img, p2, 32)
    grid = 32
    pos, inside = view_correspondence(p1, p2, grid)
    k = v1[0, 0].flatten().argmax()
    assert inside[0, k]
    expect = (pos[0, k] + 1) / 2 * 32 - 0.5                                           # pixel coordinates in view 2
    w = v2[0, 0]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centroid = torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    assert (centroid - expect).norm() < 1.5


def test_pixel_loss_against_a_shifted_reference():
    g = torch.Generator().manual_seed(1)
    b, c, s = 3, 5, 4
    pred, target = torch.randn(b, c, s, s, generator=g), torch.randn(b, c, s, s, generator=g)
    # each cell of view 1 lies one cell to the right in view 2; the last column falls outside
    pos = cell_centres(s)[None].repeat(b, 1, 1)
    pos[..., 0] += 2 / s
    valid = (pos.abs() <= 1).all(-1)
    ref = []
    for i in range(b):
        for r in range(s):
            for col in range(s - 1):
                cos = F.cosine_similarity(pred[i, :, r, col], target[i, :, r, col + 1], dim=0)
                ref.append(2 - 2 * cos)
    torch.testing.assert_close(pixel_loss(pred, target, pos, valid), torch.stack(ref).mean())
    here, every = cell_centres(s)[None].repeat(b, 1, 1), torch.ones(b, s * s, dtype=torch.bool)
    same, opposite = pixel_loss(target, target, here, every), pixel_loss(-target, target, here, every)
    assert same.abs() < 1e-5 and (opposite - 4).abs() < 1e-5


def test_dense_grid_resizes_and_normalises_every_layer():
    net = ResNetEncoder("resnet18").eval()
    with torch.no_grad():
        maps = net.layers(torch.rand(2, 3, 64, 64))                                   # 16, 8, 4, 2 px
        d = dense_grid(maps, 8)
    assert d.shape == (2, 960, 8, 8)
    for lo, hi in [(0, 64), (64, 192), (192, 448), (448, 960)]:
        torch.testing.assert_close(d[:, lo:hi].norm(dim=1), torch.ones(2, 8, 8))
    torch.testing.assert_close(d[:, 64:192], F.normalize(maps[1], dim=1))             # layer 2 is already 8 x 8


def test_target_has_no_predictors_and_the_ema_pairs_match():
    enc = ResNetEncoder("resnet18")
    model = byol_pretrain.BYOL(enc, 32, 16, "byol+pixel", 4)
    target = model.make_target()
    assert not hasattr(target, "predictor") and not hasattr(target, "dense_predictor")
    t, o = byol_pretrain.ema_pairs(model, target)
    assert len(t) == len(o) and all(a.shape == b.shape for a, b in zip(t, o))
    assert all(not p.requires_grad for p in t)


def test_stage_1_dve_term_adds_dve_views_of_the_dense_projections():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = byol_pretrain.BYOL(ResNetEncoder("resnet18"), 32, 16, "pixel", 4).eval()
    target = model.make_target().eval()
    images = torch.rand(4, 3, 48, 48, generator=g)
    p1, p2 = view_params(4, GEOMETRY, g), view_params(4, GEOMETRY, g)
    v1, v2 = byol_views(images, p1, 32), byol_views(images, p2, 32)
    corr = (view_correspondence(p1, p2, 4), view_correspondence(p2, p1, 4))
    plain = model(v1, v2, target, corr, (p1, p2))
    model.dve_weight = 2.5
    with_dve = model(v1, v2, target, corr, (p1, p2))
    d = torch.cat([model.embed(v)[1] for v in (v1, v2)])                              # [8, 16, 4, 4]
    expected = plain + 2.5 * dve_views(d, p1, p2, tau=0.05, power=0.5)
    torch.testing.assert_close(with_dve, expected)
    assert with_dve > plain


def test_stage_1_dve_term_needs_a_pixel_objective(tmp_path):
    args = byol_pretrain.get_args_parser().parse_args(["--dve_weight", "1", "--output_dir", str(tmp_path / "r")])
    with pytest.raises(UserError, match="--dve_weight adds a term on the dense projections: it needs"):
        byol_pretrain.main(args)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("objective", ["pixel", "byol+pixel"])
def test_pixel_objectives_train(cache_dir, tmp_path, objective):
    from test_byol_pretrain import run
    run(tmp_path / "run", "--max_steps", "3", "--probe_pairs", "0", "--objective", objective,
        "--dense_grid", "4", "--crop_scale", "0.3", "1")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) and 0 <= x["loss"] <= 16 for x in lines if "loss" in x)
    assert ResNetEncoder.from_pretrained(tmp_path / "run" / "final").arch == "resnet18"
    assert json.loads((tmp_path / "run" / "args.json").read_text())["objective"] == objective


def dve_reference(f1, f2, fa, target, valid, cells, tau, power):
    """dve_loss by explicit loops over images and positions, in float64."""
    total, count = 0.0, 0
    unit = [[[[v / math.sqrt(sum(c * c for c in x)) for v in x] for x in img] for img in f.tolist()]
            for f in (f1, f2, fa)]
    for b in range(len(f1)):
        a1, a2, aa = (u[b] for u in unit)
        for u in range(len(a1)):
            if not valid[b, u]:
                continue
            w = [math.exp(sum(p * q for p, q in zip(a1[u], k)) / tau) for k in aa]
            mixed = [sum(wk * k[c] for wk, k in zip(w, aa)) / sum(w) for c in range(len(a1[u]))]
            e = [math.exp(sum(p * q for p, q in zip(mixed, v)) / tau) for v in a2]
            d = [math.dist(target[b, u].tolist(), cells[v].tolist()) ** power for v in range(len(a2))]
            total += sum(ev * dv for ev, dv in zip(e, d)) / sum(e)
            count += 1
    return total / count


def test_dve_loss_matches_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    f1, f2, fa = (torch.randn(2, 9, 5, generator=g) for _ in range(3))
    cells = cell_centres(3) * 1.5
    target = torch.rand(2, 9, 2, generator=g) * 3 - 1.5
    valid = torch.rand(2, 9, generator=g) > 0.3
    got = dve_loss(f1, f2, fa, target, valid, cells, tau=0.3, power=0.5)
    assert got.item() == pytest.approx(dve_reference(f1, f2, fa, target, valid, cells, 0.3, 0.5), rel=1e-5)
    f1.requires_grad_(True), fa.requires_grad_(True)
    dve_loss(f1, f2, fa, target, valid, cells, 0.3, 0.5).backward()
    assert f1.grad.abs().sum() > 0 and fa.grad.abs().sum() > 0          # both the query and the exchange learn


def place_code(src: torch.Tensor, anchors: int = 12, width: float = 0.15) -> torch.Tensor:
    """Features that say where in the source image a position is, the same for every image (a part code):
    Gaussian bumps of the source position [..., 2] around a lattice of anchors -> [..., anchors**2]."""
    d = (src[..., None, :] - cell_centres(anchors)).square().sum(-1)
    return torch.exp(-d / (2 * width ** 2))


def test_dve_rewards_features_shared_across_images_and_wires_the_views_right():
    g = torch.Generator().manual_seed(1)
    n, grid = 16, 8
    cfg = dataclasses.replace(GEOMETRY, scale=(0.5, 1.0))
    p1, p2 = view_params(n, cfg, g), view_params(n, cfg, g)
    cells = cell_centres(grid)[None]

    def source(p):                            # where each cell of a view lies in its image
        t = crop_theta(p)
        return cells * torch.stack([t[:, 0, 0], t[:, 1, 1]], -1)[:, None] + t[:, None, :, 2]

    shared = torch.cat([place_code(source(p)) for p in (p1, p2)])                     # [2n, N, C]
    maps = rearrange(shared, "b (h w) c -> b c h w", h=grid)
    good = dve_views(maps, p1, p2, tau=0.02, power=0.5)
    swapped = dve_views(maps, p2, p1, tau=0.02, power=0.5)        # the truth of the other direction
    assert good < 0.8 and swapped > 1.3 * good     # 0.8: about the distance from a point to its nearest cell
    # image-specific features (a random code per image and position) match one view to the other only
    # through the same image; DVE's exchange through another image leaves them lost
    own = torch.randn(n, 64, 2 * grid, 2 * grid, generator=g)
    specific = torch.cat([F.grid_sample(own, F.affine_grid(crop_theta(p), [n, 64, grid, grid], align_corners=False),
                                        align_corners=False) for p in (p1, p2)])
    assert dve_views(specific, p1, p2, tau=0.02, power=0.5) > 1.8 * good
