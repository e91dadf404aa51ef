from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

from distilkit.errors import DistilkitError
from distilkit.modeling import encoder_of
from distilkit.student import check_layers, default_layers, init_student


def test_default_layers_match_the_paper_and_include_first_and_last():
    assert default_layers(12) == [0, 2, 4, 7, 9, 11]
    assert default_layers(6) == [0, 3, 5]
    assert default_layers(4) == [0, 3]
    assert default_layers(24, 6) == [0, 5, 9, 14, 18, 23]
    assert default_layers(6, 1) == [5]


@pytest.mark.parametrize(
    "layers,msg",
    [
        ([0, 4], "out of range"),
        ([-1, 2], "out of range"),
        ([2, 0], "increasing"),
        ([1, 1], "duplicated"),
        ([], "empty"),
    ],
)
def test_bad_layers_are_rejected(layers, msg):
    with pytest.raises(DistilkitError, match=msg):
        check_layers(layers, 4)


def test_bert_teacher_gives_distilbert_student_with_copied_layers(tiny_teacher, tmp_path):
    r = init_student(tiny_teacher, tmp_path / "s", layers=[0, 3])
    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "s")
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher)
    assert type(student).__name__ == "DistilBertForMaskedLM"
    assert r.layers == [0, 3] and r.head_from_teacher
    names = [n for n, _ in student.named_parameters()]
    assert not any("token_type" in n or "pooler" in n for n in names)
    for k, j in enumerate([0, 3]):
        s_layer = student.distilbert.transformer.layer[k]
        t_layer = teacher.bert.encoder.layer[j]
        assert torch.equal(s_layer.attention.q_lin.weight, t_layer.attention.self.query.weight)
        assert torch.equal(s_layer.ffn.lin2.bias, t_layer.output.dense.bias)
        assert torch.equal(s_layer.output_layer_norm.weight, t_layer.output.LayerNorm.weight)
    assert torch.equal(
        student.vocab_transform.weight, teacher.cls.predictions.transform.dense.weight
    )
    assert torch.equal(student.vocab_projector.bias, teacher.cls.predictions.bias)
    # Output projection stays tied to the word embeddings, as in the teacher.
    assert student.vocab_projector.weight.data_ptr() == (
        student.distilbert.embeddings.word_embeddings.weight.data_ptr()
    )


def test_full_depth_student_computes_exactly_the_teacher(tiny_teacher, tmp_path):
    # Folding token_type_embeddings[0] into the positions keeps the function identical.
    init_student(tiny_teacher, tmp_path / "s", layers=[0, 1, 2, 3])
    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "s").eval()
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher).eval()
    ids = torch.tensor([[2, 10, 20, 30, 40, 3], [2, 11, 12, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        s = student(input_ids=ids, attention_mask=mask).logits
        t = teacher(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(s[mask.bool()], t[mask.bool()], atol=1e-4, rtol=1e-4)


def test_half_depth_student_layer_k_equals_teacher_layer_output(tiny_teacher, tmp_path):
    init_student(tiny_teacher, tmp_path / "s")  # default [0, 3]
    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "s").eval()
    teacher = AutoModelForMaskedLM.from_pretrained(tiny_teacher).eval()
    ids = torch.tensor([[2, 10, 20, 30, 40, 3]])
    with torch.no_grad():
        t_h = encoder_of(teacher)(input_ids=ids, output_hidden_states=True).hidden_states
        s_h = encoder_of(student)(input_ids=ids, output_hidden_states=True).hidden_states
    # Student layer 0 = teacher layer 0 on the same input (embeddings are identical).
    torch.testing.assert_close(s_h[1], t_h[1], atol=1e-5, rtol=1e-5)


def test_headless_teacher_gives_fresh_head_and_says_so(headless_teacher, tmp_path, caplog):
    r = init_student(headless_teacher, tmp_path / "s")
    assert not r.head_from_teacher
    assert "no masked-LM head" in caplog.text
    AutoModelForMaskedLM.from_pretrained(tmp_path / "s")


def test_roberta_teacher_gives_roberta_student(tmp_path, tiny_tok):
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = RobertaConfig(
        vocab_size=len(tiny_tok),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=70,
        pad_token_id=0,
    )
    RobertaForMaskedLM(cfg).save_pretrained(tmp_path / "t")
    tiny_tok.save_pretrained(tmp_path / "t")
    r = init_student(tmp_path / "t", tmp_path / "s")
    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "s")
    teacher = AutoModelForMaskedLM.from_pretrained(tmp_path / "t")
    assert type(student).__name__ == "RobertaForMaskedLM"
    assert student.config.num_hidden_layers == 2 and r.layers == [0, 3]
    torch.testing.assert_close(
        student.roberta.encoder.layer[1].output.dense.weight,
        teacher.roberta.encoder.layer[3].output.dense.weight,
    )
    torch.testing.assert_close(student.lm_head.dense.weight, teacher.lm_head.dense.weight)


def test_refuses_non_empty_output_and_missing_weights(tiny_teacher, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x").write_text("x")
    with pytest.raises(DistilkitError, match="not empty"):
        init_student(tiny_teacher, tmp_path / "s")
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(DistilkitError, match="no weights"):
        init_student(empty, tmp_path / "s2")
