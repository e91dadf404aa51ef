from __future__ import annotations

import argparse
import importlib
import logging
import re
from pathlib import Path

import pytest
import yaml

from conftest import write_corpus
from distilkit import cli
from distilkit.commands._common import _import
from distilkit.config import config_keys, load_config, to_dict
from distilkit.distill import DistillConfig

STAGES = ("prepare", "init-student", "adapt-teacher", "distill", "demo")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Every command module whose options are a config dataclass (all but init-student).
CONFIG_COMMANDS = [
    m
    for m in (importlib.import_module(f"distilkit.commands.{name}") for name in cli.COMMANDS)
    if hasattr(m, "CONFIG")
]


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([stage, "--help"])
    assert exc.value.code == 0


def _one_error_line(capsys, stage: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distilkit")]
    assert len(err) == 1, err
    assert err[0].startswith(f"distilkit {stage}: error: ")
    return err[0]


def test_pipeline_through_the_cli(tiny_teacher, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    corpus = write_corpus(tmp_path / "c.txt", n_docs=30)
    data, student, out = tmp_path / "data", tmp_path / "student", tmp_path / "run"
    assert (
        cli.main(
            [
                "prepare",
                "-s",
                str(corpus),
                "--teacher",
                str(tiny_teacher),
                "--out",
                str(data),
                "--max-length",
                "32",
                "validation_fraction=0.2",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "init-student",
                "--teacher",
                str(tiny_teacher),
                "--out",
                str(student),
                "--layers",
                "1,3",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "distill",
                "--teacher",
                str(tiny_teacher),
                "--student",
                str(student),
                "--data",
                str(data),
                "--out",
                str(out),
                "--max-steps",
                "3",
                "train.batch_size=4",
                "train.precision=fp32",
            ]
        )
        == 0
    )
    assert "student saved to" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    # The start block: one record saying what the run is about to do.
    (plan,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("distill: ")]
    for line in ("steps      3 optimizer steps", "batch      4 per step", "precision  fp32"):
        assert line in plan
    assert f"output     {out}" in plan and "train, " in plan


def test_errors_are_one_line_and_exit_2(tiny_teacher, tmp_path, capsys):
    assert (
        cli.main(
            [
                "init-student",
                "--teacher",
                str(tiny_teacher),
                "--out",
                str(tmp_path / "s"),
                "--layers",
                "0,9",
            ]
        )
        == 2
    )
    assert "out of range" in _one_error_line(capsys, "init-student")
    assert not (tmp_path / "s").exists()
    assert cli.main(["distill", "--teacher", str(tiny_teacher), "train.batch_sise=3"]) == 2
    assert "unknown config key 'train.batch_sise'" in _one_error_line(capsys, "distill")
    assert (
        cli.main(
            [
                "prepare",
                "-s",
                str(tmp_path / "missing.txt"),
                "--teacher",
                str(tiny_teacher),
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )
    assert "not found" in _one_error_line(capsys, "prepare")
    assert (
        cli.main(
            [
                "distill",
                "--teacher",
                str(tmp_path / "nope"),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not a prepared dataset" in _one_error_line(capsys, "distill")


# --------------------------------------------------------------------------- discovering options


def _stage_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _help(stage: str, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([stage, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", CONFIG_COMMANDS, ids=lambda m: m.NAME)
def test_help_lists_every_config_key_with_its_doc(module, capsys):
    text = _help(module.NAME, capsys)
    keys = config_keys(_import(module.CONFIG))
    assert len(keys) > 3
    for k in keys:
        assert f"\n  {k.key}: {k.type} = " in text, k.key
        # A key nobody documented is a key nobody can use: every field carries a docstring.
        assert k.doc, f"{module.CONFIG} field '{k.key}' has no docstring"
    words = " ".join(text.split())  # help lines wrap at the terminal width
    for flag, key in module.FLAGS.items():
        assert f"(sets {key})" in words, flag


def test_help_shows_real_defaults_and_sections(capsys):
    text = _help("adapt-teacher", capsys)
    # adapt-teacher's train section comes from a factory with its own optimiser settings.
    assert "\nconfig keys in train.optim:\n  train.optim.lr: float = 0.0001\n" in text
    assert "  train.precision: {auto,fp32,bf16,fp16} = auto\n" in text
    assert "  train.max_steps: int = 0  (--max-steps)\n" in text


def _defaults_shown_twice(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose help line states a default more than once."""
    formatter = parser._get_formatter()
    doubled = []
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            text = formatter._expand_help(action)
            if len(re.findall(r"\bdefault\b", text, flags=re.IGNORECASE)) > 1:
                doubled.append(f"{action.dest}: {text}")
    return doubled


def test_no_option_shows_its_default_twice():
    # The check itself catches what argparse's own formatter did to --task.
    old = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    old.add_argument("--task", help="sentence-pair regression task (default stsb)")
    assert _defaults_shown_twice(old) == [
        "task: sentence-pair regression task (default stsb) (default: None)"
    ]
    for name, parser in _stage_parsers().items():
        assert _defaults_shown_twice(parser) == [], name


def test_a_default_not_in_the_help_text_is_shown_once(capsys):
    text = " ".join(_help("ablate", capsys).split())
    assert "configs/ablation.yaml (default: tiny)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


# Each shipped config, with the command (and required flags) that loads it.
_FT = ["--model", "m", "--data-dir", "d", "--out", "o"]
ROUND_TRIPS = {
    "distilbert-base-uncased.yaml": [["distill"]],
    "quickstart-cpu.yaml": [["distill"]],
    "quickstart-cpu-adapt.yaml": [["adapt-teacher"]],
    "prepare-wikipedia-en.yaml": [["prepare"]],
    "quickstart-cpu-prepare.yaml": [["prepare"]],
    "bench_paper.yaml": [["bench", "--model", "minilm"]],
    "finetune.yaml": [["finetune", "--task", t, *_FT] for t in ("cola", "stsb", "mnli-mm")]
    + [["squad", "--model", "m", "--train-file", "t.json", "--out", "o"]],
    "ablation.yaml": [["ablate", "--size", size] for size in ("tiny", "cpu", "gpu")],
}


def test_every_shipped_config_round_trips():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(ROUND_TRIPS)


def _print_config(argv: list[str], capsys) -> str:
    assert cli.main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "name,argv",
    [(name, argv) for name, runs in ROUND_TRIPS.items() for argv in runs],
    ids=lambda x: x if isinstance(x, str) else " ".join(x[:3]),
)
def test_print_config_loads_back_unchanged(name, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written by --print-config
    printed = _print_config([*argv, "--config", str(CONFIGS / name)], capsys)
    assert isinstance(yaml.safe_load(printed), dict)
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert _print_config([*argv, "--config", str(again)], capsys) == printed
    assert list(tmp_path.iterdir()) == [again]


def test_print_config_holds_file_flags_and_overrides_and_marks_run_time_values(tmp_path, capsys):
    argv = ["distill", "--config", str(CONFIGS / "quickstart-cpu.yaml"), "--teacher", "t"]
    printed = _print_config([*argv, "--max-steps", "7", "train.optim.lr=3e-5"], capsys)
    tree = yaml.safe_load(printed)
    assert tree["teacher"] == "t" and tree["student_layers"] == [0, 3, 5]  # flag, file
    assert tree["train"]["max_steps"] == 7 and tree["train"]["optim"]["lr"] == 3e-5
    assert tree["train"]["batch_size"] == 16 and tree["masking"]["smoothing"] == 0.7  # default
    assert "  objective: auto  # set at run time: embedding for a sentence-transformers" in printed
    assert "  precision: auto  # set at run time: bf16 on a GPU" in printed
    assert "alpha_ce: 5.0\n" in printed  # set in the file: nothing left to decide
    f = tmp_path / "c.yaml"
    f.write_text(_print_config(["distill", "loss.alpha_ce=null"], capsys))
    assert "  alpha_ce: null  # set at run time: Soft-target KL weight; unset means 5.0" in (
        f.read_text()
    )
    cfg = load_config(DistillConfig, f)
    assert cfg.loss.alpha_ce is None and to_dict(cfg) == to_dict(DistillConfig())
