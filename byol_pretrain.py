"""Stage 1: BYOL pretraining of the instance-level encoder (LEAD Sec. 3.2, supplement D).

    accelerate launch byol_pretrain.py --output_dir runs/byol                  # the paper's settings
    accelerate launch byol_pretrain.py --arch resnet18 --crop_size 64 --batch_size 64 --max_steps 300 \\
        --optimizer adam --lr 4e-3 --output_dir runs/demo/byol                  # minutes on a 2-core CPU

Writes OUTPUT/final/ (the online encoder, Φ_G: config.json, model.safetensors, README.md),
OUTPUT/checkpoints/ (our safetensors + JSON training state for --resume, the EMA target included), args.json and
metrics.jsonl. The next stage takes `--init_from OUTPUT/final`.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import gather
from einops import rearrange

from common.views import make_views, view_configs, view_correspondence
from common.cli import (HelpWithDefaults, at_least, data_args, flag_defaults, from_flags, run_args, run_cli,
                        schedule_args, view_args)
from common.data import DataSpec
from common.errors import UserError
from common.hub import HubTarget, data_line
from common.hub import model_card as hub_card
from common.losses import byol_loss, dve_views, info_nce, mean_divisor, pixel_loss
from common.models import ARCHS, ConvHead, MLPHead, ResNetEncoder, dense_grid
from common.optim import LARS, ema_momentum, ema_update, lars_groups
from common.probe import probe_table
from common.training import Run, RunSpec

OBJECTIVES = ("byol", "pixel", "byol+pixel", "moco")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("BYOL pretraining (stage 1)", parents=[data_args(), run_args("runs/byol")],
                                     formatter_class=HelpWithDefaults)
    g = parser.add_argument_group("Model")
    g.add_argument("--arch", default="resnet50", choices=ARCHS,
                   help="backbone (default resnet50); resnet18 for CPU-sized runs")
    g.add_argument("--no_normalize_layers", action="store_true", help="hypercolumn without per-layer L2 norm")
    g.add_argument("--last_stride", type=int, default=2, choices=[1, 2],
                   help="stride of layer 4's first block (default 2); 1 doubles layer 4's resolution (small inputs) "
                        "at 4x its cost")
    g.add_argument("--proj_hidden", type=at_least(1), default=4096, help="projector/predictor hidden width (4096)")
    g.add_argument("--proj_dim", type=at_least(1), default=256, help="projection width (256)")
    g = parser.add_argument_group("Objective")
    g.add_argument("--objective", default="byol", choices=OBJECTIVES,
                   help="byol (default): image-level BYOL (the paper); pixel: BYOL between the dense maps of the two "
                        "views at corresponding positions (PixPro-style); byol+pixel: both; moco: MoCo-v2's InfoNCE "
                        "against a queue of the key encoder's projections (ContrastLandmark's stage 1, Table 6)")
    g.add_argument("--dense_weight", type=float, default=1.0, help="weight of the pixel term in byol+pixel (1)")
    g.add_argument("--dve_weight", type=float, default=0.0,
                   help="with a pixel objective: add DVE's equivariance through another face (dense_distill.py's "
                        "--objective dve) on the dense projections, with this weight (0: off)")
    g.add_argument("--dense_grid", type=at_least(2), default=8,
                   help="side of the grid the pixel objective resizes layers 1-4 to (8)")
    g.add_argument("--queue_size", type=at_least(1), default=4096,
                   help="moco: negatives kept (4096 as ContrastLandmark on CelebA; MoCo on ImageNet: 65536)")
    g.add_argument("--moco_t", type=float, default=0.2,
                   help="moco: InfoNCE temperature (default 0.2 as MoCo v2; v1: 0.07)")
    g = parser.add_argument_group("Optimisation")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "lars", "adam"],
                   help="sgd (default, the paper's); lars (BYOL's large-batch recipe: --lr 0.2 --weight_decay "
                        "1.5e-6); adam learns faster in short CPU runs")
    schedule_args(g, 3e-2, "SGD, LARS or Adam", epochs=200)
    g.add_argument("--weight_decay", type=float, default=1e-4,
                   help="default 1e-4, the usual value of SGD recipes (OpenSelfSup); BYOL's LARS recipe uses 1.5e-6")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD and LARS momentum (default 0.9)")
    g.add_argument("--ema", type=float, default=None,
                   help="target momentum: byol, pixel: 0.99 at the start, rising to 1 along a cosine; moco: the key "
                        "encoder's, constant (0.999)")
    g.add_argument("--no_channels_last", action="store_true",
                   help="keep NCHW tensors (channels-last is faster for convolutions on CPUs and GPUs)")
    g.add_argument("--eval_every", type=float, default=None,
                   help="also run the probe every this many epochs (default: only at the end, where it always runs)")
    view_args(parser)
    return parser


class KeyQueue(nn.Module):
    """MoCo's dictionary: the last `size` keys of all processes, first in, first out. Buffers, so that a
    checkpoint resumes it; the write position stays on the device (no host sync)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue keys [B, dim] (every process's, gathered in process order), dropping the oldest."""
        keys = gather(keys.detach().float().contiguous())[-len(self.keys):]
        index = (self.ptr + torch.arange(len(keys), device=keys.device)) % len(self.keys)
        self.keys[index] = F.normalize(keys, dim=1).to(self.keys.dtype)
        self.ptr.copy_((self.ptr + len(keys)) % len(self.keys))


class BYOL(nn.Module):
    """Online network and the symmetrised loss against its EMA target (a copy without predictors).
    Each objective has a projector and a predictor: image-level on the pooled layer 4 (BYOL),
    pixel-level on layers 1-4 resized to a grid (1x1 convs, PixPro-style). moco: the projector only
    (MoCo v2's MLP), the target is the key encoder and a queue of its keys gives the negatives. One
    process's BatchNorm sees the whole local batch in both encoders (no shuffle-BN, as most one-GPU MoCo code)."""

    def __init__(self, encoder: ResNetEncoder, hidden: int, dim: int, objective: str = "byol",
                 grid: int = 8, dense_weight: float = 1.0, dve_weight: float = 0.0, queue_size: int = 4096,
                 moco_t: float = 0.2):
        super().__init__()
        self.encoder, self.grid, self.dense_weight, self.dve_weight = encoder, grid, dense_weight, dve_weight
        parts = objective.split("+")
        self.image, self.pixel, self.moco, self.moco_t = "byol" in parts, "pixel" in parts, "moco" in parts, moco_t
        if self.image or self.moco:
            self.projector = MLPHead(encoder.width, hidden, dim)
        if self.image:
            self.predictor = MLPHead(dim, hidden, dim)
        if self.moco:
            self.queue = KeyQueue(queue_size, dim)
        if self.pixel:
            self.dense_projector = ConvHead(encoder.hypercolumn_dim, hidden, dim)
            self.dense_predictor = ConvHead(dim, hidden, dim)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Projections: image-level [B, dim] and dense [B, dim, grid, grid] (None where unused)."""
        maps = self.encoder.layers(x)
        z = None
        if self.image or self.moco:
            z = self.projector(rearrange(F.adaptive_avg_pool2d(maps[-1], 1), "b c 1 1 -> b c"))
        d = self.dense_projector(dense_grid(maps, self.grid)) if self.pixel else None
        return z, d

    def make_target(self) -> "BYOL":
        target = copy.deepcopy(self)
        for name in ("predictor", "dense_predictor", "queue"):
            if hasattr(target, name):
                delattr(target, name)
        return target.requires_grad_(False)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, target: "BYOL", corr=None, crops=None) -> torch.Tensor:
        """corr: (positions, valid) of view 1's cells in view 2 and of view 2's in view 1 (pixel only);
        crops: the two views' crop parameters (for the DVE term)."""
        (z1, d1), (z2, d2) = self.embed(v1), self.embed(v2)
        with torch.no_grad():
            (t1, e1), (t2, e2) = target.embed(v1), target.embed(v2)
        loss = v1.new_zeros(())
        if self.image:
            loss = loss + byol_loss(self.predictor(z1), t2) + byol_loss(self.predictor(z2), t1)
        if self.moco:                             # both directions against the queue, then both views' keys join it
            loss = loss + info_nce(z1, t2, self.queue.keys, self.moco_t) + info_nce(z2, t1, self.queue.keys,
                                                                                    self.moco_t)
            self.queue.push(torch.cat([t1, t2]))
        if self.pixel:
            (pos12, in12), (pos21, in21) = corr
            loss = loss + self.dense_weight * (
                pixel_loss(self.dense_predictor(d1), e2, pos12, in12, mean_divisor(in12.to(e2.device)))
                + pixel_loss(self.dense_predictor(d2), e1, pos21, in21, mean_divisor(in21.to(e1.device))))
        if self.dve_weight:
            loss = loss + self.dve_weight * dve_views(torch.cat([d1, d2]), *crops, tau=0.05, power=0.5)
        return loss


def ema_pairs(model: BYOL, target: BYOL) -> tuple[list, list]:
    """(target, online) parameters the EMA ties together: everything but the predictors."""
    online = [p for n, p in model.named_parameters() if "predictor" not in n]
    return list(target.parameters()), online


def target_momentum(args, step: int, total: int) -> float:
    """BYOL's rising schedule (from --ema, 0.99 by default); MoCo's key encoder keeps --ema (0.999) throughout."""
    if args.objective == "moco":
        return 0.999 if args.ema is None else args.ema
    return ema_momentum(step, total, 0.99 if args.ema is None else args.ema)


def new_encoder(args) -> ResNetEncoder:
    return ResNetEncoder(args.arch, normalize_layers=not args.no_normalize_layers, last_stride=args.last_stride,
                         input_size=args.crop_size)


def build(args, lr: float):
    """The online model, its EMA target and the optimiser at learning rate `lr` (the run's effective lr)."""
    torch.manual_seed(args.seed)
    encoder = new_encoder(args)
    model = BYOL(encoder, args.proj_hidden, args.proj_dim, args.objective, args.dense_grid, args.dense_weight,
                 args.dve_weight, args.queue_size, args.moco_t)
    if not args.no_channels_last:
        model = model.to(memory_format=torch.channels_last)
    target = model.make_target()
    if args.optimizer == "sgd":                                  # fused: one kernel over all parameters
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                              fused=True)
    elif args.optimizer == "lars":
        opt = LARS(lars_groups(model, args.weight_decay), lr=lr, momentum=args.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay, fused=True)
    return model, target, opt


def train_step(accelerator, model, target, opt, sched, images, args, step, total):
    fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
    v1, v2, p1, p2 = make_views(images, step, args.seed, view_configs(args.crop_size, args.crop_scale, args.flip),
                                accelerator.process_index, accelerator.num_processes, fmt)
    corr = None
    if "pixel" in args.objective:
        corr = (view_correspondence(p1, p2, args.dense_grid), view_correspondence(p2, p1, args.dense_grid))
    with accelerator.accumulate(model):
        loss = model(v1, v2, target, corr, (p1, p2))
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if accelerator.sync_gradients:
        ema_update(*ema_pairs(accelerator.unwrap_model(model), target), target_momentum(args, step, total))
    return loss.detach()


def probe(args, run: Run, encoder: ResNetEncoder, baseline: dict) -> tuple[dict, str | None]:
    """The run's matching probe (Run.probe): trained vs. the same network untrained (measured once into
    `baseline`, since it does not change during training)."""
    def extractors():
        nets = {"trained": encoder}
        if not baseline:
            torch.manual_seed(args.seed)
            nets["random"] = new_encoder(args).eval().to(run.accelerator.device)
        return {name: (lambda x, net=net: net.hypercolumn(x.to(run.accelerator.device)).float().cpu())
                for name, net in nets.items()}
    out, what = run.probe(extractors, args.crop_size, encoder)
    if out:
        baseline.setdefault("random", out.get("random"))
        out = {**out, "random": baseline["random"]}
    return out, what


def model_card(args, run: Run, probe_result: dict, probe_on: str | None, steps: int) -> str:
    ref = run.hub.model_ref(run.out)
    return hub_card(
        f"LEAD stage 1: {args.objective} {args.arch}",
        f"The instance-level encoder Φ_G of LEAD (WACV 2022), trained by `byol_pretrain.py` with the "
        f"`{args.objective}` objective on unlabelled faces. Its hypercolumn (layers 1-4, upsampled and "
        "concatenated) is the dense descriptor that stage 2 (`dense_distill.py`) distils into compact features.",
        [data_line(run.data, "pretrain"), f"steps: {steps}, global batch {args.batch_size}, "
         f"views {args.crop_size} px, optimizer {args.optimizer}, lr {args.lr} per 256 images "
         f"({run.lr:.3g} per update of {args.batch_size * args.grad_accum}), seed {args.seed}",
         f"precision: {run.precision_line()}"],
        probe_table(probe_result, probe_on),
        f'from common.models import ResNetEncoder\nencoder = ResNetEncoder.from_pretrained("{ref}")\n'
        "dense = encoder.hypercolumn(images)   # images [B, 3, H, W] in [0, 1] -> [B, C, H/4, W/4]",
        f"python match.py --model {ref} --ref a.jpg --query b.jpg --out match.png\n"
        f"accelerate launch dense_distill.py --init_from {ref} --output_dir runs/distill",
        ["self-supervised", "byol", "dense-features", "facial-landmarks"])


def main(args) -> dict:
    if args.dve_weight and "pixel" not in args.objective:
        raise UserError(f"--dve_weight adds a term on the dense projections: it needs --objective pixel or "
                        f"byol+pixel, got {args.objective}")
    hub = HubTarget.from_flags(args.push_to_hub, args.hub_model_id, args.hub_private, "lead-byol")
    flags = vars(args)
    run = Run(from_flags(RunSpec, flags), from_flags(DataSpec, flags), "lead-byol", hub, flags,
              flag_defaults(get_args_parser(), flags))
    accelerator, total = run.accelerator, run.total
    model, target, opt = build(args, run.lr)
    sched = run.scheduler(opt)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    target.to(accelerator.device).train()
    run.freeze_batchnorm(model, target)
    baseline = {}                                               # the untrained network's probe, measured once

    def probe_now():
        return probe(args, run, accelerator.unwrap_model(model).encoder, baseline)

    every = max(1, round(args.eval_every * run.steps_per_epoch)) if args.eval_every else 0     # in steps
    step = run.train(lambda images, i: train_step(accelerator, model, target, opt, sched, images, args, i, total),
                     {"model": model, "target": target}, opt, sched,
                     rate="pairs_per_s", probe=probe_now, probe_every=every)
    if step < total:
        return {"step": step}
    return run.finish(accelerator.unwrap_model(model).encoder,
                      lambda result, on: model_card(args, run, result, on, step), probe_now,
                      "LEAD stage 1 (BYOL)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
