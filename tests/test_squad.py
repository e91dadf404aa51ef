"""SQuAD: reading, doc-stride features, answer extraction, the distillation loss, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distilkit.errors import DistilkitError
from distilkit.metrics import normalize_answer
from distilkit.modeling import resolve_model
from distilkit.squad import (
    SquadConfig,
    build_squad_config,
    check_windows,
    eval_features,
    finetune_squad,
    predict_answers,
    qa_distillation_loss,
    read_squad,
    split_by_paragraph,
    train_features,
)

SQUAD = Path(__file__).parent / "fixtures" / "squad" / "tiny-v1.1.json"
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory, tok) -> dict[str, str]:
    """A tiny DistilBERT student (MLM folder, as distilkit writes them) and a tiny BERT QA
    'teacher' whose QA head is saved, so it counts as SQuAD-fine-tuned."""
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    root = tmp_path_factory.mktemp("qa")
    torch.manual_seed(0)
    models = {
        "student": DistilBertForMaskedLM(
            DistilBertConfig(
                vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64
            )
        ),
        "teacher": BertForQuestionAnswering(
            BertConfig(
                vocab_size=tok.vocab_size,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            )
        ),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return {name: str(root / name) for name in models}


def test_read_squad_fixture():
    examples = read_squad(SQUAD)
    assert len(examples) == 10
    first = examples[0]
    assert first.id == "q001" and first.question == "When was the lighthouse built?"
    text, start = first.answers[0]
    assert first.context[start : start + len(text)] == "1871"
    assert len({e.paragraph for e in examples}) == 4


def test_read_squad_errors(tmp_path):
    doc = json.loads(SQUAD.read_text())
    doc["data"][1]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DistilkitError, match="question q008: answer '120 kilometres' is not at"):
        read_squad(bad)
    bad.write_text('{"data": [\n  {"title": "x",\n "paragraphs": [}\n]}')
    with pytest.raises(DistilkitError, match=r"bad\.json:3: invalid JSON"):
        read_squad(bad)
    bad.write_text('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{}]}]}]}')
    with pytest.raises(
        DistilkitError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing or bad 'id'"
    ):
        read_squad(bad)


def test_split_holds_out_whole_paragraphs():
    train, dev = split_by_paragraph(read_squad(SQUAD), 0.25, seed=0)
    assert len(train) + len(dev) == 10 and dev
    assert not {e.context for e in train} & {e.context for e in dev}


def test_doc_stride_windows_contain_the_answers(tok):
    cfg = SquadConfig(max_length=48, doc_stride=16)
    examples = read_squad(SQUAD)[:4]  # the long paragraph
    feats = train_features(tok, examples, cfg)
    assert len(feats) > len(examples)  # the context needed several windows
    assert all(len(f["input_ids"]) <= 48 for f in feats)
    found = set()
    for f in feats:
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0  # answer not in this window -> CLS
            continue
        span = tok.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1])
        found.add(normalize_answer(span))
    assert found == {normalize_answer(e.answers[0][0]) for e in examples}


class _Oracle(torch.nn.Module):
    """Puts all logit mass on the gold span of each window (looked up by its input ids)."""

    def __init__(self, gold: dict[tuple[int, ...], tuple[int, int]]):
        super().__init__()
        self.gold = gold
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        start = torch.full(input_ids.shape, -10.0)
        end = torch.full(input_ids.shape, -10.0)
        for b, row in enumerate(input_ids.tolist()):
            n = int(attention_mask[b].sum())
            s, e = self.gold[tuple(row[:n])]
            start[b, s] = 10.0 if s else -5.0
            end[b, e] = 10.0 if e else -5.0
        return SimpleNamespace(start_logits=start, end_logits=end)


def test_answer_extraction_recovers_gold_spans(tok):
    cfg = SquadConfig(max_length=48, doc_stride=16, eval_batch_size=3)
    examples = read_squad(SQUAD)
    gold = {
        tuple(f["input_ids"]): (f["start_positions"], f["end_positions"])
        for f in train_features(tok, examples, cfg)
    }
    preds = predict_answers(
        _Oracle(gold), tok, examples, eval_features(tok, examples, cfg), cfg, torch.device("cpu")
    )
    # Original casing and punctuation come back from the context, not from the tokens.
    assert preds["q003"] == "Margaret Hale"
    assert preds == {e.id: e.answers[0][0] for e in examples}


def test_distillation_loss_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    start, end = torch.randn(3, 9), torch.randn(3, 9)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    loss = qa_distillation_loss(start, end, start.clone(), end.clone(), mask, temperature=2.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert qa_distillation_loss(start, end, end, start, mask, 2.0).item() > 0.01


def test_distillation_loss_matches_kl_div_reference():
    torch.manual_seed(1)
    s_start, s_end, t_start, t_end = (torch.randn(4, 7) for _ in range(4))
    mask = torch.ones(4, 7)
    T = 3.0

    def ref(s, t):
        return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")

    expected = T**2 * (ref(s_start, t_start) + ref(s_end, t_end)) / 2
    got = qa_distillation_loss(s_start, s_end, t_start, t_end, mask, T)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_loss_ignores_padding():
    torch.manual_seed(2)
    s, t = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8)
    mask = torch.ones(2, 8)
    mask[:, 5:] = 0
    base = qa_distillation_loss(s, s, t, t, mask, 2.0)
    t2 = t.clone()
    t2[:, 5:] += 100.0  # garbage at padded positions must not matter
    s2 = s.detach().clone()
    s2[:, 5:] -= 50.0
    assert qa_distillation_loss(s2, s2, t2, t2, mask, 2.0).item() == pytest.approx(base.item())
    # And equals the loss on the unpadded slice.
    short = qa_distillation_loss(s[:, :5], s[:, :5], t[:, :5], t[:, :5], mask[:, :5], 2.0)
    assert base.item() == pytest.approx(short.item(), rel=1e-6)
    base.backward()
    assert torch.isfinite(s.grad).all() and (s.grad[:, 5:] == 0).all()


def test_squad_config_section_of_the_shipped_recipes():
    cfg = build_squad_config(RECIPES, ["temperature=3.0"], model="m", train_file="t", out="o")
    assert (cfg.max_length, cfg.doc_stride, cfg.alpha_kd, cfg.temperature) == (384, 128, 0.5, 3.0)


def test_tiny_run_with_the_second_distillation_step(tiny_qa, tmp_path):
    common = ["max_length=48", "doc_stride=16", "max_steps=2", "batch_size=4", "threads=1"]
    teacher_out = tmp_path / "teacher"
    cfg = build_squad_config(
        RECIPES, common, model=tiny_qa["teacher"], train_file=str(SQUAD), out=str(teacher_out)
    )
    finetune_squad(cfg)
    cfg = build_squad_config(
        RECIPES,
        common,
        model=tiny_qa["student"],
        train_file=str(SQUAD),
        out=str(tmp_path / "student"),
        teacher=str(teacher_out / "model"),
    )
    result = finetune_squad(cfg)
    written = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert written["kind"] == "squad-distil" and written["steps"] == 2
    assert set(written["metrics"]) == {"exact_match", "f1", "score"}
    assert written["train_loss_last"]["kd"] > 0
    preds = json.loads((tmp_path / "student" / "predictions.json").read_text())
    _, dev = split_by_paragraph(read_squad(SQUAD), cfg.dev_fraction, cfg.split_seed)
    assert set(preds) == {e.id for e in dev} and len(dev) == result["n_dev"]["dev"]


def test_teacher_without_qa_head_is_rejected(tiny_qa, tmp_path):
    cfg = build_squad_config(
        RECIPES,
        ["max_length=48", "doc_stride=16", "max_steps=1"],
        model=tiny_qa["student"],
        train_file=str(SQUAD),
        out=str(tmp_path),
        teacher=tiny_qa["student"],
    )
    with pytest.raises(DistilkitError, match="teacher .* has no fine-tuned QA head"):
        finetune_squad(cfg)


# ----------------------------------------------------------------------------- bad inputs, output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=.nan", "config key 'lr' must be a finite number > 0, got nan"),
        ("temperature=.nan", "config key 'temperature' must be a finite number > 0, got nan"),
        ("grad_clip=.inf", "config key 'grad_clip' must be a finite number >= 0, got inf"),
        ("max_steps=-1", "config key 'max_steps' must be >= 0"),
        ("max_train_examples=-3", "config key 'max_train_examples' must be >= 0"),
        ("doc_stride=-1", "config key 'doc_stride' must be >= 0"),
    ],
)
def test_invalid_numbers_fail_when_the_config_is_built(override, message):
    from distilkit.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        build_squad_config(RECIPES, [override], model="m", train_file="t", out="o")
    assert str(exc.value) == message


def test_a_question_that_leaves_no_room_for_the_context(tok):
    # The tokenizer would panic in Rust (a PanicException, not even an Exception).
    examples = read_squad(SQUAD)
    check_windows(tok, examples, SquadConfig(max_length=48, doc_stride=16))
    with pytest.raises(DistilkitError) as exc:
        check_windows(tok, examples, SquadConfig(max_length=12, doc_stride=2))
    assert str(exc.value) == (
        "max_length 12 leaves 1 tokens for the context next to the longest question (q009: 8 "
        "tokens and 3 special tokens), not more than doc_stride 2; lower doc_stride, or raise "
        "max_length (up to the model's position table)"
    )


def test_the_output_folder_is_claimed(tiny_qa, tmp_path):
    common = ["max_length=48", "doc_stride=16", "max_steps=1", "batch_size=4", "threads=1"]
    out = tmp_path / "q"

    def cfg(**fields):
        return build_squad_config(RECIPES, common, train_file=str(SQUAD), out=str(out), **fields)

    finetune_squad(cfg(model=tiny_qa["teacher"]))
    assert {p.name for p in out.iterdir()} == {
        ".distilkit-folder.json",
        ".distilkit.lock",
        "metrics.json",
        "model",
        "predictions.json",
    }
    with pytest.raises(DistilkitError, match=r"is not empty \(use --overwrite to replace it\)"):
        finetune_squad(cfg(model=tiny_qa["teacher"]))
    # Its model as the teacher of the next run into the same folder: never deleted.
    with pytest.raises(DistilkitError) as exc:
        finetune_squad(cfg(model=tiny_qa["student"], teacher=str(out / "model")), overwrite=True)
    assert str(exc.value) == (
        f"output folder {out} holds an input of this command (the teacher {out / 'model'}); "
        "refusing to delete it even with --overwrite; choose another --out"
    )
    assert (out / "model" / "model.safetensors").is_file()
    finetune_squad(cfg(model=tiny_qa["teacher"]), overwrite=True)
    assert json.loads((out / "metrics.json").read_text())["kind"] == "squad"


def test_a_non_finite_metric_is_never_written(tiny_qa, tmp_path, monkeypatch):
    import distilkit.squad

    nan = float("nan")
    monkeypatch.setattr(
        distilkit.squad, "squad_metrics", lambda *a: {"exact_match": nan, "f1": 0.0, "score": nan}
    )
    out = tmp_path / "q"
    cfg = build_squad_config(
        RECIPES,
        ["max_length=48", "doc_stride=16", "max_steps=1", "batch_size=4", "threads=1"],
        model=tiny_qa["student"],
        train_file=str(SQUAD),
        out=str(out),
    )
    with pytest.raises(DistilkitError) as exc:
        finetune_squad(cfg)
    assert str(exc.value) == (
        "metrics.json would hold a non-finite value (score = nan); nothing was written"
    )
    assert not out.exists()  # predictions.json and model/ were in the scratch folder
