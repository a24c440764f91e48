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
