"""Checkpoints in safetensors and JSON: a save and load in the middle of training changes nothing."""
import json

import pytest
import torch
import torch.nn as nn

from common.checkpoint import load_state, save_state
from common.optim import LARS, lars_groups, warmup_cosine


def make(optimizer: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(2, 3, 6, 6))                                   # materialise the lazy layer
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
           "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
           "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-4),
           "lars": lambda p: LARS(lars_groups(model, 1e-4), lr=0.1)}[optimizer](model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 2, 10))
    return model, opt, sched


def train(model, opt, sched, steps: range):
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 4, generator=g)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "lars"])
def test_saved_and_loaded_training_continues_exactly(tmp_path, optimizer):
    model, opt, sched = make(optimizer)
    train(model, opt, sched, range(4))
    save_state(tmp_path, {"model": model}, opt, sched, {"step": 4})
    train(model, opt, sched, range(4, 8))                              # the uninterrupted run

    again, opt2, sched2 = make(optimizer)                             # a fresh process: other initial values
    train(again, opt2, sched2, range(1))
    assert load_state(tmp_path, {"model": again}, opt2, sched2, "cpu") == {"step": 4}
    train(again, opt2, sched2, range(4, 8))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_a_checkpoint_is_only_safetensors_and_json(tmp_path):
    model, opt, sched = make("adam")
    train(model, opt, sched, range(2))
    save_state(tmp_path, {"model": model, "target": model}, opt, sched, {"step": 2})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "scheduler.json",
                     "state.json", "target.safetensors"]
    for p in tmp_path.glob("*.json"):
        json.loads(p.read_text())
    for p in tmp_path.glob("*.safetensors"):                        # no pickle: the header is JSON
        n = int.from_bytes(p.read_bytes()[:8], "little")
        json.loads(p.read_bytes()[8:8 + n])


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
                                  lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True)])
def test_fused_optimisers_resume_exactly_on_channels_last_weights(tmp_path, make):
    """The moments come back contiguous; a fused kernel would pair them with the wrong channels-last weights."""
    def fresh():
        torch.manual_seed(0)
        net = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        opt = make(net.parameters())
        return net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def train(net, opt, sched, steps):
        for i in steps:
            x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i))
            net(x).square().sum().backward()
            opt.step()
            sched.step()
            opt.zero_grad()

    straight = fresh()
    train(*straight, range(4))
    first = fresh()
    train(*first, range(2))
    save_state(tmp_path, {"net": first[0]}, first[1], first[2], {})
    resumed = fresh()
    load_state(tmp_path, {"net": resumed[0]}, resumed[1], resumed[2], "cpu")
    train(*resumed, range(2, 4))
    for a, b in zip(straight[0].parameters(), resumed[0].parameters()):
        assert torch.equal(a, b)
