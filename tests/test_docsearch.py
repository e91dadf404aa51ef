"""Docstring search: pairs come from held-out modules, and the score ranks as it says."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from distilkit.demo import _DOC_MODULES, write_demo_corpus
from distilkit.docsearch import (
    DEV_MODULES,
    TEST_MODULES,
    DocPair,
    docstring_pairs,
    search_scores,
)
from distilkit.errors import DistilkitError


def test_splits_are_disjoint_from_each_other_and_from_the_demo_corpus_modules():
    assert not set(DEV_MODULES) & set(TEST_MODULES)
    assert not (set(DEV_MODULES) | set(TEST_MODULES)) & set(_DOC_MODULES)
    # The dev split also leaves out whole packages of the training modules.
    for name in DEV_MODULES:
        assert name.split(".")[0] not in _DOC_MODULES, name


@pytest.mark.parametrize("split", ["dev", "test"])
def test_docstring_pairs_are_many_unique_held_out_and_deterministic(split, tmp_path):
    pairs = docstring_pairs(split)
    assert len(pairs) > {"dev": 400, "test": 200}[split]
    assert pairs == docstring_pairs(split)
    assert len({p.answer for p in pairs}) == len(pairs)
    assert all(len(p.query.split()) >= 4 and len(p.answer.split()) >= 12 for p in pairs)
    assert not any(p.answer.lstrip().startswith(">>>") for p in pairs)
    # Against the demo's real training corpus only a few pairs share text (pdb's help is also in
    # pydoc's topics, say); those few are dropped, the rest is kept as it was.
    write_demo_corpus(tmp_path / "c.txt")
    kept = docstring_pairs(split, (tmp_path / "c.txt").read_text())
    assert 0.95 * len(pairs) <= len(kept) <= len(pairs)
    assert all(p in pairs for p in kept)
    # Every summary has one right answer: none is shared within a split.
    assert len({" ".join(p.query.lower().split()) for p in pairs}) == len(pairs)
    if split == "test":  # nothing met on dev comes back in test
        dev = docstring_pairs("dev")
        dev_text = "\n".join(f"{p.query}\n{p.answer}" for p in dev)
        assert docstring_pairs("test", dev_text) == pairs


@pytest.fixture
def toy_module():
    class Base:
        def run(self):
            """Run the base task in the foreground.

            This base text belongs to the parent class and is inherited by every subclass
            that does not write its own.
            """

    class Child(Base):
        """A child class that documents itself well.

        It says here what it is for, in enough words to make a body of twelve words or more.
        """

        def run(self):  # no docstring: inspect.getdoc would hand it Base.run's
            pass

        def stop(self):
            """Stop the task that the child started earlier.

            Stopping twice is allowed and does nothing the second time it is called by a user.
            """

    # The base class lives in another module (the training corpus, say); only Child is here.
    mod = types.ModuleType("distilkit_toy_docs")
    Child.__module__ = Child.run.__module__ = Child.stop.__module__ = mod.__name__
    mod.Child = Child
    Child.__qualname__, Child.run.__qualname__, Child.stop.__qualname__ = (
        "Child",
        "Child.run",
        "Child.stop",
    )
    Base.__qualname__, Base.run.__qualname__ = "Base", "Base.run"
    sys.modules[mod.__name__] = mod
    yield mod.__name__
    del sys.modules[mod.__name__]


def test_only_own_docstrings_count_and_shared_text_is_dropped(toy_module):
    import inspect

    child = sys.modules[toy_module].Child
    assert "inherited" in inspect.getdoc(child.run)  # what a getdoc-based reader would take
    got = {p.source for p in docstring_pairs((toy_module,))}
    assert got == {f"{toy_module}.{n}" for n in ("Child", "Child.stop")}
    # A corpus that holds one body's 8-word run (any case and spacing) drops exactly that pair.
    corpus = "Other text.\nIt says HERE what it is for,   in enough words to make it."
    got = {p.source for p in docstring_pairs((toy_module,), corpus)}
    assert got == {f"{toy_module}.Child.stop"}
    # Seven words in common are not enough to call it the same text.
    got = {p.source for p in docstring_pairs((toy_module,), "it says here what it is for")}
    assert len(got) == 2


def test_an_unknown_split_is_refused():
    with pytest.raises(DistilkitError, match="unknown doc-search split 'train'"):
        docstring_pairs("train")


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
