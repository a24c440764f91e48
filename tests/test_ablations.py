"""The ablation study's objectives (issue 12): MoCo's InfoNCE and queue in stage 1, ContrastLandmark's dense loss
in stage 2."""
import math

import pytest
import torch
import torch.nn.functional as F

from safetensors.torch import load_file

import byol_pretrain
from common.features import load_model
from common.losses import cl_loss, info_nce
from common.models import DenseExtractor, ResNetEncoder
from common.optim import ema_update


def test_info_nce_against_a_loop_reference():
    torch.manual_seed(0)
    q, k, queue, t = torch.randn(5, 8), torch.randn(5, 8), torch.randn(11, 8), 0.2
    expected = 0.0
    for b in range(5):
        pos = F.cosine_similarity(q[b], k[b], dim=0) / t
        negs = torch.stack([F.cosine_similarity(q[b], n, dim=0) for n in queue]) / t
        expected += -(pos - torch.logsumexp(torch.cat([pos[None], negs]), 0)) / 5
    assert info_nce(q, k, queue, t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_info_nce_known_answers():
    """Negatives equal to the positive: every logit ties, loss log(K + 1) whatever t; orthogonal negatives and
    a positive equal to the query: exp(1/t) against K, near 0 for small t."""
    k = F.normalize(torch.randn(3, 4), dim=1)
    ties = torch.stack([info_nce(k[b:b + 1], k[b:b + 1], k[b:b + 1].expand(7, -1), 0.3) for b in range(3)])
    assert torch.allclose(ties, torch.full((3,), math.log(8)), atol=1e-6)
    q = torch.eye(4)[:1]
    got = info_nce(q * 3, q, torch.eye(4)[1:], 0.1).item()
    assert got == pytest.approx(math.log(1 + 3 * math.exp(-10)), abs=1e-6) and got > 0


def test_queue_is_first_in_first_out_and_wraps():
    queue = byol_pretrain.KeyQueue(5, 2)
    first = torch.tensor([[1.0, 0], [0, 1]])
    queue.push(first * 3)                                     # stored normalised
    assert torch.equal(queue.keys[:2], first) and queue.ptr.item() == 2
    old = queue.keys[2:].clone()
    nxt = F.normalize(torch.randn(4, 2), dim=1)
    queue.push(nxt)                                           # fills 2, 3, 4 and wraps to 0
    assert torch.allclose(queue.keys[2:], nxt[:3]) and torch.allclose(queue.keys[0], nxt[3])
    assert torch.equal(queue.keys[1], first[1]) and queue.ptr.item() == 1 and not torch.allclose(old, nxt[:3])
    many = F.normalize(torch.randn(12, 2), dim=1)            # more than fit: only the newest 5 stay
    queue.push(many)
    assert torch.allclose(queue.keys[[1, 2, 3, 4, 0]], many[-5:], atol=1e-6) and queue.ptr.item() == 1


def test_moco_step_queues_the_key_encoders_projections_and_the_key_encoder_is_an_ema():
    torch.manual_seed(0)
    model = byol_pretrain.BYOL(ResNetEncoder("resnet18", input_size=32), 32, 16, "moco", queue_size=64, moco_t=0.2)
    target = model.make_target()
    assert not hasattr(target, "queue") and not hasattr(model, "predictor") and hasattr(target, "projector")
    v1, v2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    queue0 = model.queue.keys.clone()
    with torch.no_grad():
        k1, k2 = target.embed(v1)[0], target.embed(v2)[0]
        z1, z2 = model.embed(v1)[0], model.embed(v2)[0]
    loss = model(v1, v2, target)
    expected = info_nce(z1, k2, queue0, 0.2) + info_nce(z2, k1, queue0, 0.2)   # negatives: the queue before the push
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(model.queue.keys[:8], F.normalize(torch.cat([k1, k2]), dim=1), atol=1e-5)
    assert torch.equal(model.queue.keys[8:], queue0[8:]) and model.queue.ptr.item() == 8
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    before = [p.clone() for p in target.parameters()]
    t, o = byol_pretrain.ema_pairs(model, target)
    args = byol_pretrain.get_args_parser().parse_args(["--objective", "moco"])
    m = byol_pretrain.target_momentum(args, 3, 10)
    assert m == 0.999                                          # MoCo's constant momentum, not BYOL's schedule
    ema_update(t, o, m)
    for b, new, online in zip(before, t, o):
        assert torch.allclose(new, m * b + (1 - m) * online, atol=1e-6)
    assert any(not torch.equal(b, online) for b, online in zip(before, o))


def test_cl_loss_against_a_loop_reference():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 3, 4)                                     # [B, C, h, w]
    stride, tau = 4.0, 0.3
    expected = 0.0
    for b in range(2):
        cells = [(y, x) for y in range(3) for x in range(4)]
        for (yu, xu) in cells:
            sims = torch.stack([F.cosine_similarity(f[b, :, yu, xu], f[b, :, yv, xv], dim=0) for yv, xv in cells])
            p = torch.softmax(sims / tau, 0)
            d = torch.tensor([math.hypot(xu - xv, yu - yv) * stride for yv, xv in cells]) ** 0.5
            expected += (p * d).sum() / (2 * len(cells))
    assert cl_loss(f, stride, tau).item() == pytest.approx(expected.item(), rel=1e-5)


def test_cl_loss_known_answers():
    """Positions with orthogonal features match only themselves (loss near 0 for a small tau); identical
    features match everywhere alike (the mean distance^0.5 over all pairs)."""
    onehot = torch.eye(12).reshape(1, 12, 3, 4)
    assert cl_loss(onehot, 4.0, 0.01).item() < 1e-6
    pos = torch.tensor([[x * 4.0, y * 4.0] for y in range(3) for x in range(4)])
    mean_dist = torch.cdist(pos, pos).pow(0.5).mean().item()
    assert cl_loss(torch.ones(2, 3, 3, 4), 4.0, 0.1).item() == pytest.approx(mean_dist, rel=1e-5)


def test_spatial_softmax_features_are_heatmaps_and_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    net = DenseExtractor("resnet18", feature_dim=8, fpn_width=16, spatial_softmax=7.0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
        raw = net.decoder(net.encoder.layers(x))
    assert torch.allclose(y.sum((2, 3)), torch.ones(2, 8), atol=1e-5) and (y >= 0).all()
    assert torch.allclose(y, torch.softmax((7 * raw).flatten(2), -1).view_as(raw), atol=1e-6)
    net.save_pretrained(tmp_path / "m")
    again = DenseExtractor.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert again.spatial_softmax == 7.0 and torch.allclose(again(x), y, atol=1e-6)


def test_cl_objective_trains_the_decoder_on_its_loss(cache_dir, tmp_path, teacher):
    from test_dense_distill import losses_of, run
    result = run(teacher, tmp_path / "cl", "--max_steps", "2", "--probe_pairs", "4", "--objective", "cl")
    assert "cl-16" in result["probe"] and load_model(str(tmp_path / "cl" / "final")).name == "cl-16"
    student = DenseExtractor.from_pretrained(tmp_path / "cl" / "final")
    weights = load_file(tmp_path / "cl" / "final" / "model.safetensors")
    assert student.spatial_softmax == 7.0 and not any(k.startswith("head") for k in weights)
    losses = losses_of(tmp_path / "cl")
    assert len(losses) == 2 and all(0 < v < (2 * 32 ** 2) ** 0.25 for v in losses)   # below the farthest pair's


def test_linear_decoder_is_a_1x1_convolution_of_the_hypercolumn_and_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    net = DenseExtractor("resnet18", feature_dim=8, decoder="linear").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y, h = net(x), net.encoder.hypercolumn(x)                             # [2, 960, 8, 8]
    expected = torch.einsum("oc,bchw->bohw", net.decoder.weight[:, :, 0, 0], h) + net.decoder.bias[:, None, None]
    assert y.shape == (2, 8, 8, 8) and torch.allclose(y, expected, atol=1e-5)
    assert sum(p.numel() for p in net.decoder.parameters()) == 960 * 8 + 8
    net.save_pretrained(tmp_path / "m")
    again = DenseExtractor.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert again.decoder_kind == "linear" and torch.allclose(again(x), y, atol=1e-6)
    with pytest.raises(ValueError, match="decoder must be fpn or linear, not 'mlp'"):
        DenseExtractor("resnet18", decoder="mlp")


def test_cl_trains_contrastlandmarks_linear_projector(cache_dir, tmp_path, teacher):
    from test_dense_distill import losses_of, run
    run(teacher, tmp_path / "cl", "--max_steps", "2", "--probe_pairs", "0", "--objective", "cl", "--decoder", "linear")
    weights = load_file(tmp_path / "cl" / "final" / "model.safetensors")
    assert set(k for k in weights if not k.startswith("encoder.")) == {"decoder.weight", "decoder.bias"}
    torch.manual_seed(0)                                                        # the script's draw before training
    assert not torch.equal(weights["decoder.weight"], DenseExtractor("resnet18", 16, decoder="linear").decoder.weight)
    assert len(losses_of(tmp_path / "cl")) == 2


@pytest.mark.slow
def test_the_quick_study_runs_every_kind_of_cell_and_reports_them(cache_dir, tmp_path, monkeypatch):
    """experiments/ablations.py --scale quick: every training and evaluation cell, tiny; the report's figures are
    the runs' own, published with its pictures; run again, every finished run is kept."""
    import json
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "experiments"))
    import ablations
    monkeypatch.setattr(ablations, "RESULTS", tmp_path / "results")
    args = ablations.get_args_parser().parse_args(["--scale", "quick", "--output_dir", str(tmp_path / "a"),
                                                   "--publish"])
    text = ablations.main(args).read_text()
    assert (tmp_path / "results" / "ABLATIONS.md").read_text() == text
    pictures = {p.name for p in (tmp_path / "results").glob("*.png")}
    assert {"fewshot.png", "scale.png"} <= pictures and any(p.startswith("parts_") for p in pictures)
    for title in ("## Table 1", "## Table 3", "## Table 4", "## Table 5", "## Table 6", "## Fig. 9", "## Fig. 5-6"):
        assert title in text
    claims = [line for line in text.split("## Table 1")[0].split("Caveats")[0].splitlines() if line.startswith("- ")]
    assert len(claims) >= 6 and all("**holds**" in c or "**does not hold**" in c for c in claims)
    matched = {m["model"]: m for m in json.loads((tmp_path / "a" / "match" / "matching.json").read_text())["models"]}
    lead = matched[str(tmp_path / "a" / "s2-byol-lead64" / "final")]
    assert f"| LEAD | 64 | {lead['same_iod']:.1f} | {lead['diff_iod']:.1f} | 0.51 | 2.60 |" in text
    reg = {r["features_from"]: r for r in json.loads((tmp_path / "a" / "regress" / "results.json").read_text())[
        "summary"]}
    cl = reg[str(tmp_path / "a" / "s2-moco-cl64" / "final")]["mean"]
    assert f"| MoCo (CL) | CL | {cl:.2f} (7.86) |" in text
    floor = reg[str(tmp_path / "a" / "s2-moco-cl64" / "final")]["mean_shape"]
    assert f"| mean shape (no features) | | {floor:.2f} | |" in text
    for table in [t for t in text.split("\n\n") if t.startswith("| ")]:          # every row as wide as its header
        rows = table.splitlines()
        assert all(row.count("|") == rows[0].count("|") for row in rows), table
    times = json.loads((tmp_path / "a" / "times.json").read_text())
    assert {"s1-byol", "s1-moco", "s2-byol-cl64", "match", "regress", "fewshot", "scale_unseen", "parts"} <= set(times)
    ablations.main(args)                                      # nothing left to do: every run kept, same times
    assert json.loads((tmp_path / "a" / "times.json").read_text()) == times


def test_an_interrupted_run_is_continued_or_replaced_as_its_script_allows(tmp_path):
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "experiments"))
    import ablations
    import match
    import regress
    out = tmp_path / "run"
    assert ablations.folder_state(regress, out, "results.json") == []                  # nothing there: a fresh run
    (out / "runs").mkdir(parents=True)
    (out / "args.json").write_text("{}")
    assert ablations.folder_state(regress, out, "results.json") == ["--overwrite"]     # started, nothing finished
    assert ablations.folder_state(match, out, "matching.json") == []                   # match.py just writes again
    (out / "runs" / "0-1-0.json").write_text("{}")
    assert ablations.folder_state(regress, out, "results.json") == ["--resume"]        # finished runs are kept
    (out / "results.json").write_text("{}")
    assert ablations.folder_state(regress, out, "results.json") is None                # done: skipped


def test_publishing_keeps_the_hand_written_reading_and_flags_it_when_the_claims_change(tmp_path):
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "experiments"))
    from ablation_report import STALE, publish

    def report(claim):
        (tmp_path / "ABLATIONS.md").write_text(f"# Ablations\n\n## Claims\n\n- {claim}\n\n## Table 1\n\n| a |\n")
        return tmp_path / "ABLATIONS.md"

    results = tmp_path / "results"
    first = publish(report("LEAD wins: **holds**"), results).read_text()
    assert first == (tmp_path / "ABLATIONS.md").read_text() and "## Reading" not in first     # nothing to keep
    reading = "## Reading\n\nLEAD wins because of X.\n\n"
    first = first.replace("## Table 1", reading + "## Table 1")
    (results / "ABLATIONS.md").write_text(first)
    again = publish(report("LEAD wins: **holds**"), results).read_text()
    assert again == first                                     # same claims: the reading is kept as it was
    changed = publish(report("LEAD wins: **does not hold**"), results).read_text()
    assert changed.index("- LEAD wins: **does not hold**") < changed.index("## Reading") < changed.index("## Table 1")
    assert f"## Reading\n\n{STALE}\n\nLEAD wins because of X." in changed
    assert changed.count(STALE) == 1 and publish(report("other"), results).read_text().count(STALE) == 1
    (results / "ABLATIONS.md").write_text(first.replace(reading + "## Table 1", "## Table 1") + "\n" + reading.strip())
    last = publish(report("LEAD wins: **holds**"), results).read_text()      # a Reading last, no final newline
    assert "## Reading\n\nLEAD wins because of X.\n\n## Table 1\n" in last


def test_caveats_name_the_models_no_better_than_their_floors(tmp_path):
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "experiments"))
    from ablation_report import caveats, path_of

    def matched(same, diff):
        return {"same_iod": same, "same_floor_iod": 40.0, "diff_iod": diff}
    r = {"match": {path_of(tmp_path, "s2-moco-cl64"): matched(39.5, 53.0), path_of(tmp_path, "s2-byol-lead64"):
                   matched(20.0, 60.0), path_of(tmp_path, "s1-byol"): matched(15.0, 70.0), "random-resnet18":
                   matched(18.0, 75.0)},
         "regress": {path_of(tmp_path, "s2-moco-cl64"): {"mean": 30.0, "mean_shape": 38.0},
                     path_of(tmp_path, "s2-byol-lead64"): {"mean": 37.5, "mean_shape": 38.0}}}
    found = caveats(tmp_path, r)
    assert found == ["- CL-64 matches the same identity no better than leaving the points in place (39.5 vs. 40.0).",
                     "- LEAD-64's aligned regression is at the mean shape's (37.50 vs. 38.00): its features carry no "
                     "landmark information a regressor finds."]
    r["match"][path_of(tmp_path, "s1-byol")]["diff_iod"] = 80.0              # worse than untrained across identities
    assert caveats(tmp_path, r)[-1].startswith("- Stage 1 (BYOL) matches across identities worse than an untrained")
