"""``distilkit adapt-teacher``: continued masked-LM training of a teacher on the user's text.

Two uses: domain adaptation before distillation (whole model), and fitting a masked-LM head to
an encoder-only checkpoint such as the packaged all-MiniLM-L6-v2 (``head_only``), so that the
teacher can give soft targets (L_ce). Same loop, masking and checkpoints as ``distill``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distilkit import __version__
from distilkit.config import to_dict
from distilkit.data import TokenDataset, vocab_fingerprint
from distilkit.distill import LMNet, check_positions
from distilkit.errors import DistilkitError
from distilkit.loop import (
    RUN_MARKER,
    OptimConfig,
    TrainConfig,
    claim_run_folder,
    plot_curves,
    run,
    save_final,
    setup_runtime,
)
from distilkit.losses import mlm_cross_entropy
from distilkit.masking import MaskingConfig, token_weights
from distilkit.modeling import load_mlm, load_tokenizer, resolve_model
from distilkit.runfolder import fingerprint

log = logging.getLogger(__name__)


def _adapt_train_defaults() -> TrainConfig:
    return TrainConfig(
        optim=OptimConfig(
            lr=1e-4, betas=[0.9, 0.999], warmup_ratio=0.06, max_grad_norm=1.0, weight_decay=0.01
        )
    )


@dataclass
class AdaptConfig:
    """Options of ``distilkit adapt-teacher``."""

    teacher: str = ""
    """Teacher to adapt: folder, hub id, or 'minilm'."""
    data: str = ""
    """Folder written by ``distilkit prepare``."""
    out_dir: str = ""
    """Output folder: the adapted teacher, checkpoints, metrics.jsonl."""
    overwrite: bool = False
    """Replace an earlier run in out_dir."""
    head_only: bool = False
    """Train only the masked-LM head (its transform and bias; the decoder stays tied to the
    frozen word embeddings). Automatically on when the teacher has no head, unless
    ``whole_model`` is set."""
    whole_model: bool = False
    """Train every weight even when the head is new."""
    head_lr: float = 1e-2
    """Learning rate when only the head trains (a new head needs far more than fine-tuning: Adam
    moves each weight by about ``lr`` a step, and the head's logits must move by several units)."""
    prior_bias: bool = True
    """Start a new head's output bias at the log-frequency of masked targets in ``data`` (the
    unigram counts times the masking weights), so the head predicts the prior from step 0
    instead of spending its first thousand steps learning it."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=_adapt_train_defaults)


@dataclass
class AdaptResult:
    out_dir: Path
    steps: int
    seconds: float
    final_eval: dict
    head_only: bool
    halted: bool = False


class MLMObjective:
    """Plain masked-LM cross-entropy of one model."""

    part_names = ("mlm",)
    weights = {"mlm": 1.0}
    find_unused = False

    def __init__(self, model: nn.Module, head_only: bool):
        self.net = LMNet(model, encoder_grad=not head_only)

    def train_module(self) -> nn.Module:
        return self.net

    def rows(self, batch: dict) -> dict[str, int]:
        return {"mlm": len(batch["target_idx"])}

    def losses(self, module: nn.Module, b: dict, norms: dict[str, float]) -> dict:
        _, logits = module(b["input_ids"], b["attention_mask"], b["target_idx"])
        return {"mlm": mlm_cross_entropy(logits, b["labels"], norms["mlm"])}

    def evaluate(self, batches: list[dict]) -> dict[str, float]:
        ce = correct = n = 0.0
        for b in batches:
            _, logits = self.net(b["input_ids"], b["attention_mask"], b["target_idx"])
            ce += float(mlm_cross_entropy(logits, b["labels"], normalizer=1.0))
            correct += float((logits.argmax(-1) == b["labels"]).sum())
            n += len(b["labels"])
        n = max(n, 1.0)
        return {"mlm_loss": ce / n, "mlm_accuracy": correct / n}


def adapt_teacher(cfg: AdaptConfig, resume: bool | str = False) -> AdaptResult:
    """Continue masked-LM training of ``cfg.teacher``; the output is an MLM model folder."""
    for name in ("teacher", "data", "out_dir"):
        if not getattr(cfg, name):
            raise DistilkitError(f"no {name} given")
    if cfg.head_only and cfg.whole_model:
        raise DistilkitError("head_only and whole_model exclude each other")
    cfg.train.validate()
    rt = setup_runtime(cfg.train.threads)
    out = Path(cfg.out_dir)
    data = TokenDataset(cfg.data, "train")
    inputs = {"the teacher": cfg.teacher, "the data": cfg.data}
    with claim_run_folder(out, "adapt-teacher", bool(resume), cfg.overwrite, inputs, rt):
        if resume is True and not any((out / "checkpoints").glob("step-*")):
            raise DistilkitError(
                f"--resume was given but {out}/checkpoints holds no usable checkpoint"
            )
        return _adapt(cfg, resume, rt, out, data)


def _adapt(cfg: AdaptConfig, resume, rt, out: Path, data: TokenDataset) -> AdaptResult:
    model, headless = load_mlm(cfg.teacher)
    tok = load_tokenizer(cfg.teacher)
    if data.manifest.get("vocab_fingerprint") != vocab_fingerprint(tok):
        raise DistilkitError(
            f"dataset {data.root} was tokenised with a different vocabulary than {cfg.teacher}"
        )
    check_positions(data, {"teacher": model})
    head_only = cfg.head_only or (headless and not cfg.whole_model)
    if headless:
        log.info(
            "teacher %s has no masked-LM head: fitting a new one (%s)",
            cfg.teacher,
            "head only" if head_only else "whole model",
        )
    if headless and cfg.prior_bias:
        _set_prior_bias(model, data, cfg.masking)
    model.to(rt.device).train()
    objective = MLMObjective(model, head_only)
    train_cfg = cfg.train
    if head_only:
        from dataclasses import replace

        train_cfg = replace(cfg.train, optim=replace(cfg.train.optim, lr=cfg.head_lr))
        model.requires_grad_(False)
        for p in _head_parameters(model):
            p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("training %.2fM parameters", trainable / 1e6)
    run_info = {
        "stage": "adapt-teacher",
        "distilkit": __version__,
        "teacher": cfg.teacher,
        "data": cfg.data,
        "head_only": head_only,
        "config": to_dict(cfg),
    }
    settings = {
        "teacher": fingerprint(resolve_model(cfg.teacher)),
        "head_only": head_only,
        "prior_bias": cfg.prior_bias,
    }
    result = run(
        objective, model, cfg.data, cfg.masking, train_cfg, out, rt, resume, run_info, settings
    )
    if result.halted:
        return AdaptResult(out, result.steps, result.seconds, {}, head_only, halted=True)
    if rt.main:
        model.requires_grad_(True)
        plot_curves(out)
        ev = "\n".join(f"| {k} | {v:.4f} |" for k, v in result.final_eval.items())
        card = f"""---
library_name: transformers
tags: [distilkit, fill-mask]
---
# Teacher adapted with distilkit

- Base: `{cfg.teacher}`; {"masked-LM head fitted (encoder frozen)" if head_only else "whole model trained"}
- Data: `{cfg.data}`; {result.steps} optimizer steps, {result.tokens:,} tokens

| held-out metric | value |
|---|---|
{ev}
"""
        save_final(model, tok, out, card)
        (out / "results.json").write_text(
            json.dumps(
                {
                    "steps": result.steps,
                    "seconds": result.seconds,
                    "final_eval": result.final_eval,
                    "head_only": head_only,
                    "tokens": result.tokens,
                    "tokens_per_second": result.tokens / max(result.seconds, 1e-9),
                }
                | ({"changed_on_resume": result.changes} if result.changes else {}),
                indent=2,
            )
            + "\n"
        )
        marker = json.loads((out / RUN_MARKER).read_text())
        (out / RUN_MARKER).write_text(json.dumps(marker | {"finished": True}, indent=2) + "\n")
        log.info("adapted teacher saved to %s", out)
    if rt.world > 1:
        torch.distributed.barrier()
    return AdaptResult(out, result.steps, result.seconds, result.final_eval, head_only)


def _set_prior_bias(model: nn.Module, data: TokenDataset, masking: MaskingConfig) -> None:
    """Set the vocabulary bias to ``log p(target)``: a target is masked with probability
    proportional to ``count * weight`` (frequency-smoothed masking), so that is its prior."""
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    if bias is None:
        raise DistilkitError(f"the masked-LM head of {type(model).__name__} has no output bias")
    counts = torch.from_numpy(data.token_counts().astype("float64"))
    weights = token_weights(data.token_counts(), list(data.special_ids.values()), masking.smoothing)
    mass = counts * weights.double()  # (V,) expected number of times each id is a target
    if mass.numel() != bias.numel() or mass.sum() <= 0:
        raise DistilkitError("token counts of the data do not match the teacher's vocabulary")
    # Unseen ids get half a count, not -inf: they are rare, not impossible.
    prior = (mass.clamp_min(0.5) / mass.sum()).log()
    with torch.no_grad():
        bias.copy_(prior.to(bias.dtype))
    log.info("new head's output bias set to the log prior of masked targets")


def _head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the vocabulary head, without the decoder weight tied to the embeddings."""
    embedding = model.get_input_embeddings().weight
    params = []
    for name, p in model.named_parameters():
        if name.startswith(("cls.", "lm_head.", "vocab_")) and p is not embedding:
            params.append(p)
    if not params:
        raise DistilkitError(f"cannot find the masked-LM head of {type(model).__name__}")
    return params
