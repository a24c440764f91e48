"""One learning-rate rule for every stage (MAE's): --lr per 256 images, x --batch_size x --grad_accum / 256."""
import json
from types import SimpleNamespace

import pytest
import torch

import byol_pretrain
import dense_distill
import regress
from common.models import ResNetEncoder
from common.optim import effective_lr

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--arch", "resnet18", "--proj_hidden", "32", "--proj_dim", "16", "--crop_size", "32"]


def test_effective_lr_scales_with_the_images_of_an_update():
    assert effective_lr(0.1, 256) == pytest.approx(0.1)
    assert effective_lr(0.1, 64) == pytest.approx(0.025)
    assert effective_lr(0.1, 64, grad_accum=4) == pytest.approx(0.1)              # 256 images per update


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adam"])
def test_stage1_applies_the_rule_to_every_optimizer(optimizer):
    """Adam was used unscaled before the rule: now every optimiser gets 0.1 x 64 x 2 / 256."""
    args = byol_pretrain.get_args_parser().parse_args(SMALL + ["--optimizer", optimizer, "--lr", "0.1",
                                                               "--batch_size", "64", "--grad_accum", "2"])
    _, _, opt, _, _ = byol_pretrain.build(args, steps_per_epoch=10)
    assert [g["initial_lr"] for g in opt.param_groups] == [pytest.approx(0.05)] * len(opt.param_groups)


def test_stage2_applies_the_rule_with_accumulation():
    args = dense_distill.get_args_parser().parse_args(["--init_from", "unused", "--crop_size", "32", "--lr", "0.1",
                                                       "--batch_size", "32", "--grad_accum", "4",
                                                       "--fpn_width", "16", "--feature_dim", "8"])
    _, opt, _, _ = dense_distill.build(args, ResNetEncoder("resnet18", input_size=32), steps_per_epoch=10)
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.05)


def test_regress_applies_the_rule_to_the_flag_not_to_a_smaller_batch(monkeypatch):
    """Few labels make the batch smaller than --batch_size: the rate follows the flag (as before the rule, where
    DVE's 1e-3 was used at every size), so the default 8e-3 is 1e-3 at batch 32."""
    seen = []

    class Stop(Exception):
        pass

    def adam(params, lr, **kwargs):
        seen.append(lr)
        raise Stop

    monkeypatch.setattr(torch.optim, "Adam", adam)
    from common.cli import from_flags
    from common.regression import RegressorSpec, Scorer, train_regressor
    args = regress.get_args_parser().parse_args(["--features_from", "random-resnet18"])
    stores = {"train": SimpleNamespace(device="cpu", source=SimpleNamespace(dim=8))}
    with pytest.raises(Stop):
        train_regressor(from_flags(RegressorSpec, vars(args)), stores, {}, torch.arange(3), 0, Scorer(5), 5)
    assert seen == [pytest.approx(1e-3)]


def test_resume_names_the_rule_for_a_run_that_began_before_it(tmp_path):
    """A run begun before the rule recorded no effective_lr and may have trained at another rate: refused, with why.
    One that recorded it is compared on the flags it follows from (named), not on the derived rate as well."""
    from common.errors import UserError
    from common.training import check_resume_args
    flags = {"lr": 1e-3, "batch_size": 64, "grad_accum": 1}
    (tmp_path / "args.json").write_text(json.dumps(flags))
    with pytest.raises(UserError, match=r"\(effective_lr\) \(that run began before the one learning-rate rule\)"):
        check_resume_args({**flags, "effective_lr": 2.5e-4}, tmp_path)
    (tmp_path / "args.json").write_text(json.dumps({**flags, "effective_lr": 2.5e-4}))
    check_resume_args({**flags, "effective_lr": 2.5e-4}, tmp_path)
    with pytest.raises(UserError, match=r"other settings than .* \(lr\): use"):
        check_resume_args({**flags, "lr": 2e-3, "effective_lr": 5e-4}, tmp_path)
