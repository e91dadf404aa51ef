from __future__ import annotations

import torch
import torch.nn.functional as F

from distilkit.losses import hidden_cosine, mlm_cross_entropy, soft_target_kl


def _logits(seed: int, n: int = 7, v: int = 11) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_matches_torch_kl_div_with_t_squared():
    s, t = _logits(0), _logits(1)
    for temp in (1.0, 2.0, 4.0):
        ref = (
            F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean")
            * temp**2
        )
        torch.testing.assert_close(soft_target_kl(s, t, temp), ref)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    s = _logits(0)
    assert soft_target_kl(s, s.clone(), 2.0).abs() < 1e-6
    assert soft_target_kl(s, _logits(1), 2.0) > 0.1


def test_t_squared_scaling_keeps_gradient_scale_comparable():
    # At high T the gradient of KL(T) shrinks like 1/T^2; the T^2 factor undoes it, so doubling T
    # leaves the gradient norm about unchanged (without the factor it would drop 4x).
    s = _logits(0).requires_grad_()
    t = _logits(1)
    grads = []
    for temp in (8.0, 16.0):
        (g,) = torch.autograd.grad(soft_target_kl(s, t, temp), s)
        grads.append(g.norm())
    ratio = grads[0] / grads[1]
    assert 0.85 < ratio < 1.2


def test_normalizer_sums_then_divides():
    s, t = _logits(0), _logits(1)
    a = soft_target_kl(s[:3], t[:3], 2.0, normalizer=7)
    b = soft_target_kl(s[3:], t[3:], 2.0, normalizer=7)
    torch.testing.assert_close(a + b, soft_target_kl(s, t, 2.0))


def test_mlm_cross_entropy_matches_torch():
    s = _logits(2)
    labels = torch.tensor([0, 3, 5, 1, 10, 2, 2])
    torch.testing.assert_close(mlm_cross_entropy(s, labels), F.cross_entropy(s, labels))
    torch.testing.assert_close(
        mlm_cross_entropy(s, labels, normalizer=14), F.cross_entropy(s, labels) / 2
    )


def test_hidden_cosine():
    h = torch.randn(5, 8)
    assert hidden_cosine(h, 3 * h).abs() < 1e-6  # scale-invariant, zero for parallel vectors
    torch.testing.assert_close(hidden_cosine(h, -h), torch.tensor(2.0))
    ref = F.cosine_embedding_loss(h, h.flip(0), torch.ones(5))
    torch.testing.assert_close(hidden_cosine(h, h.flip(0)), ref)


def test_kl_gradient_matches_autograd_of_the_plain_formula():
    s, t = _logits(0).requires_grad_(), _logits(1)
    for temp in (1.0, 2.0):
        plain_s = s.detach().clone().requires_grad_()
        t_logp = F.log_softmax(t / temp, -1)
        plain = (t_logp.exp() * (t_logp - F.log_softmax(plain_s / temp, -1))).sum() * temp**2 / 5
        (g_plain,) = torch.autograd.grad(plain, plain_s)
        (g,) = torch.autograd.grad(soft_target_kl(s, t, temp, normalizer=5), s)
        torch.testing.assert_close(g, g_plain)
    sb = _logits(0).bfloat16().requires_grad_()
    soft_target_kl(sb, _logits(1).bfloat16(), 2.0).backward()
    assert sb.grad.dtype == torch.bfloat16


def test_embedding_cosine_matches_the_plain_formula():
    from distilkit.losses import embedding_cosine

    torch.manual_seed(0)
    s, t = torch.randn(7, 16), torch.randn(7, 16)
    plain = torch.stack([1 - torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(s, t)]).mean()
    assert torch.allclose(embedding_cosine(s, t), plain, atol=1e-6)
    assert torch.allclose(embedding_cosine(s, t, normalizer=14.0), plain / 2, atol=1e-6)
    assert float(embedding_cosine(s, 3 * s)) < 1e-6


def test_similarity_kl_matches_the_plain_formula():
    from distilkit.losses import similarity_kl

    torch.manual_seed(2)
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    temp = 0.1

    def cos(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm()))

    total = 0.0
    for i in range(5):
        others = [j for j in range(5) if j != i]
        p = torch.softmax(torch.tensor([cos(t[i], t[j]) / temp for j in others]), 0)
        q = torch.softmax(torch.tensor([cos(s[i], s[j]) / temp for j in others]), 0)
        total += float((p * (p / q).log()).sum())
    assert abs(float(similarity_kl(s, t, temp)) - total / 5) < 1e-5
    # Zero for the same geometry (scale and a shared rotation do not matter), > 0 otherwise.
    q_rot, _ = torch.linalg.qr(torch.randn(8, 8))
    assert float(similarity_kl(s @ q_rot * 3.0, s, temp)) < 1e-6
    assert float(similarity_kl(s, t, temp)) > 0.01
    # The normalizer replaces the row count (accumulation windows divide by their total).
    assert torch.allclose(similarity_kl(s, t, temp, normalizer=10.0) * 2, similarity_kl(s, t, temp))


def test_similarity_mse_matches_the_plain_formula():
    from distilkit.losses import similarity_mse

    torch.manual_seed(1)
    s, t = torch.randn(5, 8), torch.randn(5, 8)

    def cos(a, b):
        return torch.dot(a, b) / (a.norm() * b.norm())

    plain = sum((cos(s[i], s[j]) - cos(t[i], t[j])) ** 2 for i in range(5) for j in range(5)) / 25
    assert torch.allclose(similarity_mse(s, t), plain, atol=1e-6)
    # Invariant to the scale of each embedding and to a rotation shared by all of them.
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    assert float(similarity_mse(s @ q * 2.0, s)) < 1e-10
