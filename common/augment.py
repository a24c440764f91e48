"""Thin-plate-spline warps with exact point correspondence (the same-identity matching protocol).

A warp is stored as its backward map W: a pixel y of the warped image B samples the source image A
at W(y). W is a true thin-plate spline, W(y) = [1, y] @ affine + sum_k kernel_k U(|y - c_k|) with
U(r) = r^2 log r^2 and centres c_k at B's control points, solved here in a few lines (kornia 0.9's
get_tps_transform centres its kernel between the two point sets, which is not a TPS and folds
under DVE-strength warps). Images are resampled with grid_sample at W of every pixel centre, and a
point x of A is carried to B by solving W(y) = x with Newton's method, so the truth is exact (to
1e-3 px), not the approximate inverse that fitting a second spline the other way would give.
Coordinates are pixel centres, as everywhere in the project (common/data/images.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


def _basis(pts: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """U(|p - c|) = r^2 log r^2 for points [N, P, 2] and centres [N, K, 2]: [N, P, K]."""
    r2 = (pts[:, :, None] - centres[:, None]).square().sum(-1)
    return r2 * torch.log(r2.clamp_min(1e-12))


def _affine_basis(pts: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones_like(pts[..., :1]), pts], -1)              # [N, P, 3]


def solve_tps(ctrl_b: torch.Tensor, ctrl_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline through ctrl_b [N, K, 2] -> ctrl_a [N, K, 2] with the least bending energy:
    kernel weights [N, K, 2] and affine part [N, 3, 2], from the usual (K + 3)-square system
    [[U, P], [P^T, 0]] [w; a] = [ctrl_a; 0], solved in float64 (U spans many orders of magnitude)."""
    b, a = ctrl_b.double(), ctrl_a.double()
    n, k, _ = b.shape
    p = _affine_basis(b)
    system = torch.cat([torch.cat([_basis(b, b), p], 2),
                        torch.cat([p.transpose(1, 2), b.new_zeros(n, 3, 3)], 2)], 1)
    sol = torch.linalg.solve(system, torch.cat([a, a.new_zeros(n, 3, 2)], 1))
    return sol[:, :k].to(ctrl_a.dtype), sol[:, k:].to(ctrl_a.dtype)


@dataclass
class TPS:
    """Backward maps W_n of N warps on size x size images: control points ctrl_b (in B) go to ctrl_a (in A)."""
    ctrl_b: torch.Tensor   # [N, K, 2]
    ctrl_a: torch.Tensor   # [N, K, 2]
    kernel: torch.Tensor   # [N, K, 2]
    affine: torch.Tensor   # [N, 3, 2]
    size: int

    def to(self, device) -> "TPS":
        return TPS(*(t.to(device) for t in (self.ctrl_b, self.ctrl_a, self.kernel, self.affine)), self.size)

    def backward(self, pts_b: torch.Tensor) -> torch.Tensor:
        """W: points of B [N, P, 2] -> where they come from in A [N, P, 2]."""
        return _basis(pts_b, self.ctrl_b) @ self.kernel + _affine_basis(pts_b) @ self.affine

    def forward(self, pts_a: torch.Tensor, steps: int = 12) -> torch.Tensor:
        """W^-1: points of A [N, P, 2] -> their place in B, by Newton's method on W(y) = x."""
        y = pts_a.clone()
        eps = 1e-2
        for _ in range(steps):
            w = self.backward(y)
            jx = (self.backward(y + y.new_tensor([eps, 0.0])) - w) / eps    # dW/dy_x  [N, P, 2]
            jy = (self.backward(y + y.new_tensor([0.0, eps])) - w) / eps
            r = w - pts_a
            det = jx[..., 0] * jy[..., 1] - jx[..., 1] * jy[..., 0]
            # solve [jx jy] d = r for d (2x2 per point)
            dx = (r[..., 0] * jy[..., 1] - r[..., 1] * jy[..., 0]) / det
            dy = (jx[..., 0] * r[..., 1] - jx[..., 1] * r[..., 0]) / det
            y = y - torch.stack([dx, dy], -1).nan_to_num(0.0).clamp(-self.size / 8, self.size / 8)  # damped
        return y

    def warp(self, images: torch.Tensor, padding_mode: str = "reflection") -> torch.Tensor:
        """Resample A [N, C, S, S] (float) into B."""
        s = self.size
        pix = torch.arange(s, dtype=torch.float32, device=images.device)
        grid = torch.stack(torch.meshgrid(pix, pix, indexing="xy"), -1).reshape(1, s * s, 2)
        src = self.backward(grid.expand(len(images), -1, -1))
        norm = rearrange((2 * src + 1) / s - 1, "n (h w) c -> n h w c", h=s)
        return F.grid_sample(images, norm, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def random_tps(n: int, size: int, generator: torch.Generator | None = None, grid: int = 4,
               jitter: float = 0.04, rotate_deg: float = 12.0, scale: float = 0.15,
               shift: float = 0.1) -> TPS:
    """Random warps in the style of DVE's Warper: a global similarity (rotation, scale, shift) plus
    independent jitter of a grid x grid lattice of control points (fractions of the image size).
    The defaults move points by about 40 % of the inter-ocular distance of a synthetic face, as
    DVE's warps (shift and scale of s.d. 0.1) do: milder warps (about 20 %) sit near the stride-4
    resolution limit, where an untrained network already matches as well as a trained one."""
    g = generator
    lin = torch.linspace(-0.5, 0.5, grid) * size * 0.9
    ctrl_b = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1).reshape(1, -1, 2).repeat(n, 1, 1)
    ang = torch.deg2rad(rotate_deg * (2 * torch.rand(n, generator=g) - 1))
    sc = 1 + scale * (2 * torch.rand(n, generator=g) - 1)
    rot = torch.stack([torch.cos(ang), -torch.sin(ang), torch.sin(ang), torch.cos(ang)], -1).reshape(n, 2, 2)
    move = shift * size * (2 * torch.rand(n, 1, 2, generator=g) - 1)
    bend = jitter * size * (2 * torch.rand(n, ctrl_b.shape[1], 2, generator=g) - 1)  # bounded: no folds
    # bend first, then the similarity: W = similarity o spline, so shrinking never folds the spline
    ctrl_a = ((ctrl_b + bend) @ rot.transpose(1, 2)) * sc[:, None, None] + move
    centre = (size - 1) / 2
    ctrl_b, ctrl_a = ctrl_b + centre, ctrl_a + centre
    kernel, affine = solve_tps(ctrl_b, ctrl_a)
    return TPS(ctrl_b, ctrl_a, kernel, affine, size)


def warped_pairs(images: torch.Tensor, points: torch.Tensor, generator: torch.Generator | None = None,
                 **warp_args) -> tuple[torch.Tensor, torch.Tensor, TPS]:
    """The same-identity matching protocol: each image [N, C, S, S] (float) against a random TPS warp
    of itself. Returns the warped images, where `points` [N, P, 2] of the originals land in them
    (exact), and the warps."""
    tps = random_tps(len(images), images.shape[-1], generator, **warp_args).to(images.device)
    return tps.warp(images), tps.forward(points), tps


# ------------------------------------------------------------------ BYOL views, batched on the device
@dataclass
class ViewConfig:
    """One view's augmentation (BYOL, Grill et al. 2020, Table 6): view 1 blurs always and never
    solarizes, view 2 blurs with p 0.1 and solarizes with p 0.2."""
    size: int = 96
    scale: tuple[float, float] = (0.08, 1.0)      # area of the random resized crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.8                           # probability of colour jitter
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grey: float = 0.2
    blur: float = 1.0
    solarize: float = 0.0


VIEW1 = ViewConfig()
VIEW2 = ViewConfig(blur=0.1, solarize=0.2)
LUMA = (0.2989, 0.587, 0.114)                     # torchvision's rgb_to_grayscale weights
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op ids, as ColorJitter's fn_idx numbers them


def crop_sides(n: int, cfg: ViewConfig, u, attempts: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height (fractions of a square image's side) of n random resized crops, drawn as torchvision's
    RandomResizedCrop (and BYOL's TF code) draw them: area uniform in cfg.scale, log aspect ratio uniform in
    cfg.ratio, redrawn up to `attempts` times until the crop fits in the image, else the whole image.
    Clamping instead of redrawing would keep too many large crops (median area 0.54 instead of 0.47)."""
    area = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u(n, attempts)
    logr = torch.log(torch.tensor(cfg.ratio))
    ratio = torch.exp(logr[0] + (logr[1] - logr[0]) * u(n, attempts))
    w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.int().argmax(1, keepdim=True)                          # the first attempt that fits
    pick = lambda x: torch.where(fits.any(1), x.gather(1, first)[:, 0], torch.ones(n))  # noqa: E731
    return pick(w), pick(h)


def view_params(n: int, cfg: ViewConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random choice of n views, drawn on the CPU in one go (cheap), so a distributed run can
    draw the global batch's and keep its own slice: one or several processes then see the same views.
    The jitter factors are ColorJitter's (uniform in [1 - b, 1 + b], hue in [-h, h]), and so is
    "order" [n, 4]: the op ids in the order each image applies them (a random permutation per image)."""
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    w, h = crop_sides(n, cfg, u)
    return {"w": w, "h": h, "cx": (1 - w) * (2 * u(n) - 1), "cy": (1 - h) * (2 * u(n) - 1),  # centres in [-1, 1]
            "flip": (u(n) < cfg.flip).float(), "jitter": (u(n) < cfg.jitter).float(),
            "brightness": 1 + cfg.brightness * (2 * u(n) - 1), "contrast": 1 + cfg.contrast * (2 * u(n) - 1),
            "saturation": 1 + cfg.saturation * (2 * u(n) - 1), "hue": cfg.hue * (2 * u(n) - 1),
            "grey": (u(n) < cfg.grey).float(), "blur": (u(n) < cfg.blur).float(),
            "sigma": 0.1 + 1.9 * u(n), "solarize": (u(n) < cfg.solarize).float(),
            "order": u(n, 4).argsort(1)}                            # a uniform permutation of the 4 ops per image


def crop_theta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """affine_grid matrices [N, 2, 3]: output [-1, 1]^2 -> the crop in the input, x mirrored on flips."""
    sx = p["w"] * (1 - 2 * p["flip"])
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, p["cx"]], -1), torch.stack([zero, p["h"], p["cy"]], -1)], 1)


def _bcast(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image values (or masks) [N] -> [N, 1, 1, 1] on ref's device, in its dtype."""
    return x.to(ref.device, ref.dtype).view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images [N, 3, H, W] -> [N, 1, H, W], as torchvision's rgb_to_grayscale."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)[:, None]


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue with a factor per image: x [N, 3, H, W] in [0, 1], hue [N] in turns. HSV's hue
    is shifted (a rotation about the grey axis, as YIQ, would change HSV's saturation and value too). Value
    v = max and span = max - min (= v s) are kept, so with h the new hue in sixths of a turn in [0, 6),
    rgb = v - span clamp(||h - a| - 3| - 1, 0, 1), a = 3, 5, 1 for R, G, B: the six linear pieces of
    torchvision's _hsv_to_rgb as arithmetic, not a table lookup. Multiplied masks, not torch.where (1.7x
    faster on a CPU), and in-place steps on one full-size buffer (there, allocating costs as much as adding)."""
    r, g, b = x.unbind(1)
    v, lo = x.amax(1), x.amin(1)                                       # [N, H, W] each
    span = v - lo
    red = v == r                                                       # the max channel, ties to red, then green
    green = (v == g) & ~red
    h = (g - b).mul_(red)
    h += (b - r).add_(span, alpha=2).mul_(green)
    h += (r - g).add_(span, alpha=4).mul_(~(red | green))
    # grey pixels (span 0) keep v whatever h; clamping a tiny span bounds h, and its error is at most span
    h = h.div_(span.clamp_min(1e-12)).add_(6 * hue.to(x.device, x.dtype).view(-1, 1, 1))
    h = h.sub_(h.div(6).floor_().mul_(6))                              # mod 6
    a = torch.tensor([3.0, 5.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    c = (h[:, None] - a).abs_().sub_(3).abs_().sub_(1).clamp_(0, 1)   # [N, 3, H, W]
    return c.mul_(-span[:, None]).add_(v[:, None])


def _blend_step(y: torch.Tensor, factors: torch.Tensor, op: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast or saturation (op [N]) where `on` [N], else nothing, in place on y: each is
    torchvision's clamp(f y + (1 - f) ref, 0, 1) with ref 0, the image's mean luma, or each pixel's luma."""
    f = torch.where(on & (op != HUE), factors.gather(1, op.clamp(max=SATURATION)[:, None])[:, 0], 1.0)
    lum = grey(y)                                                        # [N, 1, H, W]
    ref = lum * _bcast(op == SATURATION, y) + lum.mean((1, 2, 3), keepdim=True) * _bcast(op == CONTRAST, y)
    return y.lerp_(ref, _bcast(1 - f, y)).clamp_(0, 1)                  # f = 1: y, exactly


def colour_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with explicit per-image parameters: x [N, 3, H, W] in [0, 1], factors
    [N, 4] (brightness, contrast, saturation: 1 is none; hue in turns: 0 is none), order [N, 4] (the op
    ids in the order each image applies them). Batched without a host sync and with one hue step (the
    costly op) for the batch: the blends before each image's hue step, the hue step, the blends after it."""
    y, factors, order = x.clamp(0, 1), factors.to(x.device, x.dtype), order.to(x.device)   # y: our own copy
    at = (order == HUE).int().argmax(1)                                 # [N] each image's hue position
    for i in range(3):                                                  # position 3 is never before it
        _blend_step(y, factors, order[:, i], i < at)
    hue = factors[:, HUE]
    y.lerp_(adjust_hue(y, hue), _bcast(hue != 0, y))                    # weight 0 or 1: an exact choice
    for i in range(1, 4):                                               # position 0 is never after it
        _blend_step(y, factors, order[:, i], i > at)
    return y


def colour(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """BYOL's colour: ColorJitter where p['jitter'], then grey where p['grey'], on [N, 3, H, W] in [0, 1]."""
    on = p["jitter"] > 0
    none = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}      # the identity's factors
    factors = torch.stack([torch.where(on, p[k], v) for k, v in none.items()], 1)  # [N, 4]
    y = colour_jitter(x, factors, p["order"])
    return y.lerp_(grey(y).expand_as(y), _bcast(p["grey"], y))          # weight 0 or 1: an exact choice


def blur(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gaussian blur with each image's sigma (in units of a 224 px image, scaled to this size, as
    BYOL's kernel of 23 px at 224), where p['blur'] is set; one grouped separable convolution."""
    n, c, h, w = x.shape
    sigma = (p["sigma"] * h / 224).clamp(min=1e-3).to(x.device, x.dtype)
    k = 2 * max(1, round(11 * h / 224)) + 1                    # BYOL's 23 px at 224 px
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    g = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    g = g / g.sum(1, keepdim=True)
    off = (p["blur"] == 0).to(x.device)
    g[off] = 0
    g[off, k // 2] = 1                                                                 # identity kernel
    g = g.repeat_interleave(c, 0)                                                      # [N*C, k]
    y = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (k // 2, k // 2, 0, 0), mode="reflect"), g[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), g[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def byol_views(images: torch.Tensor, p: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """uint8 images [N, 3, S, S] (on any device) -> augmented float views [N, 3, size, size] in [0, 1]."""
    x = images.float() / 255
    grid = F.affine_grid(crop_theta(p).to(x.device, x.dtype), [len(x), 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = blur(colour(x, p), p)
    return torch.where(_bcast(p["solarize"], x) > 0, torch.where(x < 0.5, x, 1 - x), x)


def cell_centres(grid: int, device=None) -> torch.Tensor:
    """Centres of a grid x grid lattice of cells in normalised coordinates (align_corners=False):
    [grid * grid, 2] as (x, y), row-major like a flattened feature map."""
    c = (2 * torch.arange(grid, dtype=torch.float32, device=device) + 1) / grid - 1
    return torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)


def view_correspondence(p_from: dict, p_to: dict, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each cell centre of view `from` (a grid x grid map) lies in view `to` of the same image,
    in `to`'s normalised coordinates (for grid_sample), through the source image: view -> source is
    crop_theta's affine map (flips included), so source -> view is its inverse. Returns positions
    [N, grid * grid, 2] and whether each lies inside view `to` [N, grid * grid]."""
    ta, tb = crop_theta(p_from), crop_theta(p_to)                         # [N, 2, 3], diagonal linear part
    u = cell_centres(grid)[None]                                          # [1, G, 2]
    src = u * torch.stack([ta[:, 0, 0], ta[:, 1, 1]], -1)[:, None] + ta[:, None, :, 2]
    pos = (src - tb[:, None, :, 2]) / torch.stack([tb[:, 0, 0], tb[:, 1, 1]], -1)[:, None]
    return pos, (pos.abs() <= 1).all(-1)


def view_configs(size: int, scale=(0.08, 1.0), flip: float = 0.5) -> tuple[ViewConfig, ViewConfig]:
    """BYOL's two view pipelines at `size` px, with the crop-area range and flip probability given."""
    return tuple(dataclasses.replace(v, size=size, scale=tuple(scale), flip=flip) for v in (VIEW1, VIEW2))


def make_views(images: torch.Tensor, step: int, seed: int, configs: tuple[ViewConfig, ViewConfig], rank: int = 0,
               world: int = 1, memory_format=torch.channels_last):
    """Both views of this process's share [n, 3, S, S] (uint8) of the global batch, drawn from
    (seed, step), and their parameters (crops and flips: what a correspondence needs). The choices
    are drawn for the global batch, so one or several processes see the same views."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    n = len(images) * world
    lo, hi = rank * len(images), (rank + 1) * len(images)
    p1, p2 = ({k: v[lo:hi] for k, v in view_params(n, cfg, g).items()} for cfg in configs)
    v1, v2 = (byol_views(images, p, cfg.size).contiguous(memory_format=memory_format)
              for p, cfg in zip((p1, p2), configs))
    return v1, v2, p1, p2
