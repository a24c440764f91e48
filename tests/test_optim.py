"""One learning-rate rule for every stage (MAE's): --lr per 256 images, x --batch_size x --grad_accum / 256."""
import json
from types import SimpleNamespace

import pytest
import torch

import byol_pretrain
import dense_distill
import regress
from common.models import ResNetEncoder
from common.optim import effective_lr, warmup_cosine
from tests.test_byol_pretrain import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--arch", "resnet18", "--proj_hidden", "32", "--proj_dim", "16", "--crop_size", "32"]


def test_effective_lr_scales_with_the_images_of_an_update():
    assert effective_lr(0.1, 256) == pytest.approx(0.1)                            # 256 images: the base rate
    assert effective_lr(0.1, 64) == pytest.approx(0.025)                           # a quarter of them: 0.1 / 4
    assert effective_lr(0.1, 64, grad_accum=4) == pytest.approx(0.1)              # 64 x 4 = 256 images per update
    assert effective_lr(1e-3, 512, grad_accum=2) == pytest.approx(4e-3)           # 1e-3 x 1024 / 256


def test_warmup_cosine_factors_by_hand():
    # warm-up 2 of 10 steps: 1/2, 2/2, then 0.5 (1 + cos(pi t / 8)) over the other 8
    assert [warmup_cosine(s, 2, 10) for s in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    assert warmup_cosine(4, 2, 10) == pytest.approx(0.5 + 0.5 * 2 ** -0.5)         # t = 2: cos(pi / 4)
    assert warmup_cosine(6, 2, 10) == pytest.approx(0.5)                           # t = 4, the midpoint: cos(pi / 2)
    assert warmup_cosine(10, 2, 10) == pytest.approx(0.0) and warmup_cosine(12, 2, 10) == pytest.approx(0.0)


def test_a_run_trains_at_the_rule_s_rate_on_its_schedule(cache_dir, tmp_path):
    """Stage 1 end to end: 3.2e-2 per 256 images at batch 8 and --grad_accum 2 is 3.2e-2 x 16 / 256 = 2e-3,
    recorded in args.json; the lr logged after step s (the optimiser's, which step s + 1 applies) is 2e-3 times
    the schedule's factor: 40 images of batch 8 make 5 steps an epoch, --warmup_epochs 0.4 two of the 6."""
    byol_pretrain.main(byol_pretrain.get_args_parser().parse_args(
        TINY + ["--output_dir", str(tmp_path), "--max_steps", "6", "--warmup_epochs", "0.4", "--grad_accum", "2",
                "--probe_pairs", "0"]))
    assert json.loads((tmp_path / "args.json").read_text())["effective_lr"] == pytest.approx(2e-3)
    logged = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    # after steps 1-6: warm-up 2/2, then 0.5 (1 + cos(pi t / 4)) at t = 0, 1, 2, 3, 4
    c = 0.5 * 2 ** -0.5
    assert logged == pytest.approx([2e-3 * f for f in (1.0, 1.0, 0.5 + c, 0.5, 0.5 - c, 0.0)], abs=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adam"])
def test_stage1_gives_every_optimizer_group_the_run_s_rate(optimizer):
    """Adam was used unscaled before the rule: every optimiser, every group (LARS has two), at the lr it is given."""
    args = byol_pretrain.get_args_parser().parse_args(SMALL + ["--optimizer", optimizer])
    _, _, opt = byol_pretrain.build(args, 0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.05] * len(opt.param_groups)


def test_stage2_gives_its_optimizer_the_run_s_rate():
    args = dense_distill.get_args_parser().parse_args(["--init_from", "unused", "--crop_size", "32",
                                                       "--fpn_width", "16", "--feature_dim", "8"])
    _, opt = dense_distill.build(args, ResNetEncoder("resnet18", input_size=32), 0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.05] * len(opt.param_groups)


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
