"""Part discovery (experiments/parts.py): NMF parts, the consistency and retrieval measures, the script."""
import json
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import parts  # noqa: E402


def test_nmf_parts_are_non_negative_reconstruct_and_find_the_generating_parts():
    """Features made of 3 non-negative parts, each position mostly one of them: NMF with k = 3 reconstructs them
    within 5 % and labels every position with its dominant part (up to a permutation)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.rand(3, 20, generator=g) ** 3                     # three distinct non-negative 'parts'
    truth = torch.randint(0, 3, (4, 6, 6), generator=g)
    codes = torch.nn.functional.one_hot(truth, 3).float() * (1 + torch.rand(4, 6, 6, 1, generator=g))
    codes = codes + 0.05 * torch.rand(4, 6, 6, 3, generator=g)
    feats = torch.einsum("nhwk,kc->nchw", codes, basis)
    labels, info = parts.discover(feats, 3, "nmf", fit_rows=10_000, seed=0)
    assert info["nmf_relative_error"] < 0.05
    mapping = {t: torch.bincount(labels[truth == t]).argmax().item() for t in range(3)}
    assert sorted(mapping.values()) == [0, 1, 2]
    assert (labels == torch.tensor([mapping[t] for t in range(3)])[truth]).float().mean() > 0.99
    with pytest.raises(Exception, match="non-negative"):
        parts.discover(feats - 1, 3, "nmf", fit_rows=100, seed=0)


def test_consistency_and_retrieval_against_hand_counts():
    labels = torch.zeros(4, 4, 4, dtype=torch.long)
    labels[:, :, 2:] = 1                                            # right half: part 1
    labels[3] = 2                                                   # the last image: all part 2
    landmarks = torch.tensor([[[4.0, 8.0], [12.0, 8.0]]]).repeat(4, 1, 1)   # 16 px images: left, right half
    assert parts.part_consistency(labels, landmarks, 16) == [0.75, 0.75]
    # landmark features that name their landmark: every neighbour from another face agrees
    onehot = torch.eye(2).expand(4, 2, 2)
    assert parts.retrieval_accuracy(onehot, np.array([0, 0, 1, 1])) == 1.0
    # one face whose two landmarks look swapped: its own 2 retrievals, and the others' neighbours in it
    swapped = onehot.clone()
    swapped[0] = torch.eye(2).flip(0)
    acc = parts.retrieval_accuracy(swapped + 0.01 * torch.arange(4)[:, None, None], np.array([0, 1, 2, 3]))
    assert acc < 1.0 and acc >= 0.75


def test_landmark_features_sample_at_the_landmark():
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, 0, 1, 2] = 1                                           # cell (x 2, y 1) of a 16 px image
    feats[0, 1] = 1
    lm = torch.tensor([[[2 * 4 + 1.5, 1 * 4 + 1.5], [0.0, 15.0]]])    # that cell's centre; a corner
    out = parts.landmark_features(feats, lm, 16)
    assert torch.allclose(out[0, 0], torch.nn.functional.normalize(torch.tensor([1.0, 1.0]), dim=0), atol=1e-6)
    assert torch.allclose(out[0, 1], torch.tensor([0.0, 1.0]), atol=1e-6)


def test_the_script_writes_its_figures(cache_dir, tmp_path):
    args = parts.get_args_parser().parse_args(
        ["--model", "random-resnet18", "--images", "12", "--size", "32", "--k", "4", "--show", "3",
         "--image_size", "32", "--num_images", "40", "--data_workers", "1", "--output_dir", str(tmp_path / "p")])
    result = parts.main(args)["random-resnet18"]
    saved = json.loads((tmp_path / "p" / "parts.json").read_text())["results"]["random-resnet18"]
    assert saved == result
    assert 0 <= result["nmf"]["consistency"] <= 1 and 0 <= result["kmeans"]["consistency"] <= 1
    assert len(result["nmf"]["per_landmark"]) == 5 and 0 <= result["retrieval_accuracy"] <= 1
    for name in ("parts_random-resnet18_nmf.png", "parts_random-resnet18_kmeans.png", "tsne_random-resnet18.png"):
        assert (tmp_path / "p" / name).stat().st_size > 1000
    with pytest.raises(Exception, match="not empty"):
        parts.main(args)
