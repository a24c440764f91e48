"""Where would bf16 cost stage 2 accuracy? The LEAD target p and the student's q are softmaxes of cosines / tau;
under bf16 autocast the teacher's layers and hypercolumn are computed in bf16, and lead_loss took their similarities
in bf16 too until experiments/bf16.md found the cost (8 bits of mantissa: a cosine near 1 is off by up to ~0.004,
i.e. 0.2 logits at tau 0.02). This measures, on real views as stage 2 draws them (MTFL's training split, the
recipe's 64 px crops), how far each bf16 part moves the distributions from the same computation in fp32:
KL(fp32 || bf16) per row in nats beside the row's entropy, and how often the row's arg-max changes. Nothing is
trained; a few seconds on a CPU (issue 30, item 4).

    python experiments/bf16_where.py --teacher runs/scaling/resnet18_64_x1/byol/final \
        --student runs/scaling_tt02/resnet18_64_x1/distill/final --data ../shared/data/mtfl
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data import DataSpec, load_tensors  # noqa: E402
from common.features import load_model  # noqa: E402
from common.views import make_views, view_configs  # noqa: E402


def rows(x: torch.Tensor) -> torch.Tensor:
    """Maps [B, C, h, w] -> unit rows [B, N, C] in the maps' own dtype (lead_loss did, before its fix)."""
    return F.normalize(rearrange(x, "b c h w -> b (h w) c"), dim=-1)


def softmax_rows(a: torch.Tensor, b: torch.Tensor, tau: float, bf16_product: bool = False) -> torch.Tensor:
    """Row softmax of cos(a_u, b_k) / tau [B, N, N]; the product in bf16 (as lead_loss did with a bf16 teacher)."""
    a, b = (t.to(torch.bfloat16 if bf16_product else torch.float32) for t in (a, b))
    return F.softmax(torch.einsum("buc,bkc->buk", a, b).float() / tau, dim=-1)


def compare(ref: torch.Tensor, other: torch.Tensor) -> dict:
    kl = (ref * (ref.clamp_min(1e-30).log() - other.clamp_min(1e-30).log())).sum(-1)
    entropy = -(ref * ref.clamp_min(1e-30).log()).sum(-1)
    return {"kl": kl.mean().item(), "entropy": entropy.mean().item(),
            "argmax_changed": (ref.argmax(-1) != other.argmax(-1)).float().mean().item()}


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="a stage-1 final/")
    p.add_argument("--student", help="a stage-2 final/ (optional: its q too)")
    p.add_argument("--data", required=True, help="MTFL as shipped (its training split is read)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    cache = load_tensors(DataSpec(dataset="mtfl", data_dir=args.data, image_size=128), "train")
    images = cache.batch(torch.arange(args.images))["images"]
    v1, v2, _, _ = make_views(images, 0, 0, view_configs(args.size, (0.3, 1.0), 0.0))
    teacher = load_model(args.teacher).encoder.eval()
    h32 = [rows(teacher.hypercolumn(v)) for v in (v1, v2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h16 = [rows(teacher.hypercolumn(v)) for v in (v1, v2)]      # bf16, as stage 2 computes h
    print(f"{args.images} MTFL training images, two {args.size} px views each; KL in nats per row\n")
    print("| distribution | bf16 part | KL(fp32 ‖ bf16) | entropy of fp32 | arg-max changed |")
    print("| --- | --- | --- | --- | --- |")
    cases = [("teacher p", tau, part, h16 if "layers" in part else h32, "product" in part)
             for tau in (0.05, 0.02) for part in ("product", "layers", "layers + product")]
    if args.student:
        student = load_model(args.student).eval()
        f32 = [rows(student(v)) for v in (v1, v2)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f16 = [rows(student(v).float()) for v in (v1, v2)]   # lead_loss: f in fp32
        cases.append(("student q", 0.05, "layers", f16, False))         # its product is fp32 in lead_loss
    for name, tau, part, pair, bf16_product in cases:
        ref32 = h32 if name == "teacher p" else f32
        r = compare(softmax_rows(*ref32, tau), softmax_rows(*pair, tau, bf16_product))
        print(f"| {name}, tau {tau} | {part} | {r['kl']:.4f} | {r['entropy']:.3f} | "
              f"{100 * r['argmax_changed']:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
