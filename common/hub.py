"""The Hugging Face Hub: the flags, the token check before any work, model cards and the upload of final/.

Every stage pushes the same way: `--push_to_hub --hub_model_id user/name [--hub_private]` uploads OUTPUT/final/
(config.json, model.safetensors, README.md) at the end of the run. The token comes from `huggingface-cli login`
(or `hf auth login`) or HF_TOKEN; without one the run stops before training, not after. Loading from the Hub
goes through `from_pretrained(id)` (common.features.load_model), which reads the local Hub cache first.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .errors import UserError


def hub_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Hugging Face Hub")
    g.add_argument("--push_to_hub", action="store_true", help="upload final/ (weights, config, model card) at the end")
    g.add_argument("--hub_model_id", default=None, help="the Hub repository for --push_to_hub, e.g. user/lead-64")
    g.add_argument("--hub_private", action="store_true", help="create the Hub repository as private")


def check_hub(args, example: str) -> None:
    """Fail before any work when --push_to_hub cannot succeed at the end: no repository id, or no token."""
    if not args.push_to_hub:
        return
    if not args.hub_model_id:
        raise UserError(f"--push_to_hub needs --hub_model_id (e.g. user/{example})")
    import huggingface_hub

    if not huggingface_hub.get_token():
        raise UserError("--push_to_hub: no Hugging Face token found; run `huggingface-cli login` "
                        "(or `hf auth login`) or set HF_TOKEN, then start again")


def model_card(title: str, summary: str, trained: list[str], metrics: list[str], load: str, use: str | None,
               tags: list[str]) -> str:
    """A model card: YAML metadata for the Hub, what the model is, how it was trained, its metrics (markdown
    lines), how to load it (python) and use it (shell)."""
    meta = ["---", "library_name: pytorch", "tags:"] + [f"- {t}" for t in ["lead", *tags]] + ["---"]
    lines = [*meta, "", f"# {title}", "", summary, "", "## Training", "", *[f"- {t}" for t in trained], ""]
    if metrics:
        lines += ["## Metrics", "", *metrics, ""]
    lines += ["## Load", "", "With a clone of the LEAD reference implementation (the repository that wrote this "
              "card) on the Python path:", "", "```python",
              load, "```", ""]
    if use:
        lines += ["## Use", "", "```bash", use, "```", ""]
    return "\n".join(lines)


def data_line(args, split: str) -> str:
    """The training data as a card states it: the data set and its options, never a local path."""
    what = f"--dataset {args.dataset}"
    if args.dataset == "synthetic":
        what += f" --variant {args.variant} --image_size {args.image_size} (faces drawn by this repository)"
    if split == "pretrain" and getattr(args, "add_data", None):      # formats only: a folder is the user's
        from .data import FORMATS
        what += "".join(f" --add_data {fmt if fmt in FORMATS or fmt == 'synthetic' else 'DATASET'}"
                        for fmt in (spec.partition(":")[0] for spec in args.add_data))
    return f"data: {what}, split `{split}`" + (f", first {args.num_images} images" if args.num_images else "")


def model_ref(args, out: Path) -> str:
    """How a card names its own model: the Hub id when it is pushed, else the local folder."""
    return args.hub_model_id if args.push_to_hub else str(out / "final")


def push_to_hub(folder: Path, repo_id: str, private: bool, message: str) -> None:
    """Upload a final/ folder to the Hub (creating the repository when it does not exist)."""
    import huggingface_hub

    api = huggingface_hub.HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    logging.getLogger("lead").info("pushed %s to https://huggingface.co/%s", folder, repo_id)
