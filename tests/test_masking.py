from __future__ import annotations

import numpy as np
import torch

from distilkit.masking import MaskingConfig, mask_batch, token_weights

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
V = 200


def _batch(b: int = 64, length: int = 100, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, length), generator=g)
    ids[:, 0] = CLS
    lengths = torch.randint(20, length, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, n - 1] = SEP
        ids[i, n:] = PAD
    return ids


def _weights(counts=None, smoothing=0.7) -> torch.Tensor:
    counts = np.ones(V, dtype=np.int64) * 100 if counts is None else counts
    return token_weights(counts, [PAD, UNK, CLS, SEP, MASK], smoothing)


def test_rate_and_80_10_10_split_and_specials_untouched():
    ids = _batch(b=512)
    cfg = MaskingConfig()
    masked, targets = mask_batch(ids, _weights(), MASK, PAD, cfg, torch.Generator().manual_seed(1))
    real = int((ids != PAD).sum())
    assert int(targets.sum()) == int(np.ceil(0.15 * real))
    # Never padding or specials.
    assert not targets[ids == PAD].any()
    for special in (CLS, SEP):
        assert not targets[ids == special].any()
    # Outside the targets nothing changes.
    assert torch.equal(masked[~targets], ids[~targets])
    t_masked = masked[targets]
    t_orig = ids[targets]
    n = len(t_orig)
    frac_mask = float((t_masked == MASK).sum()) / n
    frac_keep = float((t_masked == t_orig).sum()) / n
    assert abs(frac_mask - 0.8) < 0.02
    assert abs(frac_keep - 0.1) < 0.015  # random replacements may hit the same id: ~1/195
    frac_random = 1 - frac_mask - frac_keep
    assert abs(frac_random - 0.1) < 0.015
    # Random replacements are never special tokens.
    replaced = t_masked[(t_masked != MASK) & (t_masked != t_orig)]
    assert (replaced >= 5).all()


def test_same_seed_same_mask_different_seed_different_mask():
    ids = _batch()
    cfg = MaskingConfig()
    a = mask_batch(ids, _weights(), MASK, PAD, cfg, torch.Generator().manual_seed(5))
    b = mask_batch(ids, _weights(), MASK, PAD, cfg, torch.Generator().manual_seed(5))
    c = mask_batch(ids, _weights(), MASK, PAD, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_smoothing_favours_rare_tokens():
    counts = np.full(V, 10_000, dtype=np.int64)
    counts[5:50] = 10  # rare ids
    ids = _batch(b=128, seed=3)
    _, targets = mask_batch(
        ids, _weights(counts), MASK, PAD, MaskingConfig(), torch.Generator().manual_seed(0)
    )
    rare = (ids >= 5) & (ids < 50)
    common = ids >= 50
    rate_rare = float(targets[rare].float().mean())
    rate_common = float(targets[common].float().mean())
    assert rate_rare > 3 * rate_common
    # Without smoothing the rates match.
    _, flat = mask_batch(
        ids,
        _weights(counts, smoothing=0.0),
        MASK,
        PAD,
        MaskingConfig(),
        torch.Generator().manual_seed(0),
    )
    assert abs(float(flat[rare].float().mean()) - float(flat[common].float().mean())) < 0.03


def test_weights_zero_on_specials():
    w = _weights()
    assert w[[PAD, UNK, CLS, SEP, MASK]].eq(0).all()
    assert (w[5:] > 0).all()
