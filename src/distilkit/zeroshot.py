"""Zero-shot sentence similarity (STS-B): mean-pooled embeddings, cosine, Spearman.

No training: this is how sentence encoders such as the MiniLM teacher (all-MiniLM-L6-v2) are
judged, and it shows how much of the teacher's sentence geometry a student kept.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilkit.config import ConfigError, to_dict
from distilkit.errors import DistilkitError
from distilkit.finetune import (
    SCRATCH,
    check_finite_weights,
    check_loading_info,
    environment,
    fit_max_length,
    forward_kwargs,
    load_error,
    only_scratch,
    open_model,
    pick_device,
    quiet_transformers,
)
from distilkit.metrics import compute_metrics, result_json
from distilkit.modeling import count_parameters
from distilkit.runfolder import claim_folder
from distilkit.tasks import get_task, read_task

log = logging.getLogger(__name__)


@dataclass
class ZeroShotConfig:
    """Zero-shot similarity on a sentence-pair regression task (STS-B)."""

    model: str = ""
    """Model folder, 'minilm', or a hub id."""
    data_dir: str = ""
    """GLUE root or STS-B folder, or 'hf'."""
    out: str = ""
    """Output folder (metrics.json)."""
    task: str = "stsb"
    """Sentence-pair regression task."""
    split: str = "dev"
    """Split to score."""
    pooling: Literal["mean", "cls"] = "mean"
    """mean: average of the token states over the attention mask (sentence-transformers style)."""
    max_length: int = 128
    """Longest input in tokens; longer ones are truncated. At most the model's position table
    (a larger value is lowered to it, with a warning)."""
    batch_size: int = 64
    """Sentences per forward pass."""
    max_eval_examples: int = 0
    """Score the first N pairs (0 = all)."""
    bf16: bool = False
    """bf16 autocast."""
    device: str = "auto"
    """'auto': cuda when available, else cpu."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""

    def validate(self) -> None:
        if get_task(self.task).kind != "regression" or not get_task(self.task).is_pair:
            raise ConfigError(f"zero-shot needs a sentence-pair regression task, not '{self.task}'")
        if self.max_length < 2 or self.batch_size < 1:
            raise ConfigError("max_length must be >= 2 and batch_size >= 1")
        # A negative count would slice from the end (examples[:-3]) and silently drop pairs.
        for name in ("max_eval_examples", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """hidden (B, L, H), attention_mask (B, L) -> (B, H) sentence embeddings."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    max_length: int = 128,
    batch_size: int = 64,
    pooling: str = "mean",
    device: torch.device | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Sentence embeddings ``(N, H)`` (float32, on CPU) in the order of ``texts``."""
    device = device or next(model.parameters()).device
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    chunks = []
    for start in range(0, len(order), batch_size):
        batch_texts = [texts[i] for i in order[start : start + batch_size]]
        batch = tokenizer(
            batch_texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = model(**forward_kwargs(model, dict(batch))).last_hidden_state  # (B, L, H)
        chunks.append(pool(hidden.float(), batch["attention_mask"], pooling).cpu())
    emb = torch.cat(chunks)
    restored = torch.empty_like(emb)
    restored[torch.tensor(order)] = emb
    return restored


def zeroshot(cfg: ZeroShotConfig, overwrite: bool = False) -> dict[str, Any]:
    """Cosine similarity of pooled embeddings vs the gold scores; writes ``out/metrics.json``.

    Returns ``score`` (Spearman, the usual STS number), ``metrics`` (Spearman, Pearson) and the
    encoder's ``parameters``. ``out`` is claimed and published as in ``finetune``.
    """
    from transformers import AutoModel

    cfg.validate()
    if not cfg.model or not cfg.data_dir or not cfg.out:
        raise DistilkitError("zeroshot needs model, data_dir and out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    spec = get_task(cfg.task)
    examples = read_task(spec.name, cfg.split, cfg.data_dir)
    if cfg.max_eval_examples:
        examples = examples[: cfg.max_eval_examples]
    ref, config, tokenizer = open_model(cfg.model)
    # The value used is the one recorded in metrics.json (a copy: the caller's cfg is theirs).
    cfg = dataclasses.replace(cfg, max_length=fit_max_length(cfg.max_length, config, cfg.model))
    inputs = {"the model": cfg.model, "the data": cfg.data_dir}
    with claim_folder(
        cfg.out, "zeroshot", overwrite=overwrite, inputs=inputs, is_residue=only_scratch
    ) as claim:
        try:
            with quiet_transformers():
                model, info = AutoModel.from_pretrained(ref, output_loading_info=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise load_error("encoder", cfg.model, "embeddings", exc) from exc
        check_loading_info(cfg.model, info, ())
        check_finite_weights(model, cfg.model)
        model.to(device)

        t0 = time.perf_counter()
        kwargs = dict(
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            pooling=cfg.pooling,
            device=device,
            bf16=cfg.bf16,
        )
        a = embed(model, tokenizer, [e.text_a for e in examples], **kwargs)  # (N, H)
        b = embed(model, tokenizer, [e.text_b or "" for e in examples], **kwargs)  # (N, H)
        cosine = F.cosine_similarity(a, b, dim=-1).numpy()  # (N,)
        seconds = time.perf_counter() - t0
        bad = int((~np.isfinite(cosine)).sum())
        if bad:
            raise DistilkitError(
                f"the embeddings of '{cfg.model}' are not finite (NaN or inf) for {bad} of "
                f"{len(examples)} pairs; no score was written"
            )
        gold = np.array([e.label for e in examples])
        m = compute_metrics(spec.name, cosine, gold)
        metrics = {"spearman": m["spearman"], "pearson": m["pearson"], "score": m["spearman"]}
        result = {
            "task": f"{spec.name}-zeroshot",
            "title": f"{spec.title} (0-shot)",
            "kind": "zeroshot",
            "model": cfg.model,
            "parameters": count_parameters(model),
            "n_dev": {cfg.split: len(examples)},
            "main_split": cfg.split,
            "score": metrics["score"],
            "metrics": metrics,
            "eval_seconds": round(seconds, 2),
            "config": to_dict(cfg),
            "environment": environment(),
        }
        tmp = claim.scratch(SCRATCH)
        try:
            (tmp / "metrics.json").write_text(result_json(result), encoding="utf-8")
            claim.publish(tmp, last="metrics.json")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info(
        "%s zero-shot (%s pooling): Spearman %.4f, Pearson %.4f on %d pairs -> %s",
        spec.title,
        cfg.pooling,
        metrics["spearman"],
        metrics["pearson"],
        len(examples),
        Path(cfg.out) / "metrics.json",
    )
    return result
