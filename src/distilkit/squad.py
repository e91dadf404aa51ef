"""SQuAD v1.1: extractive QA fine-tuning with doc stride, EM/F1, and the second distillation step.

The second step is the paper's "DistilBERT (D)": while the student is fine-tuned on SQuAD, a
teacher that is already fine-tuned on SQuAD runs on the same features, and a temperature-scaled
KL term pulls the student's start/end distributions towards the teacher's:

    L = (1 - alpha_kd) * L_qa + alpha_kd * T^2 * (KL(p_t^start || p_s^start) + KL(end)) / 2

where ``p = softmax(logits / T)`` over the real tokens of each feature. With no teacher it is
ordinary SQuAD fine-tuning (``L = L_qa``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilkit.config import ConfigError, load_config, to_dict
from distilkit.errors import DistilkitError
from distilkit.finetune import (
    SCRATCH,
    check_finite_weights,
    check_loading_info,
    check_number,
    environment,
    fit_max_length,
    forward_kwargs,
    load_error,
    only_scratch,
    open_model,
    pick_device,
    quiet_transformers,
    set_seed,
)
from distilkit.metrics import result_json, squad_metrics
from distilkit.modeling import count_parameters, resolve_model
from distilkit.plan import batch_text, log_plan
from distilkit.runfolder import claim_folder

log = logging.getLogger(__name__)


@dataclass
class SquadConfig:
    """SQuAD v1.1 fine-tuning, optionally with distillation from a SQuAD-fine-tuned teacher."""

    model: str = ""
    """Student (or any encoder) to fine-tune: folder, 'minilm', or hub id."""
    train_file: str = ""
    """SQuAD v1.1 JSON (official format)."""
    dev_file: str | None = None
    """SQuAD v1.1 dev JSON; default: hold out dev_fraction of the training paragraphs."""
    out: str = ""
    """Output folder: metrics.json, and model/ with save_model."""
    teacher: str | None = None
    """A QA model already fine-tuned on SQuAD; enables the second distillation step."""
    alpha_kd: float = 0.5
    """Weight of the KL term; the hard-label loss gets 1 - alpha_kd."""
    temperature: float = 2.0
    """Softmax temperature T of the KL term."""
    lr: float = 3e-5
    """Peak learning rate (AdamW)."""
    epochs: int = 2
    """Passes over the training windows."""
    batch_size: int = 12
    """Training windows per step."""
    eval_batch_size: int = 64
    """Windows per forward pass in evaluation."""
    max_length: int = 384
    """Tokens per window (question and context); at most the model's position table (a larger
    value is lowered to it, with a warning)."""
    doc_stride: int = 128
    """Overlap, in tokens, between consecutive windows of a long context."""
    max_answer_length: int = 30
    """Longest predicted answer, in tokens."""
    n_best: int = 20
    """Start and end candidates considered per window."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Share of the steps with linear warm-up."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0: off)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    max_train_examples: int = 0
    """Train on the first N questions (0 = all)."""
    max_eval_examples: int = 0
    """Evaluate on the first N dev questions (0 = all)."""
    dev_fraction: float = 0.2
    """Share of the training paragraphs held out when there is no dev_file."""
    split_seed: int = 0
    """Seed of that hold-out."""
    seed: int = 42
    """Training seed."""
    bf16: bool = False
    """bf16 autocast (CPU or GPU)."""
    device: str = "auto"
    """'auto': cuda when available, else cpu."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    log_every: int = 50
    """Log the training loss every N steps."""
    save_model: bool = True
    """Save the fine-tuned model to out/model (it can then serve as a teacher)."""

    def validate(self) -> None:
        if not 0.0 <= self.alpha_kd <= 1.0:
            raise ConfigError("config key 'alpha_kd' must be in [0, 1]")
        # Finite first: NaN passes `<= 0` and would train NaN weights (see FinetuneConfig).
        check_number("temperature", self.temperature, low=0.0, strict=True)
        check_number("lr", self.lr, low=0.0, strict=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("grad_clip", self.grad_clip, low=0.0)
        check_number("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, open_high=True)
        if self.doc_stride < 0:
            raise ConfigError("config key 'doc_stride' must be >= 0")
        if self.doc_stride >= self.max_length:
            raise ConfigError("config key 'doc_stride' must be smaller than max_length")
        for name in ("epochs", "batch_size", "eval_batch_size", "max_answer_length", "n_best"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{name}' must be at least 1")
        # A negative count would slice from the end (train[:-3]); negative max_steps trained
        # nothing and wrote a NaN loss.
        for name in ("max_steps", "max_train_examples", "max_eval_examples", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0")
        if not 0.0 < self.dev_fraction < 1.0:
            raise ConfigError("config key 'dev_fraction' must be in (0, 1)")


def build_squad_config(
    recipes: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **fields: Any
) -> SquadConfig:
    """Dataclass defaults < the ``squad:`` section of the recipes file < fields < overrides."""
    from distilkit.finetune import load_recipes

    tree = dict(load_recipes(recipes).squad)
    tree.update({k: v for k, v in fields.items() if v is not None})
    return load_config(SquadConfig, None, overrides, tree)  # tree as flags: below the overrides


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SquadExample:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, answer_start in characters)
    paragraph: int  # running paragraph index, for splitting without leaking contexts


def read_squad(path: str | Path) -> list[SquadExample]:
    """Questions of a SQuAD v1.1 JSON file; every answer must match its context span."""
    path = Path(path)
    if not path.is_file():
        raise DistilkitError(f"SQuAD file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DistilkitError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DistilkitError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DistilkitError(f"{path}: not SQuAD format (expected a top-level 'data' list)")

    def need(obj: Any, key: str, kind: type, where: str) -> Any:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
            raise DistilkitError(f"{path}: {where}: missing or bad '{key}' ({kind.__name__})")
        return obj[key]

    out, seen, paragraph = [], set(), 0
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(need(article, "paragraphs", list, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = need(para, "context", str, where)
            for q, qa in enumerate(need(para, "qas", list, where)):
                qwhere = f"{where}.qas[{q}]"
                qid = need(qa, "id", str, qwhere)
                if qid in seen:
                    raise DistilkitError(f"{path}: {qwhere}: duplicate question id {qid}")
                seen.add(qid)
                question = need(qa, "question", str, qwhere)
                answers = []
                for n, ans in enumerate(need(qa, "answers", list, qwhere)):
                    text = need(ans, "text", str, f"{qwhere}.answers[{n}]")
                    start = need(ans, "answer_start", int, f"{qwhere}.answers[{n}]")
                    if context[start : start + len(text)] != text:
                        raise DistilkitError(
                            f"{path}: question {qid}: answer {text!r} is not at character "
                            f"{start} of its context"
                        )
                    answers.append((text, start))
                if not answers:
                    raise DistilkitError(f"{path}: question {qid} has no answer (SQuAD 2.0?)")
                out.append(SquadExample(qid, question.strip(), context, tuple(answers), paragraph))
            paragraph += 1
    if not out:
        raise DistilkitError(f"{path}: no questions")
    return out


def split_by_paragraph(
    examples: list[SquadExample], dev_fraction: float, seed: int
) -> tuple[list[SquadExample], list[SquadExample]]:
    """Hold out whole paragraphs, so no dev context is seen in training."""
    paragraphs = sorted({e.paragraph for e in examples})
    if len(paragraphs) < 2:
        raise DistilkitError("need at least 2 paragraphs to hold out a SQuAD dev set")
    random.Random(seed).shuffle(paragraphs)
    n_dev = min(len(paragraphs) - 1, max(1, round(len(paragraphs) * dev_fraction)))
    held = set(paragraphs[:n_dev])
    return [e for e in examples if e.paragraph not in held], [
        e for e in examples if e.paragraph in held
    ]


def check_windows(tokenizer, examples: list[SquadExample], cfg: SquadConfig) -> None:
    """Every question must leave more than ``doc_stride`` tokens of its window to the context.

    Otherwise the tokenizer cannot step through a long context and panics in Rust (a
    ``PanicException``, which is not even an ``Exception``), with a page of backtrace.
    """
    if not examples:
        return
    lengths = tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"]
    longest = max(range(len(examples)), key=lambda i: len(lengths[i]))
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    room = cfg.max_length - len(lengths[longest]) - specials
    if room <= cfg.doc_stride:
        raise DistilkitError(
            f"max_length {cfg.max_length} leaves {max(room, 0)} tokens for the context next to "
            f"the longest question ({examples[longest].id}: {len(lengths[longest])} tokens and "
            f"{specials} special tokens), not more than doc_stride {cfg.doc_stride}; lower "
            "doc_stride, or raise max_length (up to the model's position table)"
        )


def _encode(tokenizer, examples: list[SquadExample], cfg: SquadConfig) -> Any:
    """Question + context windows: contexts longer than max_length are split into overlapping
    windows ``doc_stride`` tokens apart, one feature per window."""
    if tokenizer.padding_side != "right":
        raise DistilkitError("SQuAD features assume a right-padding tokenizer")
    return tokenizer(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=cfg.max_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )


def train_features(tokenizer, examples: list[SquadExample], cfg: SquadConfig) -> list[dict]:
    """Features with ``start_positions`` / ``end_positions`` (token indices of the first answer);
    a window that does not contain the whole answer points both at the CLS token (index 0)."""
    enc = _encode(tokenizer, examples, cfg)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        text, start_char = ex.answers[0]
        end_char = start_char + len(text)
        seq = enc.sequence_ids(i)
        ctx_start = seq.index(1)
        ctx_end = len(seq) - 1 - seq[::-1].index(1)
        start = end = 0
        if offsets[ctx_start][0] <= start_char and offsets[ctx_end][1] >= end_char:
            start = ctx_start
            while start <= ctx_end and offsets[start][0] <= start_char:
                start += 1
            start -= 1
            end = ctx_end
            while end >= ctx_start and offsets[end][1] >= end_char:
                end -= 1
            end += 1
        features.append(
            {
                "input_ids": enc["input_ids"][i],
                "token_type_ids": enc["token_type_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "start_positions": start,
                "end_positions": end,
            }
        )
    return features


def eval_features(tokenizer, examples: list[SquadExample], cfg: SquadConfig) -> list[dict]:
    """Features with ``example`` (index into examples) and character offsets of context tokens
    (None for question and special tokens, so no answer can be taken from them)."""
    enc = _encode(tokenizer, examples, cfg)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        features.append(
            {
                "input_ids": enc["input_ids"][i],
                "token_type_ids": enc["token_type_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "example": enc["overflow_to_sample_mapping"][i],
                "offsets": [o if s == 1 else None for o, s in zip(offsets, seq)],
            }
        )
    return features


def _collate(tokenizer, features: list[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """Pad a list of features to their longest: tensors of shape (B, L)."""
    keys = ("input_ids", "token_type_ids", "attention_mask")
    batch = tokenizer.pad([{k: f[k] for k in keys} for f in features], return_tensors="pt")
    out = {k: batch[k].to(device) for k in keys}
    for k in ("start_positions", "end_positions"):
        if k in features[0]:
            out[k] = torch.tensor([f[k] for f in features], device=device)
    return out


# ----------------------------------------------------------------------------- losses


def qa_loss(
    start_logits: torch.Tensor, end_logits: torch.Tensor, start: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """Hard-label QA loss: mean of start and end cross-entropies. logits (B, L), positions (B,)."""
    return (
        F.cross_entropy(start_logits.float(), start) + F.cross_entropy(end_logits.float(), end)
    ) / 2


def _masked_kl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) over the real tokens, summed over L, averaged over B."""
    # The finite minimum (not -inf) keeps the masked terms at 0 * (min - min) = 0, never NaN.
    low = torch.finfo(torch.float32).min
    s = (student.float() / temperature).masked_fill(~mask, low)  # (B, L)
    t = (teacher.float() / temperature).masked_fill(~mask, low)  # (B, L)
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).masked_fill(~mask, 0.0)
    return kl.sum(-1).mean()


def qa_distillation_loss(
    student_start: torch.Tensor,
    student_end: torch.Tensor,
    teacher_start: torch.Tensor,
    teacher_end: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The second distillation step's soft-target term.

    All logits ``(B, L)``; ``attention_mask`` ``(B, L)`` with 1 on real tokens (padding takes no
    probability mass in either distribution). Returns
    ``T^2 * (KL_start + KL_end) / 2``, each KL summed over tokens and averaged over the batch
    (``batchmean``, as in the reference); the ``T^2`` keeps gradient sizes comparable across T.
    """
    mask = attention_mask.bool()
    kl_start = _masked_kl(student_start, teacher_start, mask, temperature)
    kl_end = _masked_kl(student_end, teacher_end, mask, temperature)
    return temperature**2 * (kl_start + kl_end) / 2


# ----------------------------------------------------------------------------- models


def _load_qa(name: str, role: str) -> nn.Module:
    from transformers import AutoModelForQuestionAnswering

    ref = resolve_model(name)
    try:
        with quiet_transformers():
            model, info = AutoModelForQuestionAnswering.from_pretrained(
                ref, output_loading_info=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise load_error(role, name, "question answering", exc) from exc
    check_finite_weights(model, name)
    if role == "teacher":
        missing = [k for k in info.get("missing_keys", []) if k.startswith("qa_outputs")]
        if missing:
            raise DistilkitError(
                f"teacher '{name}' has no fine-tuned QA head ({missing[0]} missing); fine-tune it "
                "first with `distilkit squad --model TEACHER ...` and pass its out/model folder"
            )
    check_loading_info(name, info, ("qa_outputs",))
    return model


@torch.no_grad()
def predict_answers(
    model: nn.Module,
    tokenizer,
    examples: list[SquadExample],
    features: list[dict],
    cfg: SquadConfig,
    device: torch.device,
) -> dict[str, str]:
    """Best span per question over all its windows: max of start + end logit, with
    ``start <= end``, length ``<= max_answer_length``, both tokens inside the context."""
    model.eval()
    best: dict[int, tuple[float, str]] = {}
    for s in range(0, len(features), cfg.eval_batch_size):
        chunk = features[s : s + cfg.eval_batch_size]
        batch = _collate(tokenizer, chunk, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            outputs = model(**forward_kwargs(model, batch))
        starts = outputs.start_logits.float().cpu().numpy()  # (B, L)
        ends = outputs.end_logits.float().cpu().numpy()  # (B, L)
        for feat, start_logits, end_logits in zip(chunk, starts, ends):
            offsets = feat["offsets"]
            context = examples[feat["example"]].context
            n = len(offsets)
            top_s = np.argsort(start_logits[:n])[::-1][: cfg.n_best]
            top_e = np.argsort(end_logits[:n])[::-1][: cfg.n_best]
            for i in top_s:
                for j in top_e:
                    if offsets[i] is None or offsets[j] is None:
                        continue
                    if j < i or j - i + 1 > cfg.max_answer_length:
                        continue
                    score = float(start_logits[i] + end_logits[j])
                    if feat["example"] not in best or score > best[feat["example"]][0]:
                        best[feat["example"]] = (score, context[offsets[i][0] : offsets[j][1]])
    return {ex.id: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}


def finetune_squad(cfg: SquadConfig, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on SQuAD (with the distillation term if ``cfg.teacher``); write
    ``out/metrics.json``, ``out/predictions.json`` and (``save_model``) ``out/model``.

    ``out`` is claimed and published as in ``finetune``: one process at a time, ``overwrite``
    replaces only distilkit's own earlier output that holds no input (the model, the teacher,
    the SQuAD files), and nothing that looks like a result is left by a failed run."""
    cfg.validate()
    if not cfg.model or not cfg.train_file or not cfg.out:
        raise DistilkitError("squad needs model, train_file and out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    # Every input is checked before the folder is claimed and before any training.
    train = read_squad(cfg.train_file)
    if cfg.dev_file:
        dev = read_squad(cfg.dev_file)
    else:
        train, dev = split_by_paragraph(train, cfg.dev_fraction, cfg.split_seed)
        log.info("no dev file: held out %d questions from whole paragraphs", len(dev))
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    if cfg.max_eval_examples:
        dev = dev[: cfg.max_eval_examples]
    _, config, tokenizer = open_model(cfg.model)
    # The value used is the one recorded in metrics.json (a copy: the caller's cfg is theirs).
    cfg = dataclasses.replace(cfg, max_length=fit_max_length(cfg.max_length, config, cfg.model))
    if cfg.teacher:
        _, t_config, teacher_tok = open_model(cfg.teacher, role="teacher")
        if teacher_tok.get_vocab() != tokenizer.get_vocab():
            raise DistilkitError(
                "teacher and student tokenizers differ: the distillation term compares "
                "distributions over the same tokens, so they must share a vocabulary"
            )
        # The teacher reads the student's windows: they must fit its table too.
        cfg = dataclasses.replace(
            cfg, max_length=fit_max_length(cfg.max_length, t_config, cfg.teacher)
        )
    check_windows(tokenizer, train + dev, cfg)
    inputs = {
        "the model": cfg.model,
        "the teacher": cfg.teacher,
        "the training file": cfg.train_file,
        "the dev file": cfg.dev_file,
    }
    with claim_folder(
        cfg.out, "squad", overwrite=overwrite, inputs=inputs, is_residue=only_scratch
    ) as claim:
        tmp = claim.scratch(SCRATCH)
        try:
            result = _squad_into(cfg, train, dev, tokenizer, device, tmp)
            claim.publish(tmp, last="metrics.json")
        except BaseException:  # Ctrl-C included: no half-written results stay behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info(
        "SQuAD dev EM %.4f F1 %.4f -> %s",
        result["metrics"]["exact_match"],
        result["metrics"]["f1"],
        Path(cfg.out) / "metrics.json",
    )
    return result


def _squad_into(
    cfg: SquadConfig,
    train: list[SquadExample],
    dev: list[SquadExample],
    tokenizer,
    device: torch.device,
    tmp: Path,
) -> dict[str, Any]:
    """Train, evaluate and write the results into ``tmp``."""
    set_seed(cfg.seed)
    model = _load_qa(cfg.model, "student").to(device)
    teacher = None
    if cfg.teacher:
        teacher = _load_qa(cfg.teacher, "teacher").to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    train_feats = train_features(tokenizer, train, cfg)
    dev_feats = eval_features(tokenizer, dev, cfg)
    log_plan(
        log,
        "squad",
        {
            "model": cfg.model,
            "teacher": f"{cfg.teacher} (alpha_kd {cfg.alpha_kd}, T {cfg.temperature})"
            if teacher is not None
            else None,
            "data": f"{len(train):,} train questions -> {len(train_feats):,} windows; "
            f"{len(dev):,} dev questions -> {len(dev_feats):,} windows",
            "epochs": f"{cfg.epochs}"
            + (f", at most {cfg.max_steps} steps" if cfg.max_steps else ""),
            "batch": batch_text(cfg.batch_size),
            "lr": cfg.lr,
            "precision": "bf16 autocast" if cfg.bf16 else "fp32",
            "device": f"{device}, threads {torch.get_num_threads()}",
            "output": cfg.out,
        },
    )

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for n, p in params if not n.endswith(no_decay)],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    total = cfg.epochs * math.ceil(len(train_feats) / cfg.batch_size)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / (warmup + 1)
            if step < warmup
            else max(0.0, (total - step) / max(1, total - warmup))
        ),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, t0 = 0, [], time.perf_counter()
    model.train()
    while step < total:
        for idx in torch.randperm(len(train_feats), generator=gen).split(cfg.batch_size):
            batch = _collate(tokenizer, [train_feats[i] for i in idx.tolist()], device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = model(**forward_kwargs(model, batch))
            hard = qa_loss(
                out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"]
            )
            loss, soft = hard, None
            if teacher is not None:
                with (
                    torch.no_grad(),
                    torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16),
                ):
                    t_out = teacher(**forward_kwargs(teacher, batch))
                soft = qa_distillation_loss(
                    out.start_logits,
                    out.end_logits,
                    t_out.start_logits,
                    t_out.end_logits,
                    batch["attention_mask"],
                    cfg.temperature,
                )
                loss = (1 - cfg.alpha_kd) * hard + cfg.alpha_kd * soft
            if not torch.isfinite(loss):
                raise DistilkitError(f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            history.append((loss.item(), hard.item(), soft.item() if soft is not None else 0.0))
            step += 1
            if cfg.log_every and step % cfg.log_every == 0:
                recent = np.mean(history[-cfg.log_every :], axis=0)
                log.info("step %d/%d loss %.4f (qa %.4f, kd %.4f)", step, total, *recent)
            if step >= total:
                break
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    predictions = predict_answers(model, tokenizer, dev, dev_feats, cfg, device)
    metrics = squad_metrics(predictions, {e.id: [a[0] for a in e.answers] for e in dev})
    (tmp / "predictions.json").write_text(json.dumps(predictions, indent=1) + "\n")
    if cfg.save_model:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
    last = np.mean(history[-max(1, min(50, len(history) // 10)) :], axis=0)
    result = {
        "task": "squad",
        "title": "SQuAD",
        "kind": "squad-distil" if teacher is not None else "squad",
        "model": cfg.model,
        "teacher": cfg.teacher,
        "parameters": count_parameters(model.base_model),
        "n_train": len(train),
        "n_train_features": len(train_feats),
        "n_dev": {"dev": len(dev)},
        "main_split": "dev",
        "score": metrics["score"],
        "metrics": metrics,
        "steps": step,
        "train_loss_last": {"total": last[0], "qa": last[1], "kd": last[2]},
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "config": to_dict(cfg),
        "environment": environment(),
    }
    (tmp / "metrics.json").write_text(result_json(result), encoding="utf-8")
    return result
