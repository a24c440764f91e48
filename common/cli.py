"""The command line, and only here: the flags the scripts share, the conversion of parsed flags into the frozen
specs that `common/` takes (no function below this package's boundary sees an argparse Namespace), logging, and
user errors as one line with exit status 2.

    parser = argparse.ArgumentParser("stage", parents=[data_args(), run_args("runs/x")])
    data = from_flags(DataSpec, vars(args))          # the data flags, frozen
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping

from .errors import UserError


class HelpWithDefaults(argparse.HelpFormatter):
    """--help states every flag's default: a help text that does not say it gets "(default X)" (switches that are
    off and flags without a default say nothing)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        value = action.default
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return f"{text} (default {shown.replace('%', '%%')})"


TRACKERS = ("none", "tensorboard", "wandb")         # --report_to: Accelerate's trackers we name


def flag_defaults(parser: argparse.ArgumentParser, flags: Mapping) -> dict:
    """Each flag's default in `parser`: what --resume allows a flag added since a run began to be."""
    return {k: parser.get_default(k) for k in flags}


def from_flags(spec_type, flags: Mapping):
    """The frozen dataclass `spec_type` from parsed flags (vars(args)): its fields by name, lists as tuples; other
    flags are the script's own."""
    names = {f.name for f in dataclasses.fields(spec_type)}
    return spec_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in flags.items() if k in names})


def at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def zoom_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 1,1.5), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= LO <= HI, got {text!r}")
    return lo, hi


def data_args() -> argparse.ArgumentParser:
    """The data flags every script shares (a parent parser; common.data.DataSpec holds their values)."""
    from .data import FORMATS, SYNTHETIC_SPLITS           # light: `datasets` loads only when data is read

    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("Data")
    g.add_argument("--dataset", default="synthetic",
                   help="synthetic (default, generated here), a format name with --data_dir "
                        f"({', '.join(FORMATS)}), a folder saved with datasets, or a Hub dataset id")
    g.add_argument("--data_dir", default=None, help="root folder of a --dataset format, as its authors ship it")
    g.add_argument("--variant", default="aligned", choices=["aligned", "unaligned"],
                   help="synthetic faces: aligned (default; MAFL/CelebA-like crops) or unaligned (AFLW_R-like, "
                        "wider pose/scale)")
    g.add_argument("--zoom_out", type=zoom_range, default=(1.0, 1.5),
                   help="synthetic unaligned: range of zoom-out factors, e.g. 1,1.5 (default, seen) or 1.5,2 (unseen)")
    g.add_argument("--landmarks", type=int, default=5, choices=[5, 68],
                   help="synthetic: 5 MAFL points (default) or the 68 300-W points; regress.py --predict: "
                        "the default --model's")
    g.add_argument("--image_size", type=at_least(32), default=128,
                   help="synthetic render size and tensor-cache size (default 128)")
    g.add_argument("--num_images", type=at_least(1), default=None,
                   help=f"synthetic: images in the split (defaults {SYNTHETIC_SPLITS}); other sources: keep the first "
                        "N")
    g.add_argument("--data_seed", type=int, default=0, help="synthetic: which faces (default 0; same seed, same bytes)")
    g.add_argument("--data_workers", type=at_least(1), default=2, help="processes that render synthetic faces (2)")
    g.add_argument("--add_data", action="append", default=[], metavar="SOURCE",
                   help="pretraining (the unlabelled `pretrain` split of stages 1 and 2) also reads SOURCE, its "
                        "landmarks unused: FORMAT:DIR (e.g. imagefolder:photos/, mtfl:MTFL/), synthetic, or a saved "
                        "or Hub dataset; repeat for more (default: none)")
    g.add_argument("--max_bad_frac", type=float, default=0.01,
                   help="fail the load when more than this share of images is unreadable (default 0.01; they are "
                        "skipped and listed)")
    return parser


def hub_args(parser: argparse.ArgumentParser) -> None:
    """--push_to_hub, --hub_model_id, --hub_private (common.hub.HubTarget holds their values)."""
    g = parser.add_argument_group("Hugging Face Hub")
    g.add_argument("--push_to_hub", action="store_true", help="upload final/ (weights, config, model card) at the end")
    g.add_argument("--hub_model_id", default=None, help="the Hub repository for --push_to_hub, e.g. user/lead-64")
    g.add_argument("--hub_private", action="store_true", help="create the Hub repository as private")


def run_args(output_dir: str) -> argparse.ArgumentParser:
    """The flags every training stage shares (common.training.RunSpec holds their values): output folder, resume,
    precision, logging, checkpoints, Hub."""
    from .precision import PRECISIONS

    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("Run")
    g.add_argument("--output_dir", default=output_dir, help=f"the run's folder (default {output_dir})")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output_dir")
    g.add_argument("--overwrite", action="store_true", help="replace a used --output_dir")
    g.add_argument("--seed", type=int, default=0, help="initialisation, batches and views (default 0)")
    g.add_argument("--mixed_precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 where the device computes it fast (a CUDA GPU with bf16; a CPU where a "
                        "short probe finds bf16 faster), else fp32 (no); the choice and its reason go to args.json")
    g.add_argument("--grad_accum", type=at_least(1), default=1,
                   help="accumulate gradients over this many steps (each of --batch_size) per optimiser update "
                        "(default 1); --max_steps and the schedules count steps, the lr rule counts the images of "
                        "an update")
    g.add_argument("--log_every", type=at_least(1), default=10, help="steps between metrics.jsonl lines (default 10)")
    g.add_argument("--report_to", default="none", choices=TRACKERS,
                   help="also log to this Accelerate tracker (default none; optional package; metrics.jsonl is "
                        "always written)")
    g.add_argument("--checkpoint_every", type=at_least(1), default=500, help="steps between checkpoints (default 500)")
    g.add_argument("--checkpoints_total_limit", type=at_least(1), default=2, help="checkpoints kept (default 2)")
    g.add_argument("--exit_after_steps", type=at_least(1), default=None,
                   help="stop (checkpointed) after this many steps of this run, e.g. for time-limited jobs; "
                        "continue with --resume (default: run to the end)")
    g.add_argument("--probe_pairs", type=int, default=100,
                   help="pairs of each kind for the matching probe (default 100; 0: off)")
    g.add_argument("--bn_eval", action="store_true",
                   help="keep BatchNorm on its running statistics (for tiny per-process batches, and to compare "
                        "runs with different numbers of processes exactly)")
    hub_args(parser)
    return parser


def schedule_args(g, lr: float, lr_what: str, epochs: int) -> None:
    """A training stage's steps and learning rate, into argument group `g`: --lr (common.optim's rule),
    --batch_size, --epochs, --max_steps, --warmup_epochs."""
    from .optim import LR_RULE

    g.add_argument("--lr", type=float, default=lr, help=f"{lr_what} base learning rate (default {lr:g}); {LR_RULE}")
    g.add_argument("--batch_size", type=at_least(2), default=256,
                   help="global batch, all processes together (default 256)")
    g.add_argument("--epochs", type=at_least(1), default=epochs,
                   help=f"passes over the pretraining images (default {epochs})")
    g.add_argument("--max_steps", type=at_least(1), default=None,
                   help="total steps of --batch_size (overrides --epochs)")
    g.add_argument("--warmup_epochs", type=float, default=2.0,
                   help="linear warm-up of the lr before its cosine decay (default 2; at most half the run)")


def view_args(parser: argparse.ArgumentParser) -> None:
    """The two augmented views of each image in stages 1 and 2 (common.views.view_configs)."""
    g = parser.add_argument_group("Views")
    g.add_argument("--crop_size", type=at_least(16), default=96, help="side of each augmented view (default 96)")
    g.add_argument("--crop_scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("LO", "HI"),
                   help="area range of the random resized crops (default 0.08 1, BYOL's)")
    g.add_argument("--flip", type=float, default=0.5, help="probability of a horizontal flip of each view (0.5)")


def pick_device(requested: str) -> str:
    """--device auto | cpu | cuda -> the device to use; cuda without one is a user's mistake."""
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: torch {torch.__version__} sees no CUDA device here; use --device cpu "
                        "(or auto)")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def setup_logging(level: int = logging.INFO) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("datasets", "huggingface_hub", "fsspec", "filelock", "httpx", "httpcore", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")    # read when (if) datasets is imported
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def run_cli(main, parser) -> None:
    """Parse argv, run main(args); a UserError (a user's mistake) prints one line and exits 2."""
    args = parser.parse_args()
    setup_logging()
    try:
        result = main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if isinstance(result, dict) and result.get("exit_status"):     # e.g. regress.py --predict: an image failed
        sys.exit(result["exit_status"])
