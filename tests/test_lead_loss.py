"""LEAD's loss against Eq. 2-3 written out by hand, chunked and not: value, gradient, minimum, no teacher gradient."""
import pytest
import torch

from common.losses import auto_chunk, lead_loss

B, N, C_F, C_H, TAU = 3, 20, 8, 24, 0.05
CHUNKS = (None, 1, 7, 20, 64)


def features(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    f_i, f_j = (torch.randn(B, N, C_F, generator=g, dtype=dtype) for _ in range(2))
    h_i, h_j = (torch.randn(B, N, C_H, generator=g, dtype=dtype) for _ in range(2))
    return f_i, f_j, h_i, h_j


def softmax_of_cosines(a_i, a_j, tau=TAU):
    """p[b, u, k] = exp(cos(a_i^u, a_j^k) / tau) / sum_m exp(cos(a_i^u, a_j^m) / tau), spelt out."""
    a_i, a_j = a_i / a_i.norm(dim=-1, keepdim=True), a_j / a_j.norm(dim=-1, keepdim=True)
    e = torch.exp(a_i @ a_j.transpose(1, 2) / tau)                              # [B, N, N]
    return e / e.sum(dim=-1, keepdim=True)


def reference(f_i, f_j, h_i, h_j, tau=TAU, teacher_tau=TAU):
    p, q = softmax_of_cosines(h_i.detach(), h_j.detach(), teacher_tau), softmax_of_cosines(f_i, f_j, tau)
    return -(p * torch.log(q)).sum(dim=-1).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_value_matches_the_equations(one_thread, chunk, dtype):
    f_i, f_j, h_i, h_j = features(dtype)
    loss = lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=chunk)
    assert loss.shape == () and loss.dtype == dtype
    torch.testing.assert_close(loss, reference(f_i, f_j, h_i, h_j), rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", (None, 7))
def test_teacher_temperature_sharpens_only_the_target(one_thread, chunk):
    f_i, f_j, h_i, h_j = features()
    loss = lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=chunk, teacher_tau=0.02)
    torch.testing.assert_close(loss, reference(f_i, f_j, h_i, h_j, TAU, 0.02), rtol=0, atol=1e-8)
    assert abs(loss - reference(f_i, f_j, h_i, h_j)) > 1e-3       # not the default's value


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gradient_matches_autograd_through_the_equations(one_thread, chunk):
    got = [t.requires_grad_() for t in features()[:2]]
    want = [t.detach().clone().requires_grad_() for t in got]
    _, _, h_i, h_j = features()
    lead_loss(*got, h_i, h_j, TAU, chunk=chunk).backward()
    reference(*want, h_i, h_j).backward()
    for a, b in zip(got, want):
        assert a.grad.abs().max() > 1e-3                                        # not trivially zero
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-8)


@pytest.mark.parametrize("student", ["same features", "isometric projection"])
def test_minimum_is_the_teachers_entropy(one_thread, student):
    """Cross-entropy >= entropy (Gibbs), with equality iff q = p: students with the teacher's cosines reach
    it, here with f = h or with h = f W for W [C_f, C_h] of orthonormal rows (other width, same cosines)."""
    f_i, f_j, h_i, h_j = features()
    if student == "same features":
        f_i, f_j = h_i, h_j
    else:
        w = torch.linalg.qr(torch.randn(C_H, C_F, dtype=torch.float64)).Q.T    # [C_f, C_h], W W^T = I
        h_i, h_j = f_i @ w, f_j @ w
    p = softmax_of_cosines(h_i, h_j)
    entropy = -(p * torch.log(p)).sum(dim=-1).mean()
    for chunk in (None, 7):
        torch.testing.assert_close(lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=chunk), entropy, rtol=0, atol=1e-8)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        noisy = [f + 0.1 * torch.randn(f.shape, generator=g, dtype=f.dtype) for f in (f_i, f_j)]
        assert lead_loss(*noisy, h_i, h_j, TAU) > entropy + 1e-6


def test_chunks_keep_no_similarity_matrix_for_backward(one_thread):
    """Checkpointed chunks leave only their inputs to autograd; the full path keeps [B, N, N] (p, log q)."""
    def saved_shapes(chunk):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t, lambda t: t):
            lead_loss(*(t.requires_grad_() for t in features()), TAU, chunk=chunk)
        return shapes

    assert (B, N, N) in saved_shapes(None)
    assert all(shape[-1] != N for shape in saved_shapes(7))                    # C_f, C_h != N: no [B, 7, N]


@pytest.mark.parametrize("chunk", [None, 7])
def test_teacher_gets_no_gradient(one_thread, chunk):
    f_i, f_j, h_i, h_j = (t.requires_grad_() for t in features())
    lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=chunk).backward()
    assert h_i.grad is None and h_j.grad is None
    assert f_i.grad is not None and f_j.grad is not None


@pytest.mark.parametrize("chunk", [None, 7])
def test_bf16_teacher_gives_an_fp32_loss_close_to_fp32(one_thread, chunk):
    f_i, f_j, h_i, h_j = features(torch.float32)
    full = lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=chunk)
    half = lead_loss(f_i, f_j, h_i.bfloat16(), h_j.bfloat16(), TAU, chunk=chunk)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-3, atol=0)                   # ~1e-4 here; h stored in bf16


@pytest.mark.parametrize("chunk", [None, 7])
def test_bf16_teacher_similarities_are_computed_in_fp32(one_thread, chunk):
    """A bf16 teacher is read exactly as its values in fp32: only h's storage is rounded, not its cosines (their
    bf16 rounding cost same-face precision at a sharp teacher, experiments/bf16.md). Against the equations in
    float64 on the same rounded h."""
    f_i, f_j, h_i, h_j = features(torch.float32)
    h_i, h_j = h_i.bfloat16(), h_j.bfloat16()
    got = lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=chunk, teacher_tau=0.02)
    want = reference(*(t.double() for t in (f_i, f_j, h_i, h_j)), teacher_tau=0.02)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_autocast_does_not_lower_the_precision(one_thread):
    """Inside the model's forward under bf16 autocast, the loss still computes in fp32."""
    f_i, f_j, h_i, h_j = features(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lead_loss(f_i, f_j, h_i, h_j, TAU, chunk=7)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference(f_i, f_j, h_i, h_j), rtol=0, atol=1e-5)


def test_auto_chunk_fits_the_budget():
    assert auto_chunk(2, 100, budget_bytes=2 * 100 * 100 * 4) is None                # exactly fits
    assert auto_chunk(16, 576) is None and auto_chunk(2, 3136) is None              # the default budget, 1 GiB
    assert auto_chunk(64, 4096) == 1024                                              # 64 * 1024 * 4096 * 4 = 1 GiB
    assert auto_chunk(2, 100, budget_bytes=100) == 1                                 # not even a row: one row
    for batch, n, budget in [(2, 100, 79_999), (3, 1000, 10**6), (64, 3136, 2**30), (5, 77, 12_345)]:
        chunk = auto_chunk(batch, n, budget)
        assert 1 <= chunk < n
        assert batch * chunk * n * 4 <= budget < batch * (chunk + 1) * n * 4
