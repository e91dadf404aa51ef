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
