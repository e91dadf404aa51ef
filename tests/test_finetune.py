"""Fine-tuning on GLUE fixtures with tiny random models; the shipped config; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distilkit import cli
from distilkit.config import ConfigError
from distilkit.errors import DistilkitError
from distilkit.finetune import (
    FinetuneRecipes,
    _loss,
    build_config,
    check_loading_info,
    finetune,
    load_recipes,
    predict,
)
from distilkit.modeling import resolve_model
from distilkit.tasks import TASKS, Example

ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(__file__).parent / "fixtures" / "glue"
RECIPES = ROOT / "configs" / "finetune.yaml"


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """A tiny BERT (token types, pooler) and a tiny DistilBertForMaskedLM (what distilkit's
    students are: no token types, no pooler), both with the packaged MiniLM tokenizer."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertForMaskedLM

    tok = _tokenizer()
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    student = DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    )
    paths = {}
    for name, model in (("bert", bert), ("student", student)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def test_shipped_config_loads_and_covers_every_task():
    recipes = load_recipes(RECIPES)
    assert isinstance(recipes, FinetuneRecipes)
    assert set(TASKS) <= set(recipes.tasks)
    cfg = build_config("mrpc", RECIPES, model="m", data_dir="d", out="o")
    assert (cfg.batch_size, cfg.epochs, cfg.lr) == (16, 5, 2e-5)
    assert build_config("cola", RECIPES).max_length == 64
    assert build_config("qnli", RECIPES).max_length == 128  # from defaults
    # Precedence: fields over the task section, overrides over everything.
    cfg = build_config("mrpc", RECIPES, ["lr=3.0e-5"], epochs=2)
    assert (cfg.lr, cfg.epochs) == (3e-5, 2)
    assert build_config("SST-2", RECIPES).task == "sst2"


def test_bad_recipes_fail_on_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  cola:\n    learning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match="unknown config key 'tasks.cola.learning_rate'"):
        load_recipes(bad)
    bad.write_text("tasks:\n  colaa: {}\n")
    with pytest.raises(DistilkitError, match="unknown task 'colaa'"):
        load_recipes(bad)
    bad.write_text("squad:\n  alpha_kd: 2.0\n")
    with pytest.raises(ConfigError, match="alpha_kd"):
        load_recipes(bad)


def _read(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_two_step_cola_two_seeds_writes_metrics(tiny_models, tmp_path):
    cfg = build_config(
        "cola",
        RECIPES,
        ["max_steps=2", "batch_size=4", "threads=1"],
        model=tiny_models["bert"],
        data_dir=str(GLUE),
        out=str(tmp_path / "cola"),
        seeds=2,
    )
    result = finetune(cfg)
    written = _read(tmp_path / "cola")
    assert written["score"] == result["score"]
    assert written["task"] == "cola" and written["n_train"] == 8 and written["n_dev"] == {"dev": 6}
    assert [r["seed"] for r in written["runs"]] == [42, 43]
    assert all(r["steps"] == 2 for r in written["runs"])
    assert set(written["metrics"]) == {"mcc", "score"}
    values = written["summary"]["dev"]["mcc"]["values"]
    assert written["summary"]["dev"]["mcc"]["median"] == pytest.approx(float(np.median(values)))
    assert written["parameters"]["total"] > 0


def test_two_step_stsb_regression_with_a_distilbert_student(tiny_models, tmp_path):
    cfg = build_config(
        "stsb",
        RECIPES,
        ["max_steps=2", "batch_size=4", "save_model=true", "threads=1"],
        model=tiny_models["student"],
        data_dir=str(GLUE),
        out=str(tmp_path / "s"),
    )
    result = finetune(cfg)
    assert set(result["metrics"]) == {"pearson", "spearman", "score"}
    assert result["metrics"]["score"] == pytest.approx(
        (result["metrics"]["pearson"] + result["metrics"]["spearman"]) / 2
    )
    saved = json.loads((tmp_path / "s" / "seed-42" / "model" / "config.json").read_text())
    assert len(saved["id2label"]) == 1 and saved["problem_type"] == "regression"
    assert saved["architectures"] == ["DistilBertForSequenceClassification"]


def test_mnli_scores_matched_and_mismatched(tiny_models, tmp_path):
    cfg = build_config(
        "mnli",
        RECIPES,
        ["max_steps=1", "threads=1"],
        model=tiny_models["student"],
        data_dir=str(GLUE),
        out=str(tmp_path / "m"),
    )
    result = finetune(cfg)
    assert result["main_split"] == "dev_matched"
    assert set(result["summary"]) == {"dev_matched", "dev_mismatched"}
    assert result["n_dev"] == {"dev_matched": 3, "dev_mismatched": 2}


def test_the_loop_learns_a_separable_task(tiny_models, tmp_path):
    # A task a 2-layer model learns in a few dozen steps: the loop must actually train.
    rows = [
        {"text": f"{word} {word} {word}", "label": label}
        for word, label in (("excellent", "pos"), ("terrible", "neg"))
        for _ in range(16)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = build_config(
        "classification",
        RECIPES,
        [
            "lr=1.0e-3",
            "epochs=20",
            "batch_size=8",
            "warmup_ratio=0.0",
            "dropout=0.0",
            "classification.dev_fraction=0.25",
            "threads=1",
        ],
        model=tiny_models["bert"],
        data_dir=str(path),
        out=str(tmp_path / "c"),
    )
    result = finetune(cfg)
    run = result["runs"][0]
    assert run["train_loss_last"] < 0.5 * run["train_loss_first"]
    assert result["metrics"]["accuracy"] == 1.0


def test_predict_restores_example_order(tiny_models):
    from transformers import AutoModelForSequenceClassification

    tok = _tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    examples = [
        Example("short", None, 0),
        Example("a much longer sentence here", None, 1),
        Example("mid length one", None, 0),
    ]
    batched = predict(model, tok, examples, 32, 2, torch.device("cpu"))
    single = np.concatenate(
        [predict(model, tok, [e], 32, 1, torch.device("cpu")) for e in examples]
    )
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_regression_loss_does_not_broadcast():
    logits = torch.tensor([[1.0], [2.0], [4.0]])  # (B, 1)
    labels = torch.tensor([1.0, 2.0, 3.0])  # (B,)
    assert _loss(logits, labels, TASKS["stsb"]).item() == pytest.approx(1 / 3)


def test_missing_encoder_weights_is_an_error():
    check_loading_info(
        "m", {"missing_keys": ["classifier.weight", "bert.pooler.dense.weight"]}, ("classifier",)
    )
    with pytest.raises(DistilkitError, match="missing encoder weights"):
        check_loading_info(
            "m", {"missing_keys": ["bert.embeddings.word_embeddings.weight"]}, ("classifier",)
        )


def test_cli_runs_and_reports_errors_in_one_line(tiny_models, tmp_path, capsys):
    rc = cli.main(
        [
            "finetune",
            "--model",
            tiny_models["student"],
            "--task",
            "sst2",
            "--data-dir",
            str(GLUE),
            "--out",
            str(tmp_path / "o"),
            "--config",
            str(RECIPES),
            "max_steps=1",
            "threads=1",
        ]
    )
    assert rc == 0
    assert "SST-2 dev (1 seed(s), median): accuracy=" in capsys.readouterr().out
    assert _read(tmp_path / "o")["task"] == "sst2"
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text("x\t1\n")
    rc = cli.main(
        [
            "finetune",
            "--model",
            tiny_models["student"],
            "--task",
            "cola",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o2"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("distilkit finetune: error: ") and "CoLA/train.tsv:1:" in err
    assert "\n" not in err
