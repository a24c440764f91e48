"""Stage 2: LEAD dense distillation (Sec. 3.3, Eq. 2-3, supplement D).

    accelerate launch dense_distill.py --init_from runs/byol/final --tau 0.05 --output_dir runs/distill
    python dense_distill.py --init_from runs/cpu_byol/final --crop_size 64 --batch_size 32 --max_steps 200 \\
        --output_dir runs/cpu_distill                                          # minutes on a 2-core CPU

The teacher is the stage-1 encoder Φ_G (frozen, eval mode) and its hypercolumn H; the student Φ_D
is that encoder (frozen by default, as in the supplement) plus an FPN decoder giving
--feature_dim channels at 1/4 of the input, trained through a projection head g_D so that, for
every position of image i, the softmax over all positions of image j of its cosine similarities
/ tau matches the teacher's (a cross-entropy). Writes OUTPUT/final/ (Φ_D without the head:
config.json, model.safetensors, README.md), checkpoints/, args.json and metrics.jsonl.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
from einops import rearrange

from common.views import make_views, view_configs
from common.cli import (HelpWithDefaults, at_least, data_args, flag_defaults, from_flags, run_args, run_cli,
                        schedule_args, view_args)
from common.data import DataSpec
from common.errors import UserError
from common.features import check_source, load_model
from common.hub import HubTarget, data_line
from common.hub import model_card as hub_card
from common.losses import auto_chunk, cl_loss, dve_views, lead_loss
from common.models import ConvHead, DenseExtractor, ResNetEncoder
from common.probe import probe_table
from common.training import Run, RunSpec

PAIRS = ("views", "cross", "both")
OBJECTIVES = ("lead", "dve", "lead+dve", "cl")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("LEAD dense distillation (stage 2)",
                                     parents=[data_args(), run_args("runs/distill")], formatter_class=HelpWithDefaults)
    g = parser.add_argument_group("Model")
    g.add_argument("--init_from", required=True, help="a stage-1 final/ folder or Hub id (the teacher Φ_G)")
    g.add_argument("--feature_dim", type=at_least(1), default=64,
                   help="channels of the dense features (default 64; the paper: 64, 128, 256)")
    g.add_argument("--fpn_width", type=at_least(8), default=128, help="channels inside the FPN decoder (default 128)")
    g.add_argument("--decoder", default="fpn", choices=["fpn", "linear"],
                   help="fpn (default, LEAD's) or linear: a 1x1 convolution of the hypercolumn, ContrastLandmark's "
                        "projector")
    g.add_argument("--head_dim", type=int, default=256,
                   help="projection head output width (default 256; 0: no head, Table 3)")
    g.add_argument("--unfreeze_encoder", action="store_true", help="train the encoder too (frozen in the paper)")
    g.add_argument("--keep_frozen", type=int, default=0, choices=range(5),
                   help="with --unfreeze_encoder, the first N stages stay frozen (default 0; 1: the stem, 2: and "
                        "layer 1, ...)")
    g = parser.add_argument_group("Loss")
    g.add_argument("--objective", default="lead", choices=OBJECTIVES,
                   help="lead (default): the paper's distillation; dve: DVE's equivariance through an auxiliary image "
                        "(no teacher in the loss); lead+dve: their sum, --dve_weight on the second; cl: "
                        "ContrastLandmark's dense loss (each image against itself, distance-weighted; features "
                        "through a spatial softmax; Table 6)")
    g.add_argument("--tau", type=float, default=0.05,
                   help="softmax temperature of Eq. 2 and of DVE's matches (default 0.05)")
    g.add_argument("--teacher_tau", type=float, default=None,
                   help="temperature of the teacher's softmax in Eq. 2 (default: --tau, the paper's); below --tau it "
                        "sharpens the distribution the student learns")
    g.add_argument("--cl_tau", type=float, default=1 / 7,
                   help="cl: softmax temperature (default 1/7, ContrastLandmark's)")
    g.add_argument("--cl_softmax", type=float, default=7.0,
                   help="cl: multiplier of the features' spatial softmax (default 7, ContrastLandmark's "
                        "softargmax_mul)")
    g.add_argument("--dve_weight", type=float, default=1.0, help="weight of the DVE term in lead+dve (default 1)")
    g.add_argument("--dve_power", type=float, default=0.5, help="DVE's distance exponent (default 0.5, as DVE's code)")
    g.add_argument("--dve_channels", type=int, default=0,
                   help="lead+dve: the DVE term shapes only the last K channels and LEAD's head sees the others "
                        "(0: both terms on all channels)")
    g.add_argument("--pairs", default="views", choices=PAIRS,
                   help="views (default): two augmented views of each image; cross: each image with another of the "
                        "batch; both")
    g.add_argument("--chunk", default="auto",
                   help="query positions per chunk of the loss (bounds memory, backward included): auto (default), "
                        "none or N")
    g = parser.add_argument_group("Optimisation")
    schedule_args(g, 1e-3, "AdamW", epochs=20)
    g.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    view_args(parser)
    return parser


def load_teacher(source: str) -> ResNetEncoder:
    """Φ_G from a stage-1 final/ (or Hub id); anything else is a one-line error (common.features decides)."""
    try:
        kind = check_source(source)
    except UserError as e:
        raise UserError(f"--init_from {source}: not a stage-1 model ({e})") from None
    if kind != "hypercolumn":
        raise UserError(f"--init_from {source}: not a stage-1 model (a {kind} model)")
    return load_model(source).encoder


class Distiller(nn.Module):
    """The student Φ_D and its projection head g_D, trained against the frozen teacher's hypercolumn."""

    def __init__(self, student: DenseExtractor, head_dim: int, frozen: int = 5, dve_channels: int = 0):
        super().__init__()
        self.student, self.frozen = student, frozen
        self.lead_channels = student.feature_dim - dve_channels         # the channels LEAD's head sees
        self.head = ConvHead(self.lead_channels, head_dim, head_dim) if head_dim else nn.Identity()
        for stage in self.frozen_stages():
            stage.requires_grad_(False)
        self.train()

    def frozen_stages(self) -> list[nn.Module]:
        """The first `frozen` of the encoder's stages (stem, layer 1-4): all five by default, as in the paper."""
        enc = self.student.encoder
        return [enc.stem, enc.layer1, enc.layer2, enc.layer3, enc.layer4][:self.frozen]

    def train(self, mode: bool = True):
        super().train(mode)
        for stage in self.frozen_stages():
            stage.eval()                       # frozen: BatchNorm on its running statistics, as the teacher
        return self

    def forward(self, x: torch.Tensor, teacher_maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, S, S] and the teacher's layer maps of them (or None) -> the dense features [B, C, h, w]
        (what stage 2 hands on) and their projections [B, h*w, C_head] (what the LEAD loss sees). The student's
        frozen stages are the teacher's, so the maps of its frozen layers are the teacher's, computed once."""
        done = min(max(self.frozen - 1, 0), 4) if teacher_maps is not None else 0   # frozen layers 1..done
        if done:
            maps = teacher_maps[:done] + self.student.encoder.layers(teacher_maps[done - 1], start=done)
        else:
            maps = self.student.encoder.layers(x)
        features = self.student.decode(maps)
        return features, rearrange(self.head(features[:, :self.lead_channels]), "b c h w -> b (h w) c")


def pair_loss(f: torch.Tensor, h: torch.Tensor, pairs: str, tau: float, chunk,
              teacher_tau: float | None = None) -> torch.Tensor:
    """f, h of the batch's two views stacked [2B, N, C]: view 1 of image b is row b, view 2 row B + b."""
    f1, f2 = f.chunk(2)
    h1, h2 = h.chunk(2)
    views = cross = 0.0

    def both_ways(fa, fb, ha, hb):
        return (lead_loss(fa, fb, ha, hb, tau, chunk, teacher_tau) + lead_loss(fb, fa, hb, ha, tau, chunk,
                                                                              teacher_tau)) / 2
    if pairs in ("views", "both"):             # the same image under two augmentations
        views = both_ways(f1, f2, h1, h2)
    if pairs in ("cross", "both"):             # view 1 of image b with view 2 of image b - 1
        cross = both_ways(f1, f2.roll(1, 0), h1, h2.roll(1, 0))
    return views + cross if pairs != "both" else (views + cross) / 2


def build(args, teacher: ResNetEncoder, lr: float):
    """The student (its encoder a copy of the teacher's) with its loss heads, and AdamW at learning rate `lr`
    (the run's effective lr) on what it trains."""
    torch.manual_seed(args.seed)
    softmax = args.cl_softmax if args.objective == "cl" else 0.0          # ContrastLandmark's heatmap channels
    student = DenseExtractor(teacher.arch, args.feature_dim, args.fpn_width, last_stride=teacher.last_stride,
                             input_size=args.crop_size, spatial_softmax=softmax, decoder=args.decoder,
                             mean=tuple(teacher.mean.flatten().tolist()), std=tuple(teacher.std.flatten().tolist()))
    student.encoder.load_state_dict(teacher.state_dict())
    head_dim = args.head_dim if "lead" in args.objective else 0     # DVE, CL: the loss sees the features themselves
    model = Distiller(student, head_dim, args.keep_frozen if args.unfreeze_encoder else 5, args.dve_channels)
    model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay, fused=True)


def needs_teacher_maps(args) -> bool:
    """Whether a step runs the teacher: LEAD's target, or the maps a frozen student encoder reads."""
    return "lead" in args.objective or not args.unfreeze_encoder


def train_step(accelerator, model, teacher, opt, sched, images, args, step, chunk):
    v1, v2, p1, p2 = make_views(images, step, args.seed, view_configs(args.crop_size, args.crop_scale, args.flip),
                                  accelerator.process_index, accelerator.num_processes)
    views = torch.cat([v1, v2])
    # the teacher outside the prepared model: Accelerate would cast its outputs, h included, to fp32
    maps = h = None
    with accelerator.autocast(), torch.no_grad():
        if needs_teacher_maps(args):
            maps = teacher.layers(views)
        if "lead" in args.objective:
            h = rearrange(teacher.hypercolumn_of(maps), "b c h w -> b (h w) c")
    with accelerator.accumulate(model):
        with accelerator.autocast():
            features, f = model(views, maps)
        loss = 0.0                                                # softmaxes and cross-entropies in fp32
        if "lead" in args.objective:
            loss = pair_loss(f, h, args.pairs, args.tau, chunk, args.teacher_tau)
        if args.objective == "cl":                              # each view against itself
            loss = cl_loss(features, args.crop_size / features.shape[-1], args.cl_tau)
        if "dve" in args.objective:
            loss = loss + args.dve_weight * dve_views(features[:, -args.dve_channels:], p1, p2, args.tau,  # -0: all
                                                      args.dve_power)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()


def probe(args, run: Run, student: DenseExtractor, teacher: ResNetEncoder) -> tuple[dict, str | None]:
    """The run's matching probe (Run.probe): the compact features vs. the teacher's hypercolumn."""
    dev = run.accelerator.device
    name = f"{'cl' if args.objective == 'cl' and args.cl_softmax else 'lead'}-{args.feature_dim}"   # as load_model
    return run.probe(lambda: {name: lambda x: student(x.to(dev)).float().cpu(),
                              f"hypercolumn-{teacher.hypercolumn_dim}":
                                  lambda x: teacher.hypercolumn(x.to(dev)).float().cpu()}, args.crop_size, student)


def model_card(args, run: Run, teacher: ResNetEncoder, probe_result: dict, probe_on: str | None,
               steps: int) -> str:
    ref = run.hub.model_ref(run.out)
    return hub_card(
        f"LEAD stage 2: {args.feature_dim}-d dense features, {teacher.arch}",
        f"The compact dense extractor Φ_D of LEAD (WACV 2022): a ResNet encoder and an FPN decoder giving "
        f"{args.feature_dim} channels at 1/4 of the input, distilled by `dense_distill.py` from a stage-1 "
        f"encoder's {teacher.hypercolumn_dim}-d hypercolumn. Matching points by cosine similarity of these "
        "features carries landmarks between faces; a small regressor on them (`regress.py`) predicts landmarks.",
        [f"teacher: {args.init_from} ({teacher.hypercolumn_dim}-d hypercolumn)",
         data_line(run.data, "pretrain"),
         f"steps: {steps}, global batch {args.batch_size}, views {args.crop_size} px, objective {args.objective}, "
         f"pairs {args.pairs}, tau {args.tau}{'' if args.teacher_tau is None else f' (teacher {args.teacher_tau})'}, "
         f"head {args.head_dim if 'lead' in args.objective else 0}, "
         f"encoder {'trained' if args.unfreeze_encoder else 'frozen'}, lr {args.lr} per 256 images "
         f"({run.lr:.3g} per update of {args.batch_size * args.grad_accum}), seed {args.seed}",
         f"precision: {run.precision_line()}"],
        probe_table(probe_result, probe_on),
        f'from common.models import DenseExtractor\nmodel = DenseExtractor.from_pretrained("{ref}")\n'
        f"features = model(images)   # images [B, 3, H, W] in [0, 1] -> [B, {args.feature_dim}, H/4, W/4]",
        f"python match.py --model {ref} --ref a.jpg --query b.jpg --out match.png\n"
        f"python regress.py --features_from {ref} --output_dir runs/regress",
        ["self-supervised", "dense-features", "facial-landmarks", "correspondence"])


def check_args(args) -> None:
    """The user's mistakes that can be seen from the flags alone, as one line each."""
    if args.keep_frozen and not args.unfreeze_encoder:
        raise UserError("--keep_frozen applies to a trained encoder: add --unfreeze_encoder")
    if args.dve_channels and (args.objective != "lead+dve" or not 0 < args.dve_channels < args.feature_dim):
        raise UserError(f"--dve_channels splits the features between LEAD and DVE: it needs --objective lead+dve "
                        f"and 0 < K < --feature_dim ({args.feature_dim}), got {args.dve_channels}")
    if args.chunk not in ("auto", "none") and not (args.chunk.isdigit() and int(args.chunk) > 0):
        raise UserError(f"--chunk must be auto, none or a number of positions, got {args.chunk!r}")


def main(args) -> dict:
    hub = HubTarget.from_flags(args.push_to_hub, args.hub_model_id, args.hub_private, "lead-64")
    check_args(args)
    teacher = load_teacher(args.init_from)
    flags = vars(args)
    run = Run(from_flags(RunSpec, flags), from_flags(DataSpec, flags), "lead-distill", hub, flags,
              flag_defaults(get_args_parser(), flags))
    accelerator = run.accelerator
    local = args.batch_size // accelerator.num_processes
    if (args.pairs != "views" or "dve" in args.objective) and local < 2:
        what = f"--objective {args.objective}" if "dve" in args.objective else f"--pairs {args.pairs}"
        raise UserError(f"{what} pairs images within a process's batch: it needs 2 or more per process")
    model, opt = build(args, teacher, run.lr)
    sched = run.scheduler(opt)
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)          # the projection head's BatchNorm
    model, opt, sched = accelerator.prepare(model, opt, sched)
    teacher = teacher.to(accelerator.device, memory_format=torch.channels_last).eval().requires_grad_(False)
    run.freeze_batchnorm(model)
    n = math.ceil(args.crop_size / 4) ** 2                               # positions of the stride-4 map
    chunk = int(args.chunk) if args.chunk.isdigit() else auto_chunk(local, n) if args.chunk == "auto" else None
    step = run.train(lambda images, i: train_step(accelerator, model, teacher, opt, sched, images, args, i, chunk),
                     {"model": model}, opt, sched, rate="images_per_s")
    if step < run.total:
        return {"step": step}
    student = accelerator.unwrap_model(model).student
    return run.finish(student, lambda result, on: model_card(args, run, teacher, result, on, step),
                      lambda: probe(args, run, student, teacher), "LEAD stage 2 (dense distillation)")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
