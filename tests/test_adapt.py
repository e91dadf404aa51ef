from __future__ import annotations

import json

import torch
from transformers import AutoModelForMaskedLM

from distilkit.adapt import AdaptConfig, adapt_teacher
from distilkit.loop import TrainConfig
from distilkit.modeling import load_mlm


def _cfg(teacher, data, out, **kw) -> AdaptConfig:
    train = TrainConfig(batch_size=8, max_steps=12, log_every=1, eval_batches=4, precision="fp32")
    return AdaptConfig(teacher=str(teacher), data=str(data), out_dir=str(out), train=train, **kw)


def test_headless_teacher_gets_a_head_and_keeps_its_encoder(headless_teacher, tiny_data, tmp_path):
    r = adapt_teacher(_cfg(headless_teacher, tiny_data, tmp_path / "t"))
    assert r.head_only and r.steps == 12
    before = AutoModelForMaskedLM.from_pretrained(headless_teacher)  # head fresh here
    after, head_missing = load_mlm(tmp_path / "t")
    assert not head_missing
    for name, p in after.bert.named_parameters():
        torch.testing.assert_close(p, dict(before.bert.named_parameters())[name], msg=name)
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in rows if x["kind"] == "train"]
    assert sum(losses[-3:]) < sum(losses[:3])  # a new head from 4.6 nats learns quickly
    assert {"mlm_loss", "mlm_accuracy"} <= set(r.final_eval)


def test_whole_model_adaptation_moves_the_encoder(tiny_teacher, tiny_data, tmp_path):
    r = adapt_teacher(_cfg(tiny_teacher, tiny_data, tmp_path / "t"))
    assert not r.head_only
    before = AutoModelForMaskedLM.from_pretrained(tiny_teacher)
    after = AutoModelForMaskedLM.from_pretrained(tmp_path / "t")
    w0 = before.bert.encoder.layer[0].attention.self.query.weight
    w1 = after.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(w0, w1)


def test_new_head_starts_at_the_prior_of_masked_targets(headless_teacher, tiny_data):
    from distilkit.adapt import _set_prior_bias
    from distilkit.data import TokenDataset
    from distilkit.masking import MaskingConfig, token_weights

    model, head_missing = load_mlm(headless_teacher)
    assert head_missing
    data = TokenDataset(tiny_data, "train")
    masking = MaskingConfig()
    _set_prior_bias(model, data, masking)
    bias = model.get_output_embeddings().bias.detach().double()
    counts = torch.from_numpy(data.token_counts()).double()
    specials = list(data.special_ids.values())
    mass = counts * token_weights(data.token_counts(), specials, masking.smoothing).double()
    seen = torch.nonzero(mass > 0.5).flatten()
    assert len(seen) > 10
    # exp(bias) is proportional to count x masking weight: equal log-ratios for every seen id.
    torch.testing.assert_close(
        bias[seen] - bias[seen[0]], (mass[seen] / mass[seen[0]]).log(), rtol=0, atol=1e-5
    )
    assert bias.softmax(0)[specials].max() < bias.softmax(0)[seen].min()  # never targets
    # Unseen ids keep half a count each: possible, but together a small share.
    assert 0.95 < bias.softmax(0)[seen].sum() < 1.0
