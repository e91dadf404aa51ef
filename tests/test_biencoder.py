"""STS-B fine-tuning as a bi-encoder (finetune form=bi) on a tiny sentence encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distilkit import cli
from distilkit.biencoder import BiEncoder, tokenize_pairs
from distilkit.errors import DistilkitError
from distilkit.finetune import FinetuneConfig, _load_biencoder, finetune
from distilkit.metrics import compute_metrics
from distilkit.modeling import load_tokenizer
from distilkit.sentence import sentence_spec
from distilkit.tasks import get_task, read_task

GLUE = Path(__file__).parent / "fixtures" / "glue"


def _cfg(model, out, **fields) -> FinetuneConfig:
    base = dict(task="stsb", data_dir=str(GLUE), batch_size=4, threads=1, form="bi", log_every=0)
    return FinetuneConfig(model=str(model), out=str(out), **(base | fields))


def test_a_pair_is_scored_by_the_cosine_of_each_sentence_pooled_alone(sentence_teacher):
    model = _load_biencoder(str(sentence_teacher), "t", get_task("stsb")).eval()
    tok = load_tokenizer(str(sentence_teacher))
    ex = read_task("stsb", "dev", str(GLUE))
    batch = tokenize_pairs(tok, ex, 64, torch.device("cpu"))
    with torch.no_grad():
        got = model(**batch).logits  # (B, 1)

        def mean_pool(texts):  # the plain formula: masked mean of the last states
            enc = tok(texts, padding=True, return_tensors="pt")
            h = model.encoder(**enc)[0]
            m = enc["attention_mask"][..., None].float()
            return (h * m).sum(1) / m.sum(1)

        a = mean_pool([e.text_a for e in ex])
        b = mean_pool([e.text_b for e in ex])
    assert got.shape == (len(ex), 1)
    torch.testing.assert_close(got[:, 0], 5.0 * F.cosine_similarity(a, b, dim=-1))


def test_a_vanishing_lr_scores_what_the_zero_shot_cosine_scores(sentence_teacher, tmp_path):
    # The bi-encoder's evaluation path is the zero-shot protocol; with (almost) no update the
    # two agree, so a fine-tuned score above zero-shot is a gain of training, not of the metric.
    result = finetune(_cfg(sentence_teacher, tmp_path / "o", lr=1e-12, epochs=1))
    from transformers import AutoModel

    from distilkit.zeroshot import embed

    enc = AutoModel.from_pretrained(sentence_teacher)
    tok = load_tokenizer(str(sentence_teacher))
    ex = read_task("stsb", "dev", str(GLUE))
    cos = F.cosine_similarity(
        embed(enc, tok, [e.text_a for e in ex]), embed(enc, tok, [e.text_b for e in ex]), dim=-1
    )
    zero_shot = compute_metrics("stsb", cos.numpy(), np.array([e.label for e in ex]))
    assert result["metrics"]["spearman"] == pytest.approx(zero_shot["spearman"], abs=1e-4)
    assert result["metrics"]["pearson"] == pytest.approx(zero_shot["pearson"], abs=1e-4)


def test_training_moves_the_cosines_and_saves_a_sentence_encoder(sentence_teacher, tmp_path):
    out = tmp_path / "o"
    result = finetune(_cfg(sentence_teacher, out, lr=1e-3, epochs=30, save_model=True))
    run = result["runs"][0]
    assert run["train_loss_last"] < 0.5 * run["train_loss_first"]
    saved = out / "seed-42" / "model"
    # Still a sentence encoder, with the teacher's pooling and normalisation, no new head.
    assert sentence_spec(saved) == sentence_spec(sentence_teacher)
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    assert result["config"]["form"] == "bi"


def test_a_plain_encoder_is_mean_pooled_and_saved_without_sentence_files(tiny_teacher, tmp_path):
    model = _load_biencoder(str(tiny_teacher), "t", get_task("stsb"))
    assert isinstance(model, BiEncoder) and model.spec.pooling == "mean"
    assert not model.spec.normalize
    # The dropout override reaches the encoder, as it reaches a classifier's.
    dropped = _load_biencoder(str(tiny_teacher), "t", get_task("stsb"), dropout=0.3)
    assert dropped.encoder.config.hidden_dropout_prob == 0.3
    assert model.encoder.config.hidden_dropout_prob != 0.3
    finetune(_cfg(tiny_teacher, tmp_path / "o", max_steps=1, save_model=True))
    assert not (tmp_path / "o" / "seed-42" / "model" / "modules.json").exists()


@pytest.mark.parametrize("task", ["sst2", "classification"])
def test_form_bi_refuses_other_tasks_before_any_work(sentence_teacher, tmp_path, task):
    with pytest.raises(DistilkitError, match=f"form=bi .* not {task}; use form=cross"):
        finetune(_cfg(sentence_teacher, tmp_path / "o", task=task))
    assert not (tmp_path / "o").exists()


def test_the_cli_takes_form_and_refuses_a_bad_value(sentence_teacher, tmp_path, capsys):
    base = ["finetune", "--model", str(sentence_teacher), "--task", "stsb"]
    base += ["--data-dir", str(GLUE), "--out", str(tmp_path / "o")]
    assert cli.main([*base, "--form", "bi", "max_steps=1", "threads=1"]) == 0
    written = json.loads((tmp_path / "o" / "metrics.json").read_text())
    # A bi-encoder score is not the GLUE protocol's STS-B: it is named apart.
    assert written["config"]["form"] == "bi" and written["task"] == "stsb-bi"
    assert cli.main([*base, "--overwrite", "form=tri"]) == 2
    assert "'form' must be 'cross' or 'bi'" in capsys.readouterr().err


def test_a_broken_pooling_config_fails_before_an_earlier_result_is_replaced(
    sentence_teacher, tmp_path
):
    import shutil

    out = tmp_path / "o"
    finetune(_cfg(sentence_teacher, out, max_steps=1))
    broken = tmp_path / "broken"
    shutil.copytree(sentence_teacher, broken)
    (broken / "modules.json").write_text("{oops")
    with pytest.raises(DistilkitError, match="not a valid sentence-transformers module list"):
        finetune(_cfg(broken, out, max_steps=1), overwrite=True)
    assert (out / "metrics.json").is_file()
