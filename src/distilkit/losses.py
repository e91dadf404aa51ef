"""The triple loss of DistilBERT as pure tensor functions.

Every function takes rows already selected (``(N, V)`` logits or ``(N, H)`` hidden states, one
row per position that the loss uses) and returns ``sum over rows / normalizer``. Passing the
number of rows of the whole accumulation window (all micro-batches, all ranks) as
``normalizer`` makes k micro-batches give exactly the gradient of one batch k times larger;
``normalizer=None`` is the plain mean over the given rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _norm(n_rows: int, normalizer: float | None) -> float:
    return float(normalizer) if normalizer is not None else float(max(n_rows, 1))


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    normalizer: float | None = None,
) -> torch.Tensor:
    """L_ce = T^2 / |S| * sum_i KL(softmax(t_i / T) || softmax(s_i / T)).

    Args:
        student_logits, teacher_logits: ``(N, V)`` logits at the selected positions.
    Computed in float32 whatever the input dtype: bf16 log-softmax over 30K classes is too coarse.
    """
    t = temperature
    kl = _SoftTargetKL.apply(student_logits, teacher_logits.detach(), t)
    return kl * (t * t) / _norm(student_logits.shape[0], normalizer)


class _SoftTargetKL(torch.autograd.Function):
    """``sum_i KL(softmax(t_i / T) || softmax(s_i / T))``; the teacher gets no gradient.

    Its gradient, ``(softmax(s / T) - softmax(t / T)) / T`` per row, is formed in the forward
    pass, in place, and is the one ``(N, V)`` tensor kept for the backward pass; autograd on the
    plain formula keeps two and allocates about twice as many (profile in
    docs/results/throughput.md). Over a 30K vocabulary these tensors are the largest of a step.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature: float):
        s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
        t_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (N, V)
        t_p = t_logp.exp()
        kl = t_logp.sub_(s_logp).mul_(t_p).sum()
        del t_logp
        grad = s_logp.exp_().sub_(t_p).div_(temperature)  # (N, V) d kl / d student_logits
        ctx.save_for_backward(grad)
        ctx.dtype = student_logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        (grad,) = ctx.saved_tensors
        return (grad * grad_kl).to(ctx.dtype), None, None


def mlm_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """L_mlm: cross-entropy of ``(N, V)`` logits against ``(N,)`` original token ids."""
    ce = F.cross_entropy(logits.float(), labels, reduction="sum")
    return ce / _norm(logits.shape[0], normalizer)


def hidden_cosine(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """L_cos = mean over rows of 1 - cos(h_s, h_t), for ``(N, H)`` last hidden states."""
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)  # (N,)
    return (1.0 - cos).sum() / _norm(student_hidden.shape[0], normalizer)


def embedding_cosine(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """L_emb = mean over sentences of 1 - cos(e_s, e_t), for ``(S, H)`` pooled embeddings."""
    cos = F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=-1)  # (S,)
    return (1.0 - cos).sum() / _norm(student_emb.shape[0], normalizer)


def similarity_mse(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, normalizer: float | None = None
) -> torch.Tensor:
    """L_sim = mean over sentence pairs (i, j) of (cos(s_i, s_j) - cos(t_i, t_j))^2.

    ``(S, H)`` embeddings of one micro-batch; the sum runs over its ``S x S`` pairs, so pass the
    window's total of ``S^2`` as ``normalizer``. It matches the geometry that similarity search
    and STS read, which per-sentence agreement only bounds.
    """
    s = F.normalize(student_emb.float(), dim=-1)
    t = F.normalize(teacher_emb.float(), dim=-1)
    diff = s @ s.T - t @ t.T  # (S, S)
    return diff.pow(2).sum() / _norm(diff.numel(), normalizer)


def similarity_kl(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    temperature: float,
    normalizer: float | None = None,
) -> torch.Tensor:
    """L_rank = mean over sentences i of KL(p_t(i, .) || p_s(i, .)), where p(i, j) is the softmax
    over the other sentences j != i of cos(e_i, e_j) / ``temperature``.

    ``(S, H)`` embeddings of one micro-batch, S >= 2; pass the window's total of S as
    ``normalizer``. Each sentence's distribution over its in-batch neighbours is what a search
    ranks, and the temperature (0.05 = the scale 20 of sentence-transformers' ranking losses)
    puts the weight on the nearest ones, which the squared cosine differences of L_sim spread
    evenly over all pairs.
    """
    n = student_emb.shape[0]
    s = F.normalize(student_emb.float(), dim=-1)
    t = F.normalize(teacher_emb.float(), dim=-1)
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)  # (S, S), False on the diagonal
    s_logits = (s @ s.T)[off].view(n, n - 1) / temperature  # (S, S-1)
    t_logits = (t @ t.T)[off].view(n, n - 1) / temperature  # (S, S-1)
    t_logp = F.log_softmax(t_logits, dim=-1)
    kl = (t_logp.exp() * (t_logp - F.log_softmax(s_logits, dim=-1))).sum()
    return kl / _norm(n, normalizer)
