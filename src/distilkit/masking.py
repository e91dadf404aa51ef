"""Dynamic, frequency-smoothed masking drawn afresh for every batch (DistilBERT recipe).

Per batch: ``ceil(p * real tokens)`` target positions are drawn without replacement with
probability proportional to ``max(count, 1) ** -smoothing`` of their token (rarer tokens are
masked more often); special tokens and padding have weight 0. Of the targets, 80% become
``[MASK]``, 10% stay unchanged and 10% become a random non-special token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from distilkit.errors import DistilkitError


@dataclass
class MaskingConfig:
    """Masking options (defaults: the paper's)."""

    mlm_probability: float = 0.15
    """Share of the real tokens of a sequence that become targets."""
    mask_fraction: float = 0.8
    """Share of targets replaced by [MASK]."""
    random_fraction: float = 0.1
    """Share of targets replaced by a random token; the rest stay unchanged."""
    smoothing: float = 0.7
    """Exponent of the frequency smoothing; 0 gives uniform masking."""

    def validate(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise DistilkitError("masking.mlm_probability must be in (0, 1)")
        if (
            self.mask_fraction < 0
            or self.random_fraction < 0
            or (self.mask_fraction + self.random_fraction > 1.0)
        ):
            raise DistilkitError("masking.mask_fraction + random_fraction must be within [0, 1]")
        if self.smoothing < 0:
            raise DistilkitError("masking.smoothing must be >= 0")


def token_weights(counts: np.ndarray, special_ids: list[int], smoothing: float) -> torch.Tensor:
    """``(V,)`` float32 masking weights ``max(count, 1) ** -smoothing``; specials get 0."""
    w = np.maximum(counts.astype(np.float64), 1.0) ** (-smoothing)
    w[list(special_ids)] = 0.0
    return torch.from_numpy(w.astype(np.float32))


def mask_batch(
    input_ids: torch.Tensor,
    weights: torch.Tensor,
    mask_id: int,
    pad_id: int,
    cfg: MaskingConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask one batch.

    Args:
        input_ids: ``(B, L)`` int64 token ids, padding included.
        weights: ``(V,)`` masking weights; padding and special ids must have weight 0.
        mask_id: id of ``[MASK]``; pad_id: id of padding (not a real token).
        generator: CPU generator; the same seed gives the same masks (exact resume).

    Returns:
        ``(masked_ids, targets)``: ``(B, L)`` int64 ids fed to both models, and ``(B, L)`` bool
        positions to predict (the labels are the original ``input_ids`` there).
    """
    w = weights[input_ids]  # (B, L) zero on specials and padding
    eligible = int((w > 0).sum())
    real = int((input_ids != pad_id).sum())  # [CLS]/[SEP] count as real tokens, as in the paper
    n_targets = min(eligible, math.ceil(cfg.mlm_probability * real))
    targets = torch.zeros(input_ids.shape, dtype=torch.bool)
    masked = input_ids.clone()
    if n_targets == 0:
        return masked, targets
    flat = torch.multinomial(w.flatten(), n_targets, replacement=False, generator=generator)
    targets.view(-1)[flat] = True
    # 80/10/10 split of the targets, drawn per target.
    u = torch.rand(n_targets, generator=generator)
    to_mask = flat[u < cfg.mask_fraction]
    to_random = flat[(u >= cfg.mask_fraction) & (u < cfg.mask_fraction + cfg.random_fraction)]
    masked.view(-1)[to_mask] = mask_id
    if len(to_random):
        # Random replacements are drawn uniformly among non-special tokens.
        candidates = (weights > 0).to(torch.float32)
        masked.view(-1)[to_random] = torch.multinomial(
            candidates, len(to_random), replacement=True, generator=generator
        )
    return masked, targets
