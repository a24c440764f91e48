"""The training loop's shared parts: LARS against a hand computation, the Reporter's outputs."""
import json

import pytest
import torch
import torch.nn as nn
from accelerate.tracking import GeneralTracker

from common.errors import UserError
from common.training import Reporter, eval_mode, make_accelerator
from common.optim import LARS, lars_groups


def test_lars_matches_the_update_rule_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    w0, b0 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    lr, mom, wd, trust = 0.5, 0.9, 0.1, 1e-3
    opt = LARS(lars_groups(net, wd), lr=lr, momentum=mom, trust=trust)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]          # the weight; bias, BN weight, BN bias
    x = torch.randn(8, 5)
    bufs_w, bufs_b, w, b = torch.zeros_like(w0), torch.zeros_like(b0), w0.clone(), b0.clone()
    for _ in range(2):
        opt.zero_grad()
        net(x).square().sum().backward()
        gw, gb = net[0].weight.grad.clone(), net[0].bias.grad.clone()
        d = gw + wd * w
        bufs_w = mom * bufs_w + trust * w.norm() / d.norm() * d           # adapted and decayed
        bufs_b = mom * bufs_b + gb                                         # neither
        w, b = w - lr * bufs_w, b - lr * bufs_b
        opt.step()
        torch.testing.assert_close(net[0].weight, w)
        torch.testing.assert_close(net[0].bias, b)
    assert not torch.allclose(w, w0) and not torch.allclose(b, b0)


def test_lars_state_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    net = nn.Linear(3, 3)
    opt = LARS(lars_groups(net, 1e-4), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    again = LARS(lars_groups(net, 1e-4), lr=0.1)
    again.load_state_dict(opt.state_dict())
    torch.testing.assert_close(again.state[net.weight]["momentum_buffer"], opt.state[net.weight]["momentum_buffer"])


class RecordingTracker(GeneralTracker):
    """An Accelerate tracker that keeps what it is given (tensorboard and wandb are optional packages)."""
    name, requires_logging_directory, main_process_only = "recording", False, True

    def __init__(self):
        super().__init__()
        self.config, self.logged, self.finished = None, [], False

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_reporter_writes_jsonl_and_flattened_tracker_records(tmp_path):
    from accelerate import Accelerator
    tracker = RecordingTracker()
    report = Reporter(Accelerator(cpu=True, log_with=[tracker]), tmp_path, "lead-test",
                      {"lr": 0.1, "zoom_out": [1.0, 1.5], "max_steps": None}, total=4, start=1)
    for step in (2, 3):
        report.advance()
        report.log(step, {"loss": 1.0 / step, "lr": 0.1})
    report.log(3, {"probe": {"trained": {"same_iod": 12.5}, "note": "text"}})
    report.close()
    assert tracker.config == {"lr": 0.1, "zoom_out": "[1.0, 1.5]", "max_steps": "None"}
    assert tracker.logged == [(2, {"loss": 0.5, "lr": 0.1}), (3, {"loss": 1 / 3, "lr": 0.1}),
                              (3, {"probe/trained/same_iod": 12.5})]
    assert tracker.finished
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 2, "loss": 0.5, "lr": 0.1}, {"step": 3, "loss": 1 / 3, "lr": 0.1},
                     {"step": 3, "probe": {"trained": {"same_iod": 12.5}, "note": "text"}}]
    assert report.bar.tasks[0].completed == 3


def test_a_missing_tracker_package_is_a_one_line_error(monkeypatch):
    import accelerate.utils
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(UserError, match="--report_to wandb needs the wandb package: pip install wandb"):
        make_accelerator("no", 1, "wandb")


def test_eval_mode_gives_each_module_its_own_mode_back():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    net.train()
    net[2][0].eval()                                       # e.g. --bn_eval, or a frozen encoder
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, True, True, False]
