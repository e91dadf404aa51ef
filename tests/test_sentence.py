"""Sentence-embedding distillation: layout detection, sentence cutting, the objective end to end,
and a student that SentenceTransformer loads with the teacher's pooling."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from conftest import make_sentence_encoder
from distilkit.distill import DistillConfig, distill
from distilkit.errors import DistilkitError
from distilkit.loop import OptimConfig, TrainConfig
from distilkit.sentence import (
    EmbeddingLossConfig,
    SentenceSpec,
    neighbour_pairs,
    pool_embeddings,
    sentence_spec,
    split_rows,
    split_sentences,
)


def _cfg(teacher, data, out, **train) -> DistillConfig:
    base = dict(
        batch_size=8,
        max_steps=20,
        log_every=1,
        eval_batches=4,
        precision="fp32",
        optim=OptimConfig(lr=2e-3, warmup_ratio=0.1),
    )
    base.update(train)
    return DistillConfig(
        teacher=str(teacher),
        data=str(data),
        out_dir=str(out),
        student_layers=[0, 3],
        train=TrainConfig(**base),
    )


def test_sentence_spec_reads_the_layout(sentence_teacher, tiny_teacher, tmp_path, tiny_tok):
    spec = sentence_spec(sentence_teacher)
    assert spec == SentenceSpec("mean", True, 64, "1_Pooling")
    assert sentence_spec(tiny_teacher) is None  # a plain MLM folder
    cls = make_sentence_encoder(tmp_path / "cls", tiny_tok, pooling="cls", normalize=False)
    assert sentence_spec(cls) == SentenceSpec("cls", False, 64, "1_Pooling")
    (cls / "modules.json").write_text("{not json")
    with pytest.raises(DistilkitError, match="not a valid sentence-transformers"):
        sentence_spec(cls)


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("1_Pooling/config.json", "[]", "not a pooling config"),
        ("sentence_bert_config.json", "[256]", "not a sentence-transformers config"),
        ("sentence_bert_config.json", '{"max_seq_length": "long"}', "positive integer"),
        ("sentence_bert_config.json", '{"max_seq_length": 0}', "positive integer"),
    ],
)
def test_malformed_sentence_files_are_one_line_errors(tmp_path, tiny_tok, file, text, message):
    folder = make_sentence_encoder(tmp_path / "m", tiny_tok)
    (folder / file).write_text(text)
    with pytest.raises(DistilkitError, match=message):
        sentence_spec(folder)


def test_split_sentences_cuts_at_ends_and_at_the_length_cap():
    # [CLS]=2, [SEP]=3, '.'=5, pad=0; body: 7 8 9 . 10 11 . 12 | 13 14 15 16 17 18
    ids = torch.tensor(
        [[2, 7, 8, 9, 5, 10, 11, 5, 12, 3, 0], [2, 13, 14, 15, 16, 17, 18, 3, 0, 0, 0]]
    )
    got = split_sentences(ids, [10, 8], {5}, min_tokens=2, max_tokens=4)
    assert got == [[7, 8, 9, 5], [10, 11, 5], [13, 14, 15, 16], [17, 18]]
    # A trailing piece shorter than min_tokens is dropped; "12" is one token.
    assert [12] not in got


def test_neighbour_pairs_join_consecutive_sentences_of_one_sequence_with_sep():
    ids = torch.tensor([[2, 7, 8, 5, 9, 10, 5, 11, 12, 5, 3], [2, 13, 14, 5, 3, 0, 0, 0, 0, 0, 0]])
    rows = split_rows(ids, [11, 5], {5}, min_tokens=2, max_tokens=8)
    assert rows == [[[7, 8, 5], [9, 10, 5], [11, 12, 5]], [[13, 14, 5]]]
    # (s0, s1) of the first sequence; s2 has no partner; a lone sentence makes no pair.
    assert neighbour_pairs(rows, sep_id=3) == [[7, 8, 5, 3, 9, 10, 5]]


def test_pairs_spans_need_the_token_loss():
    with pytest.raises(DistilkitError, match="alpha_tok"):
        EmbeddingLossConfig(spans="pairs").validate()
    EmbeddingLossConfig(spans="pairs", alpha_tok=1.0).validate()


def test_pooling_matches_sentence_transformers_definition():
    h = torch.randn(2, 4, 3)
    att = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    mean = pool_embeddings(h, att, SentenceSpec("mean", False, None, ""))
    assert torch.allclose(mean[0], h[0, :2].mean(0)) and torch.allclose(mean[1], h[1].mean(0))
    mx = pool_embeddings(h, att, SentenceSpec("max", True, None, ""))
    assert torch.allclose(mx[0], torch.nn.functional.normalize(h[0, :2].max(0).values, dim=0))


def test_sentence_teacher_gets_the_embedding_objective_and_a_sentence_transformer(
    sentence_teacher, tiny_data, tmp_path, caplog
):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "run"
    caplog.set_level("INFO")
    r = distill(_cfg(sentence_teacher, tiny_data, out))
    assert "is a sentence encoder" in caplog.text
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["kind"] == "train"]
    assert {"loss_emb", "loss_sim"} <= set(train[0])
    emb = [x["loss_emb"] for x in train]
    assert sum(emb[-4:]) < 0.8 * sum(emb[:4]), emb
    assert {"embedding_cosine", "neighbour_agreement"} <= set(r.final_eval)
    assert "teacher_accuracy" not in r.final_eval
    assert json.loads((out / "results.json").read_text())["objective"] == "embedding"

    # Loads as a SentenceTransformer with the teacher's pooling and normalisation, and gives
    # the embeddings distilkit's own pooling gives on the plain encoder.
    st = SentenceTransformer(str(out), device="cpu")
    texts = ["the river began near the old town .", "a king was born ."]
    got = torch.from_numpy(st.encode(texts))
    tok = st.tokenizer
    batch = tok(texts, padding=True, return_tensors="pt")
    enc = AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        hidden = enc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    ours = pool_embeddings(hidden, batch["attention_mask"], sentence_spec(sentence_teacher))
    assert torch.allclose(got, ours, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_embedding_objective_on_a_plain_teacher_is_refused(tiny_teacher, tiny_data, tmp_path):
    cfg = _cfg(tiny_teacher, tiny_data, tmp_path / "x", max_steps=2)
    cfg.loss.objective = "embedding"
    with pytest.raises(DistilkitError, match="needs a sentence-transformers teacher"):
        distill(cfg)
    assert not (tmp_path / "x" / "student-init").exists()


def test_triple_objective_can_still_be_chosen_for_a_sentence_teacher(
    sentence_teacher, tiny_data, tmp_path
):
    cfg = _cfg(sentence_teacher, tiny_data, tmp_path / "t", max_steps=2)
    cfg.loss.objective = "triple"
    r = distill(cfg)
    assert json.loads((tmp_path / "t" / "results.json").read_text())["objective"] == "triple"
    # A headless teacher's random head gives no meaningful accuracy or agreement.
    assert "agreement" not in r.final_eval and "teacher_accuracy" not in r.final_eval


def test_pairs_spans_train_the_token_loss_on_sentence_pairs(sentence_teacher, tiny_data, tmp_path):
    cfg = _cfg(sentence_teacher, tiny_data, tmp_path / "p", max_steps=6)
    cfg.loss.embedding = EmbeddingLossConfig(alpha_sim=0.0, alpha_tok=1.0, spans="pairs")
    distill(cfg)
    rows = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["kind"] == "train"]
    assert {"loss_emb", "loss_tok"} <= set(train[0]) and "loss_sim" not in train[0]
    assert all(0 <= x["loss_tok"] <= 2 for x in train)


def test_aligned_layer_targets_point_at_the_input_of_the_next_copied_layer():
    from distilkit.student import aligned_targets

    assert aligned_targets([0, 3, 5], 6) == [3, 5, 6]
    assert aligned_targets([0, 2, 4, 7, 9, 11], 12) == [2, 4, 7, 9, 11, 12]
    assert aligned_targets([0, 1, 2, 3], 4) == [1, 2, 3, 4]


def test_layer_loss_is_zero_for_a_student_that_keeps_every_layer(
    sentence_teacher, tiny_data, tmp_path
):
    # Every layer kept: the student computes the teacher's function, so each layer's output is
    # exactly the aligned teacher state, and L_layers starts at 0 (up to float error); with
    # layers dropped it does not.
    def first_loss(layers: list[int], name: str) -> float:
        cfg = _cfg(sentence_teacher, tiny_data, tmp_path / name, max_steps=1)
        cfg.student_layers = layers
        cfg.train.optim = OptimConfig(lr=1e-12, warmup_ratio=0.0)
        cfg.loss.embedding = EmbeddingLossConfig(
            alpha_emb=0.0, alpha_sim=0.0, alpha_layers=1.0, spans="pairs"
        )
        distill(cfg)
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return next(json.loads(x) for x in rows if json.loads(x)["kind"] == "train")["loss_layers"]

    kept, dropped = first_loss([0, 1, 2, 3], "all"), first_loss([0, 3], "dropped")
    assert abs(kept) < 1e-6
    # A random tiny model's states are nearly parallel, hence the small scale of the gap.
    assert dropped > 100 * max(abs(kept), 1e-7)


def test_chunked_forward_gives_the_losses_of_one_padded_batch(sentence_teacher, monkeypatch):
    import distilkit.sentence as sentence
    from distilkit.sentence import EmbeddingObjective

    teacher = AutoModel.from_pretrained(sentence_teacher).eval()
    torch.manual_seed(0)
    student = AutoModel.from_pretrained(sentence_teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student.eval()
    cfg = EmbeddingLossConfig(alpha_sim=1.0, alpha_tok=1.0, alpha_layers=1.0, spans="pairs")
    obj = EmbeddingObjective(
        student,
        teacher,
        sentence_spec(sentence_teacher),
        cfg,
        {"cls": 2, "sep": 3, "pad": 0},
        [5],
        layer_targets=[2, 4],
    )
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(6, 40, (6, 30), generator=gen)
    ids[:, ::7] = 5  # sentence ends
    ids[:, 0], ids[:, -1] = 2, 3
    lengths = torch.tensor([30, 25, 18, 30, 12, 22])
    att = (torch.arange(30)[None] < lengths[:, None]).long()
    batch = obj.prepare_batch({"original_ids": ids * att, "attention_mask": att})
    norms = {k: float(v) for k, v in obj.rows(batch).items()}
    monkeypatch.setattr(sentence, "_CHUNK", 10_000)
    whole = obj.losses(student, batch, norms)
    monkeypatch.setattr(sentence, "_CHUNK", 2)
    chunked = obj.losses(student, batch, norms)
    assert set(whole) == {"emb", "sim", "tok", "layers"}
    for k in whole:
        assert torch.allclose(whole[k], chunked[k], atol=1e-6), k


def test_mixed_spans_embed_the_sentences_and_their_whole_passages():
    from distilkit.sentence import EmbeddingObjective

    spec = SentenceSpec("mean", True, None, "")
    cfg = EmbeddingLossConfig(spans="mixed", min_tokens=2, max_tokens=8)
    obj = EmbeddingObjective(None, None, spec, cfg, {"cls": 2, "sep": 3, "pad": 0}, [5])
    ids = torch.tensor([[2, 7, 8, 5, 9, 10, 5, 3], [2, 11, 12, 13, 3, 0, 0, 0]])
    att = (ids != 0).long()
    b = obj.prepare_batch({"original_ids": ids, "attention_mask": att})
    rows = [r[1 : int(m.sum()) - 1].tolist() for r, m in zip(b["sent_ids"], b["sent_mask"])]
    # Sentences [7 8 .] [9 10 .] [11 12 13], plus the passage [7 8 . 9 10 .] (the second
    # sequence is one sentence, so it appears as both); sorted by length for the chunks.
    assert sorted(map(tuple, rows)) == sorted(
        [(7, 8, 5), (9, 10, 5), (11, 12, 13), (7, 8, 5, 9, 10, 5), (11, 12, 13)]
    )
    assert [len(r) for r in rows] == sorted(len(r) for r in rows)


def test_frozen_word_embeddings_stay_the_teachers_and_the_rest_trains(
    sentence_teacher, tiny_data, tmp_path
):
    from transformers import AutoModelForMaskedLM

    cfg = _cfg(sentence_teacher, tiny_data, tmp_path / "f", max_steps=4, checkpoint_every=2)
    cfg.freeze_word_embeddings = True
    distill(cfg)
    init = AutoModelForMaskedLM.from_pretrained(tmp_path / "f" / "student-init")
    done = AutoModelForMaskedLM.from_pretrained(tmp_path / "f")
    words = init.get_input_embeddings().weight
    assert torch.equal(done.get_input_embeddings().weight, words)
    moved = [
        n for (n, p), q in zip(init.named_parameters(), done.parameters()) if not torch.equal(p, q)
    ]
    assert any("layer" in n for n in moved), moved
    # A resume that would unfreeze them is a different run: refused, not silently continued.
    cfg2 = _cfg(sentence_teacher, tiny_data, tmp_path / "f", max_steps=6, checkpoint_every=2)
    with pytest.raises(DistilkitError, match="freeze_word_embeddings"):
        distill(cfg2, resume=True)
