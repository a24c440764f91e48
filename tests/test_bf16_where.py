"""experiments/bf16_where.py: its divergence and arg-max figures against torch.distributions, and its fp32 and
bf16 similarity softmaxes against a direct cosine computation."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import bf16_where  # noqa: E402


def test_compare_agrees_with_torch_distributions():
    g = torch.Generator().manual_seed(0)
    ref, other = (F.softmax(3 * torch.randn(2, 5, 7, generator=g), -1) for _ in range(2))
    got = bf16_where.compare(ref, other)
    assert got["kl"] == pytest.approx(kl_divergence(Categorical(probs=ref), Categorical(probs=other)).mean().item(),
                                      rel=1e-5)
    assert got["entropy"] == pytest.approx(Categorical(probs=ref).entropy().mean().item(), rel=1e-5)
    same = [i == j for i, j in zip(ref.argmax(-1).flatten().tolist(), other.argmax(-1).flatten().tolist())]
    assert got["argmax_changed"] == pytest.approx(1 - sum(same) / len(same))
    assert bf16_where.compare(ref, ref)["kl"] == pytest.approx(0, abs=1e-7)


def test_softmax_rows_of_cosines_in_both_precisions():
    g = torch.Generator().manual_seed(1)
    one, two = torch.randn(2, 2, 16, 3, 4, generator=g)                # [B, C, h, w]: 12 rows each
    a, b = bf16_where.rows(one), bf16_where.rows(two)
    assert a.shape == (2, 12, 16)
    cos = F.cosine_similarity(one.flatten(2)[:, :, :, None], two.flatten(2)[:, :, None, :], dim=1)   # [B, N, N]
    want = F.softmax(cos / 0.2, -1)
    assert torch.allclose(bf16_where.softmax_rows(a, b, 0.2), want, atol=1e-6)
    low = bf16_where.softmax_rows(a, b, 0.2, bf16_product=True)
    assert (low - want).abs().max() > 1e-4                         # bf16's rounding shows...
    assert torch.allclose(low, want, atol=0.02)                    # ...but moves no probability far
