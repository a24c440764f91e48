"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder holds, for each named module, NAME.safetensors (its state_dict); optimizer.safetensors
and optimizer.json (the optimizer's per-parameter tensors, and its scalars and parameter groups);
scheduler.json; and state.json (the step and whatever the caller adds). Loading reads tensors and JSON
only, so a checkpoint from anywhere can never run code (torch.load's pickle can).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _tensors_and_rest(optimizer_state: dict) -> tuple[dict, dict]:
    """torch optimizer state {"state": {i: {name: value}}, "param_groups": [...]} -> tensors {"i.name": t}
    and the JSON-able rest (scalars per parameter, and the groups)."""
    tensors, scalars = {}, {}
    for i, entry in optimizer_state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{i}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(i), {})[name] = value
    return tensors, {"scalars": scalars, "param_groups": optimizer_state["param_groups"]}


def save_state(folder: Path, modules: dict, optimizer, scheduler, state: dict) -> None:
    """Write modules (name -> nn.Module), the optimizer, the scheduler and `state` (JSON) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                  folder / f"{name}.safetensors")
    tensors, rest = _tensors_and_rest(optimizer.state_dict())
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps(rest))
    (folder / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    (folder / "state.json").write_text(json.dumps(state))


def load_state(folder: Path, modules: dict, optimizer, scheduler, device) -> dict:
    """Restore what save_state wrote, in place; returns its `state`."""
    for name, module in modules.items():
        module.load_state_dict(load_file(folder / f"{name}.safetensors", device=str(device)))
    rest = json.loads((folder / "optimizer.json").read_text())
    per_param: dict[int, dict] = {int(i): dict(v) for i, v in rest["scalars"].items()}
    for key, value in load_file(folder / "optimizer.safetensors", device=str(device)).items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": rest["param_groups"]})
    _match_layouts(getattr(optimizer, "optimizer", optimizer))          # Accelerate wraps it
    scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    return json.loads((folder / "state.json").read_text())


def _match_layouts(optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout. They come back contiguous; a fused
    optimiser walks a channels-last weight and its Adam moments element for element, so a contiguous moment
    would update the wrong weights (measured: resumed runs drifted by 2e-2 after two steps)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)
