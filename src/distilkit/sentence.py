"""Sentence-embedding teachers: an objective that keeps their *sentence* embeddings.

A sentence encoder (the sentence-transformers layout: ``modules.json`` with a Pooling module,
e.g. all-MiniLM-L6-v2) is judged by its pooled embeddings, not by token predictions. Matching
token states inside packed 128-token paragraphs does not keep those embeddings on short budgets
(measured, docs/results/embedding-distillation.md), so for such a teacher ``distill`` trains the
student on what the teacher is used for:

- the text: every packed sequence is cut at sentence ends into sentences, each fed on its own
  (``[CLS] sentence [SEP]``), the unit a sentence encoder embeds;
- the loss: ``L_emb`` (1 - cosine between the student's and the teacher's pooled embeddings of
  each sentence) plus ``L_sim`` (squared difference of the in-batch cosine-similarity matrices,
  the geometry that similarity search and STS read), and optionally the token-level ``L_cos``.

The student is saved so that ``SentenceTransformer(path)`` loads it with the teacher's pooling
and normalisation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distilkit.errors import DistilkitError
from distilkit.losses import embedding_cosine, hidden_cosine, similarity_kl, similarity_mse

# Rows per forward chunk of the sentence objective: enough to keep the matrix products large,
# few enough that rows of one chunk have similar lengths.
_CHUNK = 32

# Pooling modes distilkit reproduces exactly; others are refused rather than approximated.
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


@dataclass(frozen=True)
class SentenceSpec:
    """How a sentence encoder turns token states into one vector."""

    pooling: str  # "mean" | "cls" | "max"
    normalize: bool
    max_seq_length: int | None
    pooling_dir: str  # folder of the Pooling module inside the model folder


def sentence_spec(path: str | Path) -> SentenceSpec | None:
    """The pooling of a sentence-transformers folder, or None if ``path`` is not one."""
    root = Path(path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pool_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    except (json.JSONDecodeError, KeyError, TypeError, StopIteration, AttributeError) as exc:
        raise DistilkitError(
            f"{modules_file} is not a valid sentence-transformers module list"
        ) from exc
    unsupported = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise DistilkitError(
            f"sentence encoder {root} has modules distilkit cannot reproduce: {', '.join(unsupported)}"
        )
    pool_file = root / pool_dir / "config.json"
    try:
        pool_cfg = json.loads(pool_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DistilkitError(f"cannot read the pooling config {pool_file}: {exc}") from exc
    if not isinstance(pool_cfg, dict):
        raise DistilkitError(f"{pool_file} is not a pooling config (not a JSON object)")
    modes = [mode for key, mode in _POOLING_KEYS.items() if pool_cfg.get(key)]
    others = [
        k
        for k, v in pool_cfg.items()
        if k.startswith("pooling_mode") and v and k not in _POOLING_KEYS
    ]
    if len(modes) != 1 or others:
        raise DistilkitError(f"{pool_file}: only one of mean, cls or max pooling is supported")
    max_len = None
    sbert = root / "sentence_bert_config.json"
    if sbert.is_file():
        try:
            sbert_cfg = json.loads(sbert.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DistilkitError(f"{sbert} is not valid JSON") from exc
        if not isinstance(sbert_cfg, dict):
            raise DistilkitError(f"{sbert} is not a sentence-transformers config (not an object)")
        max_len = sbert_cfg.get("max_seq_length")
        if max_len is not None and (
            isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1
        ):
            raise DistilkitError(f"{sbert}: max_seq_length must be a positive integer")
    return SentenceSpec(modes[0], "Normalize" in types, max_len, pool_dir)


def pool_embeddings(
    hidden: torch.Tensor, attention_mask: torch.Tensor, spec: SentenceSpec
) -> torch.Tensor:
    """``(B, L, H)`` token states and ``(B, L)`` mask -> ``(B, H)`` float32 sentence embeddings,
    as sentence-transformers computes them for ``spec``."""
    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    if spec.pooling == "cls":
        emb = hidden[:, 0]
    elif spec.pooling == "max":
        emb = hidden.masked_fill(mask == 0, -1e9).max(1).values
    else:
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(emb, dim=-1) if spec.normalize else emb


def sentence_ends(tokenizer) -> list[int]:
    """Token ids that end a sentence (``.``, ``!``, ``?``) in this vocabulary."""
    ids = set()
    for mark in (".", "!", "?"):
        for text in (mark, f"a{mark}"):
            enc = tokenizer(text, add_special_tokens=False)["input_ids"]
            if enc:
                ids.add(int(enc[-1]))
    return sorted(ids)


def split_sentences(
    ids: torch.Tensor, lengths: list[int], ends: set[int], min_tokens: int, max_tokens: int
) -> list[list[int]]:
    """Cut each packed sequence (``ids`` (B, L), real length ``lengths[b]``, ``[CLS] ... [SEP]``)
    at sentence ends into runs of at least ``min_tokens`` and at most ``max_tokens`` body tokens.

    A run that reaches ``max_tokens`` without a sentence end is cut there. Deterministic: the
    same batch always gives the same sentences (exact resume).
    """
    return [s for row in split_rows(ids, lengths, ends, min_tokens, max_tokens) for s in row]


def split_rows(
    ids: torch.Tensor, lengths: list[int], ends: set[int], min_tokens: int, max_tokens: int
) -> list[list[list[int]]]:
    """As ``split_sentences``, but the sentences of each packed sequence kept in their own list
    (in order), so that neighbours can be paired."""
    out: list[list[list[int]]] = []
    for row, n in zip(ids.tolist(), lengths):
        sents: list[list[int]] = []
        cur: list[int] = []
        for tok in row[1 : n - 1]:
            cur.append(tok)
            if (tok in ends and len(cur) >= min_tokens) or len(cur) >= max_tokens:
                sents.append(cur)
                cur = []
        if len(cur) >= min_tokens:
            sents.append(cur)
        out.append(sents)
    return out


def neighbour_pairs(rows: list[list[list[int]]], sep_id: int) -> list[list[int]]:
    """Bodies ``a [SEP] b`` of consecutive sentences (a_0 b_0, a_1 b_1 ... of one sequence):
    the layout a cross-encoder reads (``[CLS] a [SEP] b [SEP]`` once wrapped), so a loss on them
    teaches the student how the teacher relates two sentences, which single sentences cannot."""
    return [
        [*sents[i], sep_id, *sents[i + 1]] for sents in rows for i in range(0, len(sents) - 1, 2)
    ]


def sentence_batch(
    sentences: list[list[int]], cls_id: int, sep_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] s [SEP]`` rows padded into ``(S, L)`` ids and ``(S, L)`` attention mask."""
    longest = max(len(s) for s in sentences) + 2
    ids = torch.full((len(sentences), longest), pad_id, dtype=torch.long)
    att = torch.zeros((len(sentences), longest), dtype=torch.long)
    for r, s in enumerate(sentences):
        ids[r, : len(s) + 2] = torch.tensor([cls_id, *s, sep_id])
        att[r, : len(s) + 2] = 1
    return ids, att


@dataclass
class EmbeddingLossConfig:
    """Weights of the sentence-embedding objective (used when the teacher is a sentence encoder)."""

    alpha_emb: float = 1.0
    """L_emb: 1 - cos(student, teacher) of each sentence's pooled embedding."""
    alpha_sim: float = 1.0
    """L_sim: squared difference of the in-batch cosine-similarity matrices."""
    alpha_rank: float = 0.0
    """L_rank: KL between the teacher's and the student's softmax over each sentence's in-batch
    neighbours (cosine / rank_temperature): the ranking that search reads."""
    rank_temperature: float = 0.05
    """Temperature of L_rank's softmax (0.05: sentence-transformers' scale of 20)."""
    alpha_tok: float = 0.0
    """Token-level L_cos on the same sentences (the paper's cosine loss)."""
    alpha_layers: float = 0.0
    """L_layers: 1 - cos, per token, between each student layer's output and the teacher state
    the next copied layer expects (``student.aligned_targets``), on the L_tok inputs. Repairs
    the seams that layer dropping leaves; needs a student made by ``init-student``."""
    spans: str = "sentences"
    """'sentences': cut packed sequences at sentence ends; 'sequences': embed them whole;
    'pairs': sentences for L_emb/L_sim, and L_tok on neighbouring sentence pairs
    ([CLS] a [SEP] b [SEP], the layout GLUE pair tasks fine-tune on); 'mixed': the sentences
    and the whole sequences together, so L_sim also matches how short texts relate to long
    passages (what search reads)."""
    min_tokens: int = 4
    """Shortest sentence kept (body tokens)."""
    max_tokens: int = 64
    """Longest sentence (body tokens); longer runs are cut."""

    def validate(self) -> None:
        for name in ("alpha_emb", "alpha_sim", "alpha_rank", "alpha_tok", "alpha_layers"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise DistilkitError(f"loss.embedding.{name} must be >= 0")
        if not (
            self.alpha_emb
            or self.alpha_sim
            or self.alpha_rank
            or self.alpha_tok
            or self.alpha_layers
        ):
            raise DistilkitError("all loss.embedding weights are 0: nothing to train")
        if not self.rank_temperature > 0:  # also rejects NaN
            raise DistilkitError("loss.embedding.rank_temperature must be > 0")
        if self.spans not in ("sentences", "sequences", "pairs", "mixed"):
            raise DistilkitError(
                "loss.embedding.spans must be 'sentences', 'sequences', 'pairs' or 'mixed'"
            )
        if self.spans == "pairs" and not (self.alpha_tok or self.alpha_layers):
            raise DistilkitError(
                "loss.embedding.spans=pairs trains L_tok or L_layers on sentence pairs: set "
                "alpha_tok or alpha_layers > 0"
            )
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise DistilkitError("loss.embedding needs 1 <= min_tokens <= max_tokens")


class EmbeddingObjective:
    """Student and teacher encoders compared on pooled sentence embeddings (see module doc)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        spec: SentenceSpec,
        cfg: EmbeddingLossConfig,
        special_ids: dict[str, int],
        end_ids: list[int],
        layer_targets: list[int] | None = None,
    ):
        self.student, self.teacher, self.spec, self.cfg = student, teacher, spec, cfg
        w = {
            "emb": cfg.alpha_emb,
            "sim": cfg.alpha_sim,
            "rank": cfg.alpha_rank,
            "tok": cfg.alpha_tok,
            "layers": cfg.alpha_layers,
        }
        if cfg.alpha_layers and not layer_targets:
            raise DistilkitError("loss.embedding.alpha_layers needs the student's layer map")
        self.layer_targets = layer_targets or []
        self.weights = {k: v for k, v in w.items() if v > 0}
        self.part_names = tuple(self.weights)
        self.specials = special_ids
        self.ends = set(end_ids)
        self.find_unused = False

    def train_module(self) -> nn.Module:
        return self.student

    def prepare_batch(self, b: dict) -> dict:
        """Replace a masked token batch by its unmasked sentences (``sent_ids`` (S, L'))."""
        ids = b["original_ids"]  # (B, L) unmasked
        lengths = b["attention_mask"].sum(1).tolist()
        pairs: list[list[int]] = []
        whole = [row[1 : n - 1] for row, n in zip(ids.tolist(), lengths)]
        whole = [r[: self.cfg.max_tokens] for r in whole if len(r) >= self.cfg.min_tokens]
        if self.cfg.spans == "sequences":
            rows = whole
        else:
            per_seq = split_rows(ids, lengths, self.ends, self.cfg.min_tokens, self.cfg.max_tokens)
            rows = [sent for seq in per_seq for sent in seq]
            if self.cfg.spans == "pairs":
                pairs = neighbour_pairs(per_seq, self.specials["sep"])
            if self.cfg.spans == "mixed":  # sentences and the passages they came from
                rows += whole
        if not rows:  # a batch of very short sequences: keep them whole
            rows = [row[1 : max(n - 1, 2)] for row, n in zip(ids.tolist(), lengths)]
        cls, sep, pad = self.specials["cls"], self.specials["sep"], self.specials["pad"]
        rows.sort(key=len)  # for _forward's chunks; stable, so deterministic
        s_ids, s_att = sentence_batch(rows, cls, sep, pad)
        out = {"sent_ids": s_ids, "sent_mask": s_att, "n_sentences": len(rows)}
        if self.cfg.spans == "pairs":
            if not pairs:  # no sequence held two sentences: pair the sentences themselves
                pairs = [[*rows[i], sep, *rows[i + 1]] for i in range(0, len(rows) - 1, 2)]
            if not pairs:
                pairs = rows
            p_ids, p_att = sentence_batch(sorted(pairs, key=len), cls, sep, pad)
            out |= {"pair_ids": p_ids, "pair_mask": p_att, "n_tokens": int(p_att.sum())}
        else:
            out["n_tokens"] = int(s_att.sum())
        return out

    def rows(self, b: dict) -> dict[str, int]:
        n = {
            "emb": b["n_sentences"],
            "sim": b["n_sentences"] ** 2,
            "rank": b["n_sentences"],
            "tok": b["n_tokens"],
            "layers": b["n_tokens"] * len(self.layer_targets),
        }
        return {k: n[k] for k in self.part_names}

    def _forward(
        self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, pick: list[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run ``(S, L)`` rows (sorted by length, as ``prepare_batch`` makes them) in chunks of
        ``_CHUNK`` rows, each cut to its own longest row, so that short sentences are not
        padded to the batch's longest (1.23x faster a step on Wikipedia sentences,
        benchmarks/sentence_chunks.py, docs/results/embedding-distillation.md).

        Returns the pooled embeddings ``(S, H)``, the last states of the real tokens ``(N, H)``
        (rows in order), and for each index in ``pick`` the ``hidden_states`` entry of the real
        tokens ``(N, H)``.
        """
        pooled, last, picked = [], [], [[] for _ in pick or ()]
        lengths = mask.sum(1)
        for start in range(0, ids.shape[0], _CHUNK):
            n = int(lengths[start : start + _CHUNK].max())
            m = mask[start : start + _CHUNK, :n]  # (c, n)
            out = model(
                input_ids=ids[start : start + _CHUNK, :n],
                attention_mask=m,
                output_hidden_states=bool(pick),
            )
            h = out[0]  # (c, n, H)
            real = m.reshape(-1).bool()  # (c * n,)
            pooled.append(pool_embeddings(h, m, self.spec))
            last.append(h.reshape(-1, h.shape[-1])[real])
            for k, j in enumerate(pick or ()):
                picked[k].append(out.hidden_states[j].reshape(-1, h.shape[-1])[real])
        return torch.cat(pooled), torch.cat(last), [torch.cat(x) for x in picked]

    def losses(self, module: nn.Module, b: dict, norms: dict[str, float]) -> dict:
        on_pairs = "pair_ids" in b  # L_tok / L_layers on pairs, else on the sentences
        want_layers = "layers" in self.weights
        # Student hidden_states[i + 1] is layer i's output; the teacher's index is from the map.
        s_pick = [i + 1 for i in range(len(self.layer_targets))] if want_layers else None
        t_pick = self.layer_targets if want_layers else None
        out, s_tok, t_tok = {}, None, None
        if {"emb", "sim", "rank"} & set(self.weights) or not on_pairs:
            ids, mask = b["sent_ids"], b["sent_mask"]
            s = self._forward(module, ids, mask, None if on_pairs else s_pick)
            with torch.no_grad():
                t = self._forward(self.teacher, ids, mask, None if on_pairs else t_pick)
            if "emb" in self.weights:
                out["emb"] = embedding_cosine(s[0], t[0], norms["emb"])
            if "sim" in self.weights:
                out["sim"] = similarity_mse(s[0], t[0], norms["sim"])
            if "rank" in self.weights:
                out["rank"] = similarity_kl(s[0], t[0], self.cfg.rank_temperature, norms["rank"])
            s_tok, t_tok = s, t
        if on_pairs:
            ids, mask = b["pair_ids"], b["pair_mask"]
            s_tok = self._forward(module, ids, mask, s_pick)
            with torch.no_grad():
                t_tok = self._forward(self.teacher, ids, mask, t_pick)
        if "tok" in self.weights:
            out["tok"] = hidden_cosine(s_tok[1], t_tok[1], norms["tok"])
        if want_layers:
            s_all, t_all = torch.cat(s_tok[2]), torch.cat(t_tok[2])  # (k * N, H)
            out["layers"] = hidden_cosine(s_all, t_all, norms["layers"])
        return out

    def evaluate(self, batches: list[dict]) -> dict[str, float]:
        """Held-out agreement of sentence embeddings.

        ``embedding_cosine``: mean cosine between student and teacher embedding of a sentence
        (1 = identical directions). ``neighbour_agreement``: share of held-out sentences whose
        nearest other sentence is the same for student and teacher.
        """
        s_all, t_all = [], []
        for b in batches:
            s_all.append(self._forward(self.student, b["sent_ids"], b["sent_mask"], None)[0])
            t_all.append(self._forward(self.teacher, b["sent_ids"], b["sent_mask"], None)[0])
        if not s_all:
            return {}
        s, t = torch.cat(s_all), torch.cat(t_all)  # (N, H)
        result = {"embedding_cosine": float(F.cosine_similarity(s, t, dim=-1).mean())}
        if len(s) > 1:
            result["neighbour_agreement"] = float((_nearest(s) == _nearest(t)).float().mean())
        return result


def _nearest(emb: torch.Tensor) -> torch.Tensor:
    """``(N,)`` index of each row's most cosine-similar other row."""
    e = F.normalize(emb, dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    return sim.argmax(1)


def write_module_list(out: Path, normalize: bool) -> None:
    """``modules.json`` of a Transformer -> Pooling (-> Normalize) sentence encoder, with the
    module folders; the pooling config itself is the caller's."""
    kinds = ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    folders = ["", "1_Pooling", "2_Normalize"]
    modules = [
        {"idx": i, "name": str(i), "path": folders[i], "type": f"sentence_transformers.models.{k}"}
        for i, k in enumerate(kinds)
    ]
    for folder in folders[1 : len(kinds)]:
        (out / folder).mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")


def save_sentence_transformer(
    encoder: nn.Module, tokenizer, out: Path, teacher_dir: str | Path, spec: SentenceSpec
) -> None:
    """Write ``encoder`` into ``out`` in the sentence-transformers layout, with the teacher's
    pooling and normalisation, so that ``SentenceTransformer(out)`` loads it."""
    encoder.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_sentence_modules(encoder, out, teacher_dir, spec)


def write_sentence_modules(
    encoder: nn.Module, out: Path, source_dir: str | Path, spec: SentenceSpec
) -> None:
    """The sentence-transformers files beside a saved encoder: the module list, the pooling
    config of ``source_dir`` (the sentence encoder ``spec`` was read from) and the length."""
    write_module_list(out, spec.normalize)
    shutil.copyfile(
        Path(source_dir) / spec.pooling_dir / "config.json", out / "1_Pooling" / "config.json"
    )
    max_len = spec.max_seq_length or getattr(encoder.config, "max_position_embeddings", 512)
    sbert = {"max_seq_length": int(max_len), "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(
        json.dumps(sbert, indent=2) + "\n", encoding="utf-8"
    )
