"""Fine-tuning on GLUE fixtures with tiny random models; the shipped config; the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distilkit import cli
from distilkit.config import ConfigError
from distilkit.errors import DistilkitError
from distilkit.finetune import (
    SCRATCH,
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


# ----------------------------------------------------------------------------- bad inputs, output


def _cfg(model, out, *overrides, task="sst2", data_dir=GLUE, **fields):
    return build_config(
        task,
        RECIPES,
        ["max_steps=1", "batch_size=4", "threads=1", *overrides],
        model=str(model),
        data_dir=str(data_dir),
        out=str(out),
        **fields,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=.nan", "config key 'lr' must be a finite number > 0, got nan"),
        ("lr=.inf", "config key 'lr' must be a finite number > 0, got inf"),
        ("lr=0", "config key 'lr' must be a finite number > 0, got 0.0"),
        ("grad_clip=.nan", "config key 'grad_clip' must be a finite number >= 0, got nan"),
        ("weight_decay=-1", "config key 'weight_decay' must be a finite number >= 0, got -1.0"),
        ("warmup_ratio=.nan", "config key 'warmup_ratio' must be a finite number in [0, 1), got"),
        ("dropout=2.0", "config key 'dropout' must be a finite number in [0, 1), got 2.0"),
        ("batch_size=0", "config key 'batch_size' must be at least 1"),
        ("epochs=-1", "config key 'epochs' must be at least 1"),
    ],
)
def test_invalid_numbers_fail_when_the_config_is_built(override, message):
    with pytest.raises(ConfigError) as exc:
        build_config("sst2", RECIPES, [override], model="m", data_dir="d", out="o")
    assert str(exc.value).startswith(message)


def test_the_output_folder_is_claimed_like_every_stage(tiny_models, tmp_path):
    out = tmp_path / "ft"
    finetune(_cfg(tiny_models["student"], out, "save_model=true"))
    first = (out / "metrics.json").read_text()
    assert (out / ".distilkit-folder.json").is_file()
    assert (out / "seed-42" / "model" / "config.json").is_file()
    assert not (out / SCRATCH).exists()
    # A second run does not silently replace the first one's results.
    with pytest.raises(DistilkitError) as exc:
        finetune(_cfg(tiny_models["student"], out))
    assert str(exc.value) == f"output folder {out} is not empty (use --overwrite to replace it)"
    assert (out / "metrics.json").read_text() == first
    # --overwrite replaces distilkit's output, but never the model being fine-tuned.
    model = out / "seed-42" / "model"
    weights = (model / "model.safetensors").read_bytes()
    with pytest.raises(DistilkitError) as exc:
        finetune(_cfg(model, out), overwrite=True)
    assert str(exc.value) == (
        f"output folder {out} holds an input of this command (the model {model}); refusing to "
        "delete it even with --overwrite; choose another --out"
    )
    assert (model / "model.safetensors").read_bytes() == weights
    finetune(_cfg(tiny_models["student"], out), overwrite=True)
    assert not (out / "seed-42").exists() and (out / "metrics.json").is_file()


def test_a_second_process_on_the_same_out_is_refused(tiny_models, tmp_path):
    import os

    from distilkit.runfolder import claim_folder

    out = tmp_path / "ft"
    # flock: another open file description conflicts, even in the same process.
    with claim_folder(out, "finetune"), pytest.raises(DistilkitError) as exc:
        finetune(_cfg(tiny_models["student"], out))
    assert str(exc.value).startswith(
        f"output folder {out} is in use by process {os.getpid()} (distilkit finetune, started "
    )
    assert not (out / "metrics.json").exists()


def test_an_interrupted_run_leaves_no_results(tiny_models, tmp_path, monkeypatch, caplog):
    import distilkit.finetune as ft

    calls = []
    original = ft._train_one

    def interrupted_at_the_second_seed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(ft, "_train_one", interrupted_at_the_second_seed)
    out = tmp_path / "ft"
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(tiny_models["student"], out, "save_model=true", seeds=2))
    # The first seed's model had been saved (into the scratch folder): it went with it, and the
    # folder this run created went too.
    assert len(calls) == 2 and not out.exists()
    monkeypatch.undo()
    caplog.set_level("INFO", logger="distilkit.runfolder")
    # A run killed outright (SIGKILL: no cleanup) leaves only its scratch folder, which the
    # next run clears without --overwrite.
    with ft.claim_folder(out, "finetune"):
        (out / SCRATCH / "seed-42" / "model").mkdir(parents=True)
    finetune(_cfg(tiny_models["student"], out))
    assert "holds only what a failed attempt left; clearing it" in caplog.text
    assert (out / "metrics.json").is_file() and not (out / SCRATCH).exists()


def test_non_finite_outputs_write_no_metrics(tiny_models, tmp_path, monkeypatch):
    import distilkit.finetune as ft

    def nan_logits(model, tokenizer, examples, *args, **kwargs):
        return np.full((len(examples), 2), np.nan, dtype=np.float32)

    monkeypatch.setattr(ft, "predict", nan_logits)
    out = tmp_path / "ft"
    with pytest.raises(DistilkitError) as exc:
        finetune(_cfg(tiny_models["student"], out))
    assert str(exc.value) == (
        "the fine-tuned model's outputs are not finite (NaN or inf) for 4 of 4 examples of dev; "
        "training diverged (try a lower lr)"
    )
    assert not out.exists()


def _damaged_copy(src: str, dst: Path, damage) -> Path:
    import shutil

    shutil.copytree(src, dst)
    damage(dst)
    return dst


def _nan_weight(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.endswith("word_embeddings.weight"))
    tensors[name][3, 1] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_damaged_model_folders_give_one_line(tiny_models, tmp_path):
    student = tiny_models["student"]
    cases = {
        "nan": (_nan_weight, "holds non-finite weights (1 tensors, e.g. distilbert.embeddings."),
        "notok": (
            lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
            "has no tokenizer (none of tokenizer.json, vocab.txt, vocab.json, tokenizer.model, "
            "*.model); copy in the tokenizer files of the model it was made from",
        ),
        "badtok": (
            lambda d: (d / "tokenizer.json").write_text('{"version": "1.0", "trunc'),
            ": tokenizer.json is not valid JSON (Unterminated string starting at: line 1 column "
            "20 (char 19)); the file is damaged or truncated",
        ),
        "edited": (
            lambda d: (d / "config.json").write_text(
                json.dumps({**json.loads((d / "config.json").read_text()), "hidden_dim": 96})
            ),
            "for sequence classification: its weights do not have the shapes its config.json "
            "gives (config.json edited, or taken from another model?)",
        ),
        "smallvocab": (
            lambda d: (d / "config.json").write_text(
                json.dumps({**json.loads((d / "config.json").read_text()), "vocab_size": 100})
            ),
            "entries but the model's embedding table only 100; the tokenizer belongs to another "
            "model",
        ),
    }
    for name, (damage, message) in cases.items():
        model = _damaged_copy(student, tmp_path / name, damage)
        out = tmp_path / f"out-{name}"
        with pytest.raises(DistilkitError) as exc:
            finetune(_cfg(model, out))
        assert message in str(exc.value), str(exc.value)
        assert str(model) in str(exc.value)
        assert not out.exists()


def test_max_length_beyond_the_position_table_is_cut_and_recorded(tiny_teacher, tmp_path, caplog):
    # The conftest teacher has 64 positions; 512 would crash at the first long example.
    result = finetune(_cfg(tiny_teacher, tmp_path / "ft", "max_length=512"))
    assert result["config"]["max_length"] == 64
    assert _read(tmp_path / "ft")["config"]["max_length"] == 64
    assert f"max_length 512 is longer than the position table of {tiny_teacher} (64 tokens)" in (
        caplog.text
    )


def test_a_gpu_that_is_not_there_fails_before_any_work(monkeypatch):
    from distilkit.finetune import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DistilkitError) as exc:
        pick_device("cuda:0")
    assert str(exc.value) == "device 'cuda:0' is not available: torch sees no CUDA GPU"
    assert pick_device("auto").type == "cpu"


def test_a_non_finite_metric_is_never_written(tiny_models, tmp_path, monkeypatch):
    # Whatever produces it, NaN must not reach metrics.json (Python's json would write a bare
    # NaN, which is not JSON): finetune and zeroshot refuse to write instead.
    import distilkit.finetune as ft
    import distilkit.zeroshot as zs

    def nan_metrics(task, predictions, labels):
        return {"accuracy": float("nan"), "pearson": 0.5, "spearman": 0.5, "score": float("nan")}

    monkeypatch.setattr(ft, "compute_metrics", nan_metrics)
    out = tmp_path / "ft"
    with pytest.raises(DistilkitError) as exc:
        finetune(_cfg(tiny_models["student"], out))
    assert str(exc.value) == (
        "metrics.json would hold a non-finite value (score = nan); nothing was written"
    )
    assert not out.exists()
    monkeypatch.setattr(zs, "compute_metrics", lambda *a: {"spearman": math.inf, "pearson": 1.0})
    cfg = zs.ZeroShotConfig(
        model=tiny_models["student"], data_dir=str(GLUE), out=str(tmp_path / "z"), threads=1
    )
    with pytest.raises(DistilkitError, match=r"would hold a non-finite value \(score = inf\)"):
        zs.zeroshot(cfg)
    assert not (tmp_path / "z").exists()
