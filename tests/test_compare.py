"""The teacher-vs-student report: numbers, markdown, PNG, JSON; collecting and running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distilkit import cli
from distilkit.compare import CompareConfig, build_report, compare, render_markdown, retention
from distilkit.errors import DistilkitError
from distilkit.modeling import resolve_model

GLUE = Path(__file__).parent / "fixtures" / "glue"
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml"


def _result(task: str, score: float, metrics: dict, params: int, seeds: int = 1) -> dict:
    return {
        "task": task,
        "kind": "zeroshot" if task.endswith("-zeroshot") else "finetune",
        "score": score,
        "metrics": {**metrics, "score": score},
        "parameters": {"total": params},
        "config": {"seeds": seeds},
    }


def _sides():
    teacher = {
        "model": "bert",
        "label": "BERT",
        "results": {
            "cola": _result("cola", 0.5, {"mcc": 0.5}, 110_000_000, seeds=5),
            "mrpc": _result("mrpc", 0.8, {"accuracy": 0.75, "f1": 0.85}, 110_000_000, seeds=5),
            "stsb-zeroshot": _result("stsb-zeroshot", 0.0, {"spearman": 0.0, "pearson": 0.1}, 1),
        },
    }
    student = {
        "model": "student",
        "label": "Student",
        "results": {
            "cola": _result("cola", 0.4, {"mcc": 0.4}, 66_000_000, seeds=5),
            "mrpc": _result("mrpc", 0.78, {"accuracy": 0.7, "f1": 0.86}, 66_000_000, seeds=5),
            "stsb-zeroshot": _result("stsb-zeroshot", 0.2, {"spearman": 0.2, "pearson": 0.3}, 1),
        },
    }
    return teacher, student


def test_retention():
    assert retention(0.4, 0.5) == pytest.approx(80.0)
    assert retention(0.3, 0.0) is None
    assert retention(0.3, -0.1) is None


def test_report_numbers_and_markdown():
    teacher, student = _sides()
    report = build_report(teacher, student, ["cola", "mrpc", "stsb-zeroshot"])
    assert report["teacher"]["macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert report["student"]["macro"] == pytest.approx((0.4 + 0.78 + 0.2) / 3)
    assert report["retention"]["tasks"]["cola"] == pytest.approx(80.0)
    assert report["retention"]["tasks"]["stsb-zeroshot"] is None  # teacher at 0
    assert report["retention"]["macro"] == pytest.approx(100 * 1.38 / 1.3)
    assert report["retention"]["parameters"] == pytest.approx(60.0)
    md = render_markdown(report)
    lines = md.splitlines()
    assert lines[0] == "| model | params | Score | CoLA | MRPC | STS-B (0-shot) |"
    assert lines[2] == "| BERT | 110.0M | 43.3 | 50.0 | 80.0 | 0.0 |"
    assert lines[3] == "| Student | 66.0M | 46.0 | 40.0 | 78.0 | 20.0 |"
    assert lines[4] == "| retention (student / teacher) | 60.0% | 106.2% | 80.0% | 97.5% | n/a |"
    assert "| MRPC | acc/F1 75.0/85.0 | acc/F1 70.0/86.0 |" in md
    assert "medians over 5 seed(s)" in md  # zero-shot has no seeds


def _write(folder: Path, result: dict) -> None:
    (folder / result["task"]).mkdir(parents=True, exist_ok=True)
    (folder / result["task"] / "metrics.json").write_text(json.dumps(result))


def test_compare_collects_and_writes_md_png_json(tmp_path):
    teacher, student = _sides()
    for role, side in (("t", teacher), ("s", student)):
        for result in side["results"].values():
            _write(tmp_path / role, {**result, "model": side["model"]})
    cfg = CompareConfig(
        teacher="bert",
        student="student",
        tasks=["CoLA", "mrpc", "stsb-zeroshot"],
        out=str(tmp_path / "report"),
        teacher_runs=str(tmp_path / "t"),
        student_runs=str(tmp_path / "s"),
        run_missing=False,
    )
    report = compare(cfg)
    out = tmp_path / "report"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| student | 66.0M | 46.0 |" in (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert saved["student"]["scores"] == report["student"]["scores"]
    assert saved["tasks"] == ["cola", "mrpc", "stsb-zeroshot"]


def test_compare_missing_result_names_the_file(tmp_path):
    cfg = CompareConfig(
        teacher="bert", student="student", tasks=["rte"], out=str(tmp_path), run_missing=False
    )
    with pytest.raises(DistilkitError, match=r"missing .*teacher/rte/metrics\.json"):
        compare(cfg)
    _write(tmp_path / "teacher", _result("cola", 0.5, {"mcc": 0.5}, 1))
    (tmp_path / "teacher" / "rte").mkdir()
    (tmp_path / "teacher" / "cola" / "metrics.json").rename(
        tmp_path / "teacher" / "rte" / "metrics.json"
    )
    with pytest.raises(DistilkitError, match="holds task 'cola', expected 'rte'"):
        compare(cfg)
    with pytest.raises(DistilkitError, match="unknown task"):
        compare(CompareConfig(teacher="a", student="b", tasks=["glue"], out=str(tmp_path)))


def test_compare_cli_runs_missing_evaluations(tmp_path, capsys):
    from transformers import AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    for name, model in (
        (
            "teacher",
            BertModel(
                BertConfig(
                    vocab_size=tok.vocab_size,
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=64,
                )
            ),
        ),
        (
            "student",
            DistilBertModel(
                DistilBertConfig(
                    vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64
                )
            ),
        ),
    ):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    rc = cli.main(
        [
            "compare",
            "--teacher",
            str(tmp_path / "teacher"),
            "--student",
            str(tmp_path / "student"),
            "--tasks",
            "rte,stsb-zeroshot",
            "--data-dir",
            str(GLUE),
            "--out",
            str(tmp_path / "r"),
            "--recipes",
            str(RECIPES),
            "--ft",
            "max_steps=1",
            "--ft",
            "threads=1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "macro score: teacher" in capsys.readouterr().out
    ran = json.loads((tmp_path / "r" / "student" / "rte" / "metrics.json").read_text())
    assert ran["runs"][0]["steps"] == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    # The 1-layer student has fewer parameters than the 2-layer teacher.
    assert 0 < report["retention"]["parameters"] < 100
    assert set(report["student"]["scores"]) == {"rte", "stsb-zeroshot"}


def test_sanity_gates_flag_a_broken_evaluation():
    from distilkit.compare import render_gates, sanity_gates

    teacher, student = _sides()
    teacher["model"] = "bert-base-uncased"
    # Student: fine-tuned STS-B below its own zero-shot score, CoLA at the majority class.
    student["results"]["cola"] = _result("cola", 0.0, {"mcc": 0.0}, 66_000_000)
    for side, ft in ((teacher, 0.3), (student, 0.1)):
        side["results"]["stsb"] = _result("stsb", ft, {"pearson": ft, "spearman": ft}, 1)
    report = build_report(teacher, student, ["cola", "stsb", "stsb-zeroshot"])
    gates = {(g["model"], g["gate"]): g["passed"] for g in report["gates"]}
    assert gates[("Student", "fine-tuned STS-B >= zero-shot STS-B")] is False
    assert gates[("BERT", "fine-tuned STS-B >= zero-shot STS-B")] is True
    assert gates[("Student", "CoLA MCC > 0")] is False
    assert gates[("BERT", "CoLA MCC > 0")] is True
    # bert-base-uncased's public CoLA dev level is 56.3: 50.0 is more than 3 points below.
    assert gates[("BERT", "teacher CoLA near its public level")] is False
    text = render_markdown(report)
    assert "## Sanity gates" in text and "**FAILED**" in text and "DistilBERT paper" in text
    # A teacher with no public reference is said to be unchecked, not passed.
    teacher["model"] = "my-own-model"
    assert any(g["passed"] is None for g in sanity_gates(build_report(teacher, student, ["cola"])))
    assert "not checked" in render_gates(sanity_gates(build_report(teacher, student, ["cola"])))


def test_stsb_bi_is_a_task_of_its_own_and_other_bi_tasks_are_refused():
    from distilkit.compare import canonical_task

    assert canonical_task("STS-B-bi") == "stsb-bi"
    with pytest.raises(DistilkitError, match="form=bi .* not cola"):
        canonical_task("cola-bi")
    with pytest.raises(DistilkitError, match="'tasks'|form=bi"):
        CompareConfig(tasks=["sst2-bi"]).validate()


def test_compare_runs_stsb_as_a_bi_encoder_and_gates_it(sentence_teacher, tmp_path, capsys):
    args = ["compare", "--teacher", str(sentence_teacher), "--student", str(sentence_teacher)]
    args += ["--tasks", "stsb-bi,stsb-zeroshot", "--data-dir", str(GLUE), "--out", str(tmp_path)]
    args += ["--recipes", str(RECIPES), "--ft", "max_steps=1", "--ft", "threads=1"]
    assert cli.main(args) == 0, capsys.readouterr().err
    ran = json.loads((tmp_path / "student" / "stsb-bi" / "metrics.json").read_text())
    assert ran["task"] == "stsb-bi" and ran["config"]["form"] == "bi"
    assert ran["title"] == "STS-B (bi-encoder)"
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["student"]["scores"]) == {"stsb-bi", "stsb-zeroshot"}
    gates = [g["gate"] for g in report["gates"]]
    assert gates.count("bi-encoder fine-tuned STS-B >= zero-shot STS-B") == 2
    # A second compare collects the bi-encoder results instead of running them again.
    before = (tmp_path / "student" / "stsb-bi" / "metrics.json").stat().st_mtime_ns
    assert cli.main([*args, "--no-run"]) == 0, capsys.readouterr().err
    assert (tmp_path / "student" / "stsb-bi" / "metrics.json").stat().st_mtime_ns == before
