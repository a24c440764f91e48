"""The Hugging Face Hub: the upload target with its token check before any work, model cards, the upload of final/.

Every stage pushes the same way: `--push_to_hub --hub_model_id user/name [--hub_private]` uploads OUTPUT/final/
(config.json, model.safetensors, README.md) at the end of the run. The token comes from `huggingface-cli login`
(or `hf auth login`) or HF_TOKEN; without one the run stops before training, not after (HubTarget.from_flags).
Loading from the Hub goes through `from_pretrained(id)` (common.features.load_model), which reads the local Hub
cache first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .data import DataSpec


@dataclass(frozen=True)
class HubTarget:
    """Where final/ is uploaded at the end of a run: `repo_id` with --push_to_hub, None (nowhere) without."""
    repo_id: str | None = None
    private: bool = False

    @classmethod
    def from_flags(cls, push_to_hub: bool, hub_model_id: str | None, hub_private: bool, example: str) -> HubTarget:
        """The target of --push_to_hub --hub_model_id [--hub_private]; fails before any work when the upload could not
        succeed at the end: no repository id, or no token."""
        if not push_to_hub:
            return cls()
        if not hub_model_id:
            raise UserError(f"--push_to_hub needs --hub_model_id (e.g. user/{example})")
        import huggingface_hub

        if not huggingface_hub.get_token():
            raise UserError("--push_to_hub: no Hugging Face token found; run `huggingface-cli login` "
                            "(or `hf auth login`) or set HF_TOKEN, then start again")
        return cls(hub_model_id, hub_private)

    def model_ref(self, out: Path) -> str:
        """How a card names its own model: the Hub id when it is pushed, else the local folder."""
        return self.repo_id or str(out / "final")

    def push(self, folder: Path, message: str) -> None:
        """Upload a final/ folder (creating the repository when it does not exist); nothing without a target."""
        if self.repo_id is None:
            return
        import huggingface_hub

        api = huggingface_hub.HfApi()
        api.create_repo(self.repo_id, private=self.private, exist_ok=True)
        api.upload_folder(repo_id=self.repo_id, folder_path=str(folder), commit_message=message)
        logging.getLogger("lead").info("pushed %s to https://huggingface.co/%s", folder, self.repo_id)


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


def data_line(data: DataSpec, split: str) -> str:
    """The training data as a card states it: the data set and its options, never a local path."""
    what = f"--dataset {data.dataset}"
    if data.dataset == "synthetic":
        what += f" --variant {data.variant} --image_size {data.image_size} (faces drawn by this repository)"
    if split == "pretrain" and data.add_data:                         # formats only: a folder is the user's
        from .data import FORMATS
        what += "".join(f" --add_data {fmt if fmt in FORMATS or fmt == 'synthetic' else 'DATASET'}"
                        for fmt in (spec.partition(":")[0] for spec in data.add_data))
    return f"data: {what}, split `{split}`" + (f", first {data.num_images} images" if data.num_images else "")
