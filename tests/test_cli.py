from __future__ import annotations

import pytest

from conftest import write_corpus
from distilkit import cli

STAGES = ("prepare", "init-student", "adapt-teacher", "distill", "demo")


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


def test_pipeline_through_the_cli(tiny_teacher, tmp_path, capsys):
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
