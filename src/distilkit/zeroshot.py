"""Zero-shot sentence similarity (STS-B): mean-pooled embeddings, cosine, Spearman.

No training: this is how sentence encoders such as the MiniLM teacher (all-MiniLM-L6-v2) are
judged, and it shows how much of the teacher's sentence geometry a student kept.
"""

from __future__ import annotations

import json
import logging
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
    check_loading_info,
    environment,
    forward_kwargs,
    pick_device,
    quiet_transformers,
)
from distilkit.metrics import compute_metrics
from distilkit.modeling import count_parameters, load_tokenizer, resolve_model
from distilkit.tasks import get_task, read_task

log = logging.getLogger(__name__)


@dataclass
class ZeroShotConfig:
    """Zero-shot similarity on a sentence-pair regression task (STS-B)."""

    model: str = ""
    data_dir: str = ""
    out: str = ""
    task: str = "stsb"
    split: str = "dev"
    pooling: Literal["mean", "cls"] = "mean"
    """mean: average of the token states over the attention mask (sentence-transformers style)."""
    max_length: int = 128
    batch_size: int = 64
    max_eval_examples: int = 0
    bf16: bool = False
    device: str = "auto"
    threads: int = 0

    def validate(self) -> None:
        if get_task(self.task).kind != "regression" or not get_task(self.task).is_pair:
            raise ConfigError(f"zero-shot needs a sentence-pair regression task, not '{self.task}'")
        if self.max_length < 2 or self.batch_size < 1:
            raise ConfigError("max_length must be >= 2 and batch_size >= 1")


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


def zeroshot(cfg: ZeroShotConfig) -> dict[str, Any]:
    """Cosine similarity of pooled embeddings vs the gold scores; writes ``out/metrics.json``.

    Returns ``score`` (Spearman, the usual STS number), ``metrics`` (Spearman, Pearson) and the
    encoder's ``parameters``.
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
    ref = resolve_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    try:
        with quiet_transformers():
            model, info = AutoModel.from_pretrained(ref, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DistilkitError(f"cannot load encoder '{cfg.model}': {exc}") from exc
    check_loading_info(cfg.model, info, ())
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
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info(
        "%s zero-shot (%s pooling): Spearman %.4f, Pearson %.4f on %d pairs -> %s",
        spec.title,
        cfg.pooling,
        metrics["spearman"],
        metrics["pearson"],
        len(examples),
        out / "metrics.json",
    )
    return result
