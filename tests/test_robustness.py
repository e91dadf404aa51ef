"""Bad inputs, non-finite losses and a full disk, through the command line.

Each bad input must give exit status 2, exactly one ``distilkit <stage>: error: ...`` line on
stderr naming the cause, and leave nothing that looks like a valid output (no dataset manifest,
no model folder, no checkpoint). docs/robustness.md lists the messages.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import distilkit.distill
from conftest import SPECIALS, WORDS, save_tiny_bert, write_corpus
from distilkit import cli
from distilkit.errors import DistilkitError
from distilkit.loop import verify_checkpoint
from distilkit.tasks import read_task

GLUE = Path(__file__).parent / "fixtures" / "glue"
# One torch thread: the runs are tiny, and on shared cores extra threads only contend.
FAST = [
    "train.batch_size=4",
    "train.precision=fp32",
    "train.log_every=1",
    "train.eval_batches=1",
    "train.threads=1",
]


def _argv(parts: list) -> list[str]:
    """Strings, with the ``key=value`` overrides moved behind the options (argparse takes the
    positional overrides in one run)."""
    parts = [str(a) for a in parts]
    overrides = [a for a in parts if "=" in a and not a.startswith("-")]
    return [a for a in parts if a not in overrides] + overrides


def _fails(capsys, argv: list, *expected: str) -> str:
    """Run the CLI, expect exit 2 and one error line holding every ``expected`` text."""
    assert cli.main(_argv(argv)) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("distilkit ")]
    assert len(err) == 1, err
    assert err[0].startswith(f"distilkit {argv[0]}: error: "), err[0]
    for text in expected:
        assert text in err[0], err[0]
    return err[0]


def _no_model_in(folder: Path) -> None:
    """``folder`` does not look like a model or a dataset (it may not exist at all)."""
    for name in ("config.json", "model.safetensors", "manifest.json", "results.json"):
        assert not (folder / name).exists(), f"{folder / name} was left behind"
    assert not (folder / ".final-tmp").exists()


def _distill(teacher, data, out, *extra) -> list:
    return ["distill", "--teacher", teacher, "--data", data, "--out", out, *FAST, *extra]


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs set torch to one thread (train.threads=1); give the test process its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# Corpus


def test_empty_corpus(tiny_teacher, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    out = tmp_path / "data"
    _fails(
        capsys,
        ["prepare", "-s", tmp_path / "empty.txt", "--teacher", tiny_teacher, "--out", out],
        "the corpus gave no training sequences",
    )
    assert not out.exists() and not (tmp_path / "data.tmp-prepare").exists()


def test_binary_file(tiny_teacher, tmp_path, capsys):
    (tmp_path / "model.txt").write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 8)
    out = tmp_path / "data"
    _fails(
        capsys,
        ["prepare", "-s", tmp_path / "model.txt", "--teacher", tiny_teacher, "--out", out],
        f"corpus file {tmp_path / 'model.txt'} looks binary (NUL bytes); expected UTF-8 text",
    )
    assert not out.exists() and not (tmp_path / "data.tmp-prepare").exists()


def test_non_utf8_lines_are_skipped_counted_and_reported(tiny_teacher, tmp_path, caplog, capsys):
    good = write_corpus(tmp_path / "good.txt", n_docs=20).read_bytes()
    lines = good.split(b"\n")
    lines[3] = b"caf\xe9 latin-1 " + lines[3]  # not UTF-8
    lines[10] = lines[10] + b" \xff\xfe"
    (tmp_path / "mixed.txt").write_bytes(b"\n".join(lines))
    out = tmp_path / "data"
    argv = ["prepare", "-s", tmp_path / "mixed.txt", "--teacher", tiny_teacher, "--out", out]
    assert cli.main(_argv(argv)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["read"]["bad_utf8_lines_skipped"] == 2
    assert "skipped 2 lines that were not valid UTF-8" in caplog.text


# ---------------------------------------------------------------------------------------------
# Missing paths, models without weights


def test_missing_paths(tiny_teacher, tiny_data, tmp_path, capsys):
    nope = tmp_path / "nope"
    _fails(
        capsys,
        ["prepare", "-s", nope, "--teacher", tiny_teacher, "--out", tmp_path / "d"],
        f"corpus source not found: {nope}",
    )
    _fails(capsys, _distill(nope, tiny_data, tmp_path / "o1"), f"model path does not exist: {nope}")
    _fails(
        capsys,
        _distill(tiny_teacher, nope, tmp_path / "o2"),
        f"{nope} is not a prepared dataset (no manifest.json)",
    )
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, tmp_path / "o3"), "--student", nope],
        f"model path does not exist: {nope}",
    )
    _fails(
        capsys,
        ["init-student", "--teacher", nope, "--out", tmp_path / "s"],
        f"model path does not exist: {nope}",
    )
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, tmp_path / "o4"), "--config", nope / "c.yaml"],
        f"config file not found: {nope / 'c.yaml'}",
    )
    for out in ("d", "o1", "o2", "o3", "o4", "s"):
        _no_model_in(tmp_path / out)


def test_a_wrapped_multi_line_error_still_prints_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    # Hugging Face's "cannot connect" errors span two lines; the CLI joins them.
    def offline(name):
        raise DistilkitError(f"cannot load '{name}': We couldn't connect.\nCheck your connection.")

    monkeypatch.setattr(distilkit.distill, "load_mlm", offline)
    line = _fails(capsys, _distill("some-hub-id", tiny_data, tmp_path / "o"))
    assert line.endswith("cannot load 'some-hub-id': We couldn't connect. Check your connection.")


def test_model_folder_without_weights(tiny_teacher, tiny_data, tmp_path, capsys):
    empty = tmp_path / "teacher"
    empty.mkdir()
    shutil.copy(tiny_teacher / "config.json", empty)
    for argv in (
        ["init-student", "--teacher", empty, "--out", tmp_path / "s"],
        _distill(empty, tiny_data, tmp_path / "o"),
    ):
        _fails(capsys, argv, f"model folder {empty} has no weights (expected one of")
    _no_model_in(tmp_path / "s")
    _no_model_in(tmp_path / "o")


# ---------------------------------------------------------------------------------------------
# Vocabulary mismatches


def _teacher_with_vocab(folder: Path, vocab: list[str]) -> Path:
    from transformers import BertTokenizerFast

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    return save_tiny_bert(folder, tok)


def test_teacher_student_and_data_vocabulary_mismatches(tiny_teacher, tiny_data, tmp_path, capsys):
    vocab = [*SPECIALS, ".", ",", *WORDS]
    bigger = _teacher_with_vocab(tmp_path / "bigger", [*vocab, "extra"])
    swapped = vocab.copy()
    swapped[10], swapped[11] = swapped[11], swapped[10]
    same_size = _teacher_with_vocab(tmp_path / "swapped", swapped)
    for teacher, name in ((bigger, "s-big"), (same_size, "s-swap")):
        argv = ["init-student", "--teacher", str(teacher), "--out", str(tmp_path / name)]
        assert cli.main(argv) == 0
    n = len(vocab)
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, tmp_path / "o1"), "--student", tmp_path / "s-big"],
        f"teacher and student vocabularies differ ({n} vs {n + 1} entries)",
    )
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, tmp_path / "o2"), "--student", tmp_path / "s-swap"],
        "teacher and student tokenizers have different vocabularies",
    )
    line = _fails(
        capsys,
        _distill(same_size, tiny_data, tmp_path / "o3"),
        f"dataset {tiny_data} was tokenised with a different vocabulary than the teacher's",
        "run `distilkit prepare` again",
    )
    assert f"(prepared with {tiny_teacher})" in line
    _fails(
        capsys,
        ["adapt-teacher", "--teacher", same_size, "--data", tiny_data, "--out", tmp_path / "o4"],
        f"dataset {tiny_data} was tokenised with a different vocabulary than {same_size}",
    )
    for out in ("o1", "o2", "o3", "o4"):
        _no_model_in(tmp_path / out)
    # The checks run before a student is built: nothing is left to block a corrected rerun.
    assert not (tmp_path / "o3" / "student-init").exists()
    assert (
        cli.main(_argv([*_distill(tiny_teacher, tiny_data, tmp_path / "o3"), "--max-steps", "1"]))
        == 0
    )


# ---------------------------------------------------------------------------------------------
# --layers and configs


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("0,4", "--layers [0, 4]: layer 4 is out of range for a 4-layer teacher (valid: 0..3)"),
        ("-1,2", "--layers [-1, 2]: layer -1 is out of range for a 4-layer teacher (valid: 0..3)"),
        ("2,1", "--layers [2, 1]: layers must be in increasing order"),
        ("1,1,3", "--layers [1, 1, 3]: duplicated layer"),
    ],
)
def test_bad_layers(tiny_teacher, tmp_path, capsys, layers, message):
    out = tmp_path / "s"
    line = _fails(
        capsys, ["init-student", "--teacher", tiny_teacher, "--out", out, f"--layers={layers}"]
    )
    assert line == f"distilkit init-student: error: {message}"
    assert not out.exists() and not (tmp_path / "s.tmp-init").exists()


def test_bad_layers_in_distill(tiny_teacher, tiny_data, tmp_path, capsys):
    out = tmp_path / "o"
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "student_layers=[3,0]"],
        "--layers [3, 0]: layers must be in increasing order",
    )
    _no_model_in(out)
    assert not (out / "student-init").exists()


def test_unknown_config_key_and_wrong_type(tiny_teacher, tiny_data, tmp_path, capsys):
    out = tmp_path / "o"
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "train.batch_sise=4"],
        "unknown config key 'train.batch_sise' (known keys: batch_size,",
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss:\n  alpha_cos: 1.0\n  temprature: 2.0\n")
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "--config", cfg],
        "unknown config key 'loss.temprature'",
    )
    cfg.write_text("train:\n  max_steps: ten\n")
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "--config", cfg],
        "config key 'train.max_steps': expected an integer, got 'ten'",
    )
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "train.group_by_length=maybe"],
        "config key 'train.group_by_length': expected true/false, got 'maybe'",
    )
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "train.on_nonfinite=ignore"],
        "config key 'train.on_nonfinite': expected one of ['skip', 'stop'], got 'ignore'",
    )
    assert not out.exists()  # configs are checked before anything is written


# ---------------------------------------------------------------------------------------------
# Output folders


def test_output_folder_holding_another_run(tiny_teacher, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "2"]
    assert cli.main(_argv(argv)) == 0
    before = load_file(out / "model.safetensors")
    _fails(capsys, argv, f"output folder {out} already holds files (use --resume to continue")
    assert torch.equal(load_file(out / "model.safetensors")["vocab_projector.bias"],
                       before["vocab_projector.bias"])  # fmt: skip
    # An adapt-teacher run in the folder is a different run too.
    adapt = ["adapt-teacher", "--teacher", tiny_teacher, "--data", tiny_data, "--out", out]
    _fails(capsys, adapt, f"output folder {out} already holds files")
    # --overwrite replaces a distilkit run, never a folder of someone else's files.
    assert cli.main(_argv([*argv, "--overwrite", "train.seed=7"])) == 0
    assert json.loads((out / "distilkit_run.json").read_text())["config"]["train"]["seed"] == 7
    # A run that failed after building its student (here: batch larger than the data) leaves
    # student-init; --overwrite may replace that, since distilkit wrote it.
    failed = tmp_path / "failed"
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, failed), "train.batch_size=500"],
        "the training split has too few sequences",
    )
    assert (failed / "student-init" / "distilkit_student.json").is_file()
    _no_model_in(failed)
    _fails(capsys, _distill(tiny_teacher, tiny_data, failed), "already holds files")
    argv = [*_distill(tiny_teacher, tiny_data, failed), "--overwrite", "--max-steps", "1"]
    assert cli.main(_argv(argv)) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, foreign), "--overwrite"],
        "holds files that are not a distilkit run; refusing to delete them even with --overwrite",
    )
    assert (foreign / "notes.txt").read_text() == "keep me"
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_text("x")
    _fails(
        capsys,
        [
            "prepare",
            "-s",
            write_corpus(tmp_path / "c.txt"),
            "--teacher",
            tiny_teacher,
            "--out",
            data,
        ],
        f"output folder {data} is not empty (use --overwrite)",
    )


# ---------------------------------------------------------------------------------------------
# GLUE files


def test_glue_file_with_wrong_columns(tiny_teacher, tmp_path, capsys):
    lines = (GLUE / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("\t", " ")  # the label column merged into the sentence
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(GLUE / "SST-2" / "dev.tsv", tmp_path / "SST-2")
    message = (
        f"{tmp_path / 'SST-2' / 'train.tsv'}:4: expected 2 tab-separated columns for SST-2, found 1"
    )
    with pytest.raises(DistilkitError) as exc:
        read_task("sst2", "train", tmp_path)
    assert str(exc.value) == message
    out = tmp_path / "ft"
    line = _fails(
        capsys,
        [
            "finetune",
            "--model",
            tiny_teacher,
            "--task",
            "sst2",
            "--data-dir",
            tmp_path,
            "--out",
            out,
        ],
    )
    assert line == f"distilkit finetune: error: {message}"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Disk full


def _enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize(
    ("writer", "error", "cause"),
    [
        ("torch.save", _enospc(), "no space left on device (disk full)"),
        # What torch.save's zip writer and safetensors really raise when the disk fills up.
        ("torch.save",
         RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
         "write failed ([enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598)"),
        ("save_pretrained",
         SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
         "no space left on device (disk full)"),
    ],
)  # fmt: skip
def test_disk_full_while_checkpointing(
    tiny_teacher, tiny_data, tmp_path, capsys, monkeypatch, writer, error, cause
):
    from transformers import PreTrainedModel

    original = PreTrainedModel.save_pretrained

    def full(*args, **kwargs):
        raise error

    def full_in_checkpoints(self, folder, *args, **kwargs):
        if not Path(folder).name.startswith(".tmp-step-"):
            return original(self, folder, *args, **kwargs)
        raise error

    if writer == "torch.save":
        monkeypatch.setattr(torch, "save", full)
    else:
        monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_in_checkpoints)
    out = tmp_path / "o"
    argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "3", "train.checkpoint_every=2"]
    line = _fails(
        capsys,
        argv,
        f"cannot write checkpoint {out / 'checkpoints' / 'step-00000002'}: {cause};",
        "MiB free there; nothing partial was kept",
    )
    assert "\n" not in line
    assert list((out / "checkpoints").iterdir()) == []  # no step-*, no .tmp-step-*
    _no_model_in(out)


def test_disk_full_while_saving_the_final_model(
    tiny_teacher, tiny_data, tmp_path, capsys, monkeypatch
):
    from transformers import PreTrainedModel

    original = PreTrainedModel.save_pretrained

    def full(self, folder, *args, **kwargs):
        if Path(folder).name != ".final-tmp":
            return original(self, folder, *args, **kwargs)
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)  # a partial write: the config made it, weights not
        raise _enospc(Path(folder) / "model.safetensors")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "o"
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "2"],
        f"cannot write the final model in {out}: no space left on device (disk full)",
    )
    _no_model_in(out)


def test_disk_full_while_preparing(tiny_teacher, tmp_path, capsys, monkeypatch):
    from distilkit import data

    def full(self, ids):
        raise _enospc(self.root / f"{self.split}-00000.bin")

    monkeypatch.setattr(data._ShardWriter, "write", full)
    out = tmp_path / "d"
    _fails(
        capsys,
        [
            "prepare",
            "-s",
            write_corpus(tmp_path / "c.txt"),
            "--teacher",
            tiny_teacher,
            "--out",
            out,
        ],
        "no space left on device while writing",
        "d.tmp-prepare/",
    )
    assert not out.exists() and not (tmp_path / "d.tmp-prepare").exists()


def test_disk_full_while_building_a_student(tiny_teacher, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def full(self, folder, *args, **kwargs):
        raise _enospc(Path(folder) / "tokenizer.json")  # after the model's config and weights

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    out = tmp_path / "s"
    _fails(
        capsys,
        ["init-student", "--teacher", tiny_teacher, "--out", out],
        "no space left on device while writing",
        "s.tmp-init/tokenizer.json",
    )
    assert not out.exists() and not (tmp_path / "s.tmp-init").exists()


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def _poison(monkeypatch, loss_fn: str, calls: set[int] | None, value: float) -> None:
    """Make ``distilkit.distill.<loss_fn>`` non-finite at the given calls (None: every call).

    Multiplying keeps the graph, so the gradients are non-finite too, as in a real blow-up.
    """
    original = getattr(distilkit.distill, loss_fn)
    count = [0]

    def poisoned(*args, **kwargs):
        count[0] += 1
        out = original(*args, **kwargs)
        return out * value if calls is None or count[0] in calls else out

    monkeypatch.setattr(distilkit.distill, loss_fn, poisoned)


def test_nonfinite_loss_is_skipped_and_counted(
    tiny_teacher, tiny_data, tmp_path, caplog, monkeypatch
):
    _poison(monkeypatch, "hidden_cosine", {3}, math.nan)
    out = tmp_path / "o"
    assert cli.main(_argv([*_distill(tiny_teacher, tiny_data, out), "--max-steps", "5"])) == 0
    assert "non-finite loss at step 3: cos = nan; step skipped (1 so far)" in caplog.text
    assert json.loads((out / "results.json").read_text())["nonfinite_skipped"] == 1
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:5] == [1, 2, 3, 4, 5]
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())  # the bad gradients never landed


def test_nonfinite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(
    tiny_teacher, tiny_data, tmp_path, capsys, monkeypatch
):
    _poison(monkeypatch, "mlm_cross_entropy", {4}, math.inf)
    out = tmp_path / "o"
    argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "6", "train.on_nonfinite=stop",
            "train.checkpoint_every=1", "train.keep_checkpoints=2"]  # fmt: skip
    line = _fails(capsys, argv)
    assert line == (
        "distilkit distill: error: non-finite loss at step 4: mlm = inf; stopped with the last "
        "good checkpoint kept"
    )
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000003"]
    assert all(verify_checkpoint(p) is None for p in ckpts)
    _no_model_in(out)
    # Once the cause is gone, --resume continues from the last good checkpoint.
    monkeypatch.undo()
    assert cli.main(_argv([argv[0], "--resume", *argv[1:]])) == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 6


def test_nonfinite_losses_in_a_row_stop_even_when_skipping(
    tiny_teacher, tiny_data, tmp_path, capsys, monkeypatch
):
    _poison(monkeypatch, "hidden_cosine", None, math.nan)
    out = tmp_path / "o"
    argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "5", "train.max_nonfinite=3"]
    _fails(capsys, argv, "non-finite loss at step 1: cos = nan; stopped with the last good")
    _no_model_in(out)


def test_write_failure_keeps_other_errors_as_they_are(tmp_path):
    from distilkit.loop import _write_failure

    assert _write_failure(ValueError("bad value"), "x", tmp_path) is None
    assert _write_failure(RuntimeError("CUDA out of memory"), "x", tmp_path) is None
    err = _write_failure(OSError(errno.EACCES, "Permission denied"), "checkpoint c", tmp_path)
    assert str(err).startswith("cannot write checkpoint c: write failed ([Errno 13] Permission")
