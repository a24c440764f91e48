"""BYOL's two augmented views of each image (Grill et al. 2020, Table 6), drawn for a whole batch at once on its
device: random resized crops by affine grids, flips, torchvision's colour jitter per image, grey, blur and
solarize; and where each view's positions land in the other (the dense objectives' correspondence).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
