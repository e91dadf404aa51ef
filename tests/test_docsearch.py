"""Docstring search: pairs come from held-out modules, and the score ranks as it says."""

from __future__ import annotations

import pytest
import torch

from distilkit.demo import _DOC_MODULES
from distilkit.docsearch import EVAL_MODULES, DocPair, docstring_pairs, search_scores
from distilkit.errors import DistilkitError


def test_eval_modules_are_disjoint_from_the_demo_corpus():
    assert not set(EVAL_MODULES) & set(_DOC_MODULES)
    # A parent package of a training module would bring its text in too, and vice versa.
    for name in EVAL_MODULES:
        assert name.split(".")[0] not in _DOC_MODULES, name


def test_docstring_pairs_are_many_unique_and_deterministic():
    pairs = docstring_pairs()
    assert len(pairs) > 300
    assert pairs == docstring_pairs()
    assert len({p.answer for p in pairs}) == len(pairs)
    assert all(len(p.query.split()) >= 4 and len(p.answer.split()) >= 12 for p in pairs)
    assert not any(p.answer.lstrip().startswith(">>>") for p in pairs)


def _pairs(n: int) -> list[DocPair]:
    return [DocPair(f"q{i}", f"a{i}", f"s{i}") for i in range(n)]


def test_search_scores_rank_the_right_answer():
    vecs = {f"q{i}": torch.eye(3)[i] for i in range(3)} | {
        f"a{i}": torch.eye(3)[i] for i in range(3)
    }
    # Query 2 is closer to answer 0 than to its own: rank 1 (second place).
    vecs["q2"] = torch.tensor([1.0, 0.0, 0.5])
    encode = lambda texts: torch.stack([vecs[t] for t in texts])  # noqa: E731
    got = search_scores(encode, _pairs(3))
    assert got["top1"] == pytest.approx(2 / 3)
    assert got["mrr"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert got["n_pairs"] == 3


def test_a_collapsed_or_random_encoder_scores_low():
    # Ties count against the model: a constant encoder ranks every right answer last.
    collapsed = search_scores(lambda t: torch.ones(len(t), 4), _pairs(100))
    assert collapsed["top1"] == 0 and collapsed["mrr"] == pytest.approx(0.01)
    gen = torch.Generator().manual_seed(0)
    encode = lambda texts: torch.randn(len(texts), 16, generator=gen)  # noqa: E731
    assert search_scores(encode, _pairs(200))["mrr"] < 0.1


def test_search_needs_two_pairs():
    with pytest.raises(DistilkitError, match="at least 2"):
        search_scores(lambda t: torch.zeros(len(t), 2), _pairs(1))
