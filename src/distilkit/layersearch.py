"""Choose which teacher layers a student keeps, by measurement on held-out text of the corpus.

The default rule (``student.default_layers``: evenly spaced, first and last kept) is the paper's.
Which layers a half-depth copy of a teacher should keep is a property of that teacher, though,
and it matters: for all-MiniLM-L6-v2, the 20 possible 3-layer copies range from 0.14 to 0.45
docstring-search MRR before any training, and the evenly spaced ``[0, 3, 5]`` is second best
(docs/results/embedding-distillation.md).

The search needs no labels. Each candidate is the teacher with only the chosen layers (exactly
the student ``init-student`` would build from them); its score is its **fidelity**: the mean
cosine between its sentence embedding and the teacher's over held-out sentences of the prepared
corpus (the teacher's own pooling for a sentence encoder, mean pooling otherwise). Across the 20
MiniLM candidates fidelity ranks them as docstring search does (Spearman 0.90), so it picks by
the property that distillation then has the least to repair.

Every subset is tried when there are at most ``max_candidates``; beyond that (12 -> 6 layers:
924 subsets) backward elimination drops, one at a time, the layer whose removal keeps fidelity
highest (12 -> 6: 57 evaluations).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distilkit.errors import DistilkitError

log = logging.getLogger(__name__)


@dataclass
class LayerSearchResult:
    layers: list[int]
    """The chosen teacher layers, in order."""
    fidelity: float
    """Mean cosine to the teacher's sentence embeddings of the chosen layers (1 = identical)."""
    default_layers: list[int]
    """What the default rule would have chosen, and its fidelity below, for comparison."""
    default_fidelity: float
    method: str
    """'exhaustive' or 'backward elimination'."""
    n_sentences: int
    scores: dict[str, float] = field(default_factory=dict)
    """Fidelity of every candidate evaluated, keyed '0,4,5'."""


def search_layers(
    teacher: str | Path,
    data: str | Path,
    num_layers: int | None = None,
    max_sentences: int = 512,
    max_candidates: int = 64,
) -> LayerSearchResult:
    """The ``num_layers`` (default: half) teacher layers whose copy keeps the teacher's sentence
    embeddings best on the validation split of ``data`` (a folder from ``distilkit prepare``
    with the teacher's tokenizer; the training split if there is no validation split)."""
    from distilkit.modeling import encoder_of, load_mlm, load_tokenizer, resolve_model
    from distilkit.sentence import sentence_spec
    from distilkit.student import _num_layers, default_layers

    model, _ = load_mlm(teacher)
    encoder = encoder_of(model).eval()
    n = _num_layers(model.config)
    k = num_layers or max(n // 2, 1)
    if not 1 <= k < n:
        raise DistilkitError(f"a student of {k} layers from a {n}-layer teacher: need 1 <= k < {n}")
    ref = resolve_model(teacher)
    spec = sentence_spec(ref) if Path(ref).is_dir() else None
    ids, mask = _held_out_sentences(Path(data), load_tokenizer(teacher), max_sentences)
    vocab = encoder.get_input_embeddings().num_embeddings
    if int(ids.max()) >= vocab:
        raise DistilkitError(
            f"{data} holds token ids up to {int(ids.max())}, beyond the teacher's vocabulary of "
            f"{vocab}: it was prepared with another tokenizer"
        )
    stack, holder, name = _layer_stack(encoder, n)

    def embed(layers: list[int]) -> torch.Tensor:
        setattr(holder, name, nn.ModuleList(stack[i] for i in layers))
        try:
            return _embed(encoder, ids, mask, spec)
        finally:
            setattr(holder, name, stack)

    with torch.inference_mode():
        target = embed(list(range(n)))  # (S, H), the teacher itself
        scores: dict[tuple[int, ...], float] = {}

        def score(layers: tuple[int, ...]) -> float:
            if layers not in scores:
                scores[layers] = float((embed(list(layers)) * target).sum(-1).mean())
            return scores[layers]

        if math.comb(n, k) <= max_candidates:
            method = "exhaustive"
            best = max(itertools.combinations(range(n), k), key=score)
        else:
            method = "backward elimination"
            best = tuple(range(n))
            while len(best) > k:
                candidates = [best[:j] + best[j + 1 :] for j in range(len(best))]
                best = max(candidates, key=score)
        default = tuple(default_layers(n, k))
        default_score = score(default)
    result = LayerSearchResult(
        layers=list(best),
        fidelity=scores[best],
        default_layers=list(default),
        default_fidelity=default_score,
        method=method,
        n_sentences=int(ids.shape[0]),
        scores={",".join(map(str, c)): v for c, v in scores.items() if len(c) == k},
    )
    log.info(
        "layer search (%s, %d candidates, %d held-out sentences): layers %s keep fidelity "
        "%.4f; the default %s keeps %.4f",
        method,
        len(result.scores),
        result.n_sentences,
        result.layers,
        result.fidelity,
        result.default_layers,
        result.default_fidelity,
    )
    return result


def _layer_stack(encoder: nn.Module, n: int) -> tuple[nn.ModuleList, nn.Module, str]:
    """The ``ModuleList`` of the encoder's ``n`` transformer layers, its parent and attribute
    name (``encoder.layer`` in BERT/RoBERTa, ``transformer.layer`` in DistilBERT). Their
    forwards iterate over this list, so swapping it runs the encoder with fewer layers."""
    for parent in encoder.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n and attr in ("layer", "layers"):
                return child, parent, attr
    raise DistilkitError(f"cannot find the layer list of {type(encoder).__name__}")


def _held_out_sentences(
    data: Path, tokenizer, max_sentences: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, L)`` ids and mask of ``[CLS] sentence [SEP]`` rows from the prepared corpus."""
    from distilkit.data import TokenDataset
    from distilkit.sentence import sentence_batch, sentence_ends, split_sentences

    ds = None
    for split in ("validation", "train"):
        try:
            ds = TokenDataset(data, split)
        except DistilkitError:
            continue
        if len(ds):
            break
    if ds is None or not len(ds):
        raise DistilkitError(f"{data} holds no prepared sequences to choose layers on")
    ends = set(sentence_ends(tokenizer))
    sents: list[list[int]] = []
    for i in range(len(ds)):
        row = torch.from_numpy(ds[i])[None]  # (1, L)
        sents += split_sentences(row, [row.shape[1]], ends, 6, 64)
        if len(sents) >= max_sentences:
            break
    if len(sents) < 8:
        raise DistilkitError(
            f"too few held-out sentences in {data} to choose layers ({len(sents)})"
        )
    sp = ds.special_ids
    # Sorted by length, so that ``_embed``'s chunks of 64 rows carry little padding (about half
    # the tokens of one batch padded to the longest sentence).
    return sentence_batch(sorted(sents[:max_sentences], key=len), sp["cls"], sp["sep"], sp["pad"])


def _embed(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, spec) -> torch.Tensor:
    """``(S, H)`` unit-length sentence embeddings, 64 rows at a time."""
    from distilkit.sentence import SentenceSpec, pool_embeddings

    spec = spec or SentenceSpec("mean", True, None, "")
    out = []
    for start in range(0, ids.shape[0], 64):
        m = mask[start : start + 64]
        width = int(m.sum(1).max())  # the chunk's longest row: the rest is padding
        m = m[:, :width]
        h = encoder(input_ids=ids[start : start + 64, :width], attention_mask=m)[0]  # (b, w, H)
        out.append(F.normalize(pool_embeddings(h, m, spec), dim=-1))
    return torch.cat(out)
