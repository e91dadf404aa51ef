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
    assert not out.exists()


def test_binary_file(tiny_teacher, tmp_path, capsys):
    (tmp_path / "model.txt").write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 8)
    out = tmp_path / "data"
    _fails(
        capsys,
        ["prepare", "-s", tmp_path / "model.txt", "--teacher", tiny_teacher, "--out", out],
        f"corpus file {tmp_path / 'model.txt'} looks binary (NUL bytes); expected UTF-8 text",
    )
    assert not out.exists()


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
    assert not out.exists()


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
        "unknown config key 'train.batch_sise' (known keys: allow_changes, batch_size,",
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
    # student-init; that holds no work, so the corrected rerun needs no --overwrite.
    failed = tmp_path / "failed"
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, failed), "train.batch_size=500"],
        "the training split has too few sequences",
    )
    assert (failed / "student-init" / "distilkit_student.json").is_file()
    _no_model_in(failed)
    argv = [*_distill(tiny_teacher, tiny_data, failed), "--max-steps", "1"]
    assert cli.main(_argv(argv)) == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, foreign), "--overwrite"],
        "holds files that distilkit did not write; refusing to delete them even with "
        "--overwrite; choose another --out",
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
        f"output folder {data} is not empty and holds files that distilkit did not write; "
        "choose another --out",
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
        "d/.tmp-prepare/",
    )
    assert not out.exists()


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
        "s/.tmp-init/tokenizer.json",
    )
    assert not out.exists()


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


# ---------------------------------------------------------------------------------------------
# --overwrite deletes only distilkit's own output, never an input (issue 11, item 1)


def test_overwrite_never_deletes_an_input(tiny_teacher, tiny_data, tmp_path, capsys):
    # prepare -s d/corpus.txt --out d --overwrite: the corpus lies in the output folder.
    d = tmp_path / "d"
    d.mkdir()
    corpus = write_corpus(d / "corpus.txt")
    text = corpus.read_text()
    prep = ["prepare", "-s", corpus, "--teacher", tiny_teacher, "--out", d]
    for extra in ([], ["--overwrite"]):
        line = _fails(capsys, [*prep, *extra], f"output folder {d} holds an input of this command")
        assert f"(the corpus source {corpus})" in line and "choose another --out" in line
        assert "use --overwrite" not in line  # never suggest the command that deletes it
    assert corpus.read_text() == text
    # A folder distilkit made (a student) used as the teacher of the next stage, and as its
    # --out: the input is distilkit's output, but an input all the same.
    s1 = tmp_path / "s1"
    assert cli.main(_argv(["init-student", "--teacher", tiny_teacher, "--out", s1])) == 0
    before = (s1 / "model.safetensors").read_bytes()
    _fails(
        capsys,
        ["init-student", "--teacher", s1, "--out", s1, "--overwrite"],
        f"output folder {s1} holds an input of this command (the teacher {s1}); refusing to "
        "delete it even with --overwrite; choose another --out",
    )
    _fails(
        capsys,
        [*_distill(s1, tiny_data, s1), "--overwrite"],
        f"output folder {s1} holds an input of this command (the teacher {s1})",
    )
    # The student inside the run folder.
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, tmp_path), "--student", s1, "--overwrite"],
        f"holds an input of this command (the student {s1})",
    )
    assert (s1 / "model.safetensors").read_bytes() == before
    assert corpus.read_text() == text


# ---------------------------------------------------------------------------------------------
# One process per output folder (item 2)

HOLD = """
import sys, time
from distilkit.runfolder import claim_folder
claim = claim_folder(sys.argv[1], "distill")
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_process_on_a_folder_is_refused_and_a_dead_ones_lock_is_taken_over(
    tiny_teacher, tiny_data, tmp_path, capsys, caplog
):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "1"]
        for extra in ([], ["--resume"], ["--overwrite"]):
            line = _fails(capsys, [*argv, *extra], f"output folder {out} is in use by process")
            assert f"process {holder.pid} (distilkit distill, started 20" in line, line
            assert line.endswith("wait for it to end, or choose another --out")
        for stage in (
            ["prepare", "-s", tmp_path / "c.txt", "--teacher", tiny_teacher, "--out", out],
            ["init-student", "--teacher", tiny_teacher, "--out", out, "--overwrite"],
            ["adapt-teacher", "--teacher", tiny_teacher, "--data", tiny_data, "--out", out],
        ):
            write_corpus(tmp_path / "c.txt")
            _fails(capsys, stage, f"output folder {out} is in use by process {holder.pid}")
        assert not (out / "config.json").exists() and not (out / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: its lock file still names it; the kernel dropped the
    # lock, so the next run takes the folder over (and says so).
    assert str(holder.pid) in (out / ".distilkit.lock").read_text()
    assert cli.main(_argv([*argv, "--overwrite"])) == 0
    assert f"was locked by process {holder.pid}" in caplog.text
    assert "no longer running; taking it over" in caplog.text
    assert (out / "config.json").is_file()
    assert (out / ".distilkit.lock").read_text() == ""  # released cleanly


# ---------------------------------------------------------------------------------------------
# Non-finite gradients and weights (item 4)


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss with an infinite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_infinite_gradient_with_a_finite_loss_is_skipped(
    tiny_teacher, tiny_data, tmp_path, caplog, monkeypatch
):
    original, count = distilkit.distill.hidden_cosine, [0]

    def cos(*args, **kwargs):
        count[0] += 1
        out = original(*args, **kwargs)
        return _InfGrad.apply(out) if count[0] == 3 else out

    monkeypatch.setattr(distilkit.distill, "hidden_cosine", cos)
    out = tmp_path / "o"
    assert cli.main(_argv([*_distill(tiny_teacher, tiny_data, out), "--max-steps", "4"])) == 0
    assert "non-finite gradient at step 3 (norm inf, losses finite); step skipped (1 so far)" in (
        caplog.text
    )
    assert json.loads((out / "results.json").read_text())["nonfinite_skipped"] == 1
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def _nan_weights_after(monkeypatch, step: int) -> None:
    """Make AdamW write NaN into one weight at optimizer step ``step`` (losses and gradients
    stay finite: the blow-up is in the update)."""
    original, count = torch.optim.AdamW.step, [0]

    def poisoned(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count[0] += 1
        if count[0] == step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.nan
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)


def test_nonfinite_weights_are_never_saved(tiny_teacher, tiny_data, tmp_path, capsys, monkeypatch):
    # NaN weights give NaN losses at the next step (and the guard catches those); the check
    # before a save catches the step right before a checkpoint or the end.
    _nan_weights_after(monkeypatch, 4)
    out = tmp_path / "o"
    argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "6",
            "train.checkpoint_every=2", "train.keep_checkpoints=3"]  # fmt: skip
    line = _fails(capsys, argv, "the model's weights are not finite after step 4 (1 tensors, e.g.")
    assert line.endswith(
        "checkpoint step-00000004 was not written; the last good checkpoint is kept"
    )
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-00000002"]
    assert verify_checkpoint(ckpts[0]) is None
    _no_model_in(out)
    # No checkpoints at all: the final model is refused the same way.
    out2 = tmp_path / "o2"
    monkeypatch.undo()
    _nan_weights_after(monkeypatch, 3)
    _fails(
        capsys,
        [*_distill(tiny_teacher, tiny_data, out2), "--max-steps", "3"],
        "the trained model's weights are not finite (1 tensors, e.g.",
        f"no model was written to {out2}",
    )
    _no_model_in(out2)


# ---------------------------------------------------------------------------------------------
# Damaged or odd inputs: one line naming the file and the cause (item 6)


def _damaged_copy(tiny_data, tmp_path, damage) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    damage(data)
    return data


def _write_ids(path: Path, index: int, value: int) -> None:
    import numpy as np

    ids = np.fromfile(path, dtype=np.uint16)
    ids[index] = value
    ids.tofile(path)


DAMAGED_DATA = {
    "manifest corrupt": (
        lambda d: (d / "manifest.json").write_text('{"format": "distilkit-tokens-v1", '),
        "manifest.json is corrupt (",
    ),
    "manifest without splits": (
        lambda d: (d / "manifest.json").write_text('{"format": "distilkit-tokens-v1"}'),
        "manifest.json lacks vocab_size, special_ids, dtype, splits",
    ),
    ".len missing": (
        lambda d: (d / "train-00000.len").unlink(),
        "shard file train-00000.len is missing",
    ),
    ".len truncated": (
        lambda d: (d / "train-00000.len").write_bytes((d / "train-00000.len").read_bytes()[:-6]),
        "train-00000.len is damaged (",
    ),
    ".bin truncated": (
        lambda d: (d / "train-00000.bin").write_bytes((d / "train-00000.bin").read_bytes()[:-2]),
        "shard train-00000 of",
    ),
    "token counts corrupt": (
        lambda d: (d / "token_counts.npy").write_bytes(b"\x93NUMPY garbage"),
        "token_counts.npy is unreadable (",
    ),
    "token counts not a .npy file": (
        lambda d: (d / "token_counts.npy").write_bytes(b"garbage"),
        "token_counts.npy is not a .npy file",
    ),
    "token id out of range": (
        lambda d: _write_ids(d / "train-00000.bin", 50, 60000),
        "train-00000.bin holds token id 60000 (first bad one at token 50), outside the model's "
        "vocabulary of",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGED_DATA))
def test_damaged_dataset_files_give_one_line(tiny_teacher, tiny_data, tmp_path, capsys, damage):
    breaks, message = DAMAGED_DATA[damage]
    data = _damaged_copy(tiny_data, tmp_path, breaks)
    out = tmp_path / "o"
    line = _fails(capsys, [*_distill(tiny_teacher, data, out), "--max-steps", "2"], message)
    assert str(data) in line
    _no_model_in(out)
    assert not (out / "checkpoints").exists()


def test_sequences_longer_than_the_models_position_table(tiny_teacher, tmp_path, capsys):
    data = tmp_path / "long"
    corpus = write_corpus(tmp_path / "c.txt", n_docs=30)
    argv = ["prepare", "-s", corpus, "--teacher", tiny_teacher, "--out", data, "--max-length", 80]
    assert cli.main(_argv(argv)) == 0
    for argv in (
        _distill(tiny_teacher, data, tmp_path / "o"),
        ["adapt-teacher", "--teacher", tiny_teacher, "--data", data, "--out", tmp_path / "a"],
    ):
        line = _fails(capsys, argv, f"dataset {data} holds sequences of up to ")
        assert line.endswith(
            "tokens, but the teacher takes at most 64 (its position table); prepare the data "
            "again with --max-length 64"
        )


def test_corpus_whose_content_contradicts_its_name(tiny_teacher, tmp_path, capsys):
    rows = "\n".join(json.dumps({"text": s}) for s in ["the river runs north .", "a king ."] * 20)
    for name, message in (
        ("docs.json", "docs.json: .json is not a corpus format; name JSON lines"),
        ("docs.txt", "docs.txt holds JSON lines but is read as plain text (by its name); rename"),
    ):
        (tmp_path / name).write_text(rows + "\n")
        out = tmp_path / "d"
        _fails(
            capsys, ["prepare", "-s", tmp_path / name, "--teacher", tiny_teacher, "--out", out],
            message,
        )  # fmt: skip
        assert not out.exists()


def test_symlinked_corpus_folders_are_followed_and_said(tiny_teacher, tmp_path, caplog):
    caplog.set_level("INFO")
    real = tmp_path / "elsewhere"
    real.mkdir()
    write_corpus(real / "part.txt", n_docs=30)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus / "main.txt", n_docs=30, seed=1)
    (corpus / "linked").symlink_to(real)
    (corpus / "loop").symlink_to(corpus)  # a cycle must end
    out = tmp_path / "d"
    argv = ["prepare", "-s", corpus, "--teacher", tiny_teacher, "--out", out]
    assert cli.main(_argv(argv)) == 0
    assert json.loads((out / "manifest.json").read_text())["read"]["files"] == 2
    assert f"following symlinked folder {corpus / 'linked'} -> {real}" in caplog.text
    assert f"skipping symlinked folder {corpus / 'loop'} -> {corpus} (read already)" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optim.lr=.nan", "optim.lr must be a finite number, got nan"),
        ("train.optim.eps=0", "optim.eps must be > 0, got 0.0"),
        ("train.optim.betas=[0.9,1.5]", "optim.betas[1] must be a finite number in [0.0, 1.0]"),
        ("train.optim.weight_decay=-1", "optim.weight_decay must be a finite number >= 0.0"),
        ("loss.temperature=.inf", "loss.temperature must be a finite number, got inf"),
        ("loss.alpha_mlm=.nan", "loss.alpha_mlm must be a finite number >= 0.0, got nan"),
    ],
)
def test_invalid_numbers_in_configs(tiny_teacher, tiny_data, tmp_path, capsys, override, message):
    out = tmp_path / "o"
    _fails(capsys, [*_distill(tiny_teacher, tiny_data, out), override], message)
    assert not out.exists()


def test_unwritable_output_fails_before_any_work(tiny_teacher, tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (
        _distill(tiny_teacher, tiny_data, blocker / "o"),
        ["init-student", "--teacher", tiny_teacher, "--out", blocker / "s"],
        ["prepare", "-s", write_corpus(tmp_path / "c.txt"), "--teacher", tiny_teacher,
         "--out", blocker / "d"],
    ):  # fmt: skip
        _fails(capsys, argv, f"cannot create output folder {blocker}/", ": Not a directory")
    _fails(
        capsys,
        ["prepare", "-s", tmp_path / "c.txt", "--teacher", tiny_teacher, "--out", blocker],
        f"output path {blocker} is a file, not a folder; choose another --out",
    )
    assert blocker.read_text() == "x"


def test_truncated_weights_give_one_line(tiny_teacher, tiny_data, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    weights = teacher / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    message = f"model folder {teacher}: model.safetensors is truncated ({size // 2:,} bytes; its "
    _fails(capsys, ["init-student", "--teacher", teacher, "--out", tmp_path / "s"], message)
    _fails(capsys, _distill(teacher, tiny_data, tmp_path / "o"), message)
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_a_refused_resume_leaves_nothing_that_blocks_the_next_run(
    tiny_teacher, tiny_data, tmp_path, capsys
):
    out = tmp_path / "o"
    argv = [*_distill(tiny_teacher, tiny_data, out), "--max-steps", "1"]
    _fails(capsys, [*argv, "--resume"], "holds no usable checkpoint")
    assert not (out / "student-init").exists()
    assert cli.main(_argv(argv)) == 0


# ---------------------------------------------------------------------------------------------
# finetune, zeroshot, squad: their inputs and output folders (issue 11, evaluation stages)

SQUAD = Path(__file__).parent / "fixtures" / "squad" / "tiny-v1.1.json"
FT_FAST = ["max_steps=1", "batch_size=4", "threads=1"]
SQ_FAST = ["max_length=48", "doc_stride=16", "max_steps=1", "batch_size=4", "threads=1"]


def _finetune(model, data, out, *extra, task="sst2") -> list:
    return ["finetune", "--model", model, "--task", task, "--data-dir", data, "--out", out,
            *FT_FAST, *extra]  # fmt: skip


def _zeroshot(model, data, out, *extra) -> list:
    return ["zeroshot", "--model", model, "--data-dir", data, "--out", out, "threads=1", *extra]


def _squad(model, out, *extra, train=SQUAD, fast=SQ_FAST) -> list:
    return ["squad", "--model", model, "--train-file", train, "--out", out, *fast, *extra]


def _no_result_in(folder: Path) -> None:
    """``folder`` holds nothing that looks like an evaluation result (it may not exist)."""
    for name in ("metrics.json", "predictions.json", "model", "seed-42"):
        assert not (folder / name).exists(), f"{folder / name} was left behind"


def _glue_copy(tmp_path: Path, task_dir: str, name: str, edit) -> Path:
    """A GLUE root holding ``task_dir`` copied from the fixtures, with ``name`` edited."""
    root = tmp_path / "glue"
    shutil.copytree(GLUE / task_dir, root / task_dir)
    path = root / task_dir / name
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return root


def _last_cell(row: int, value: str):
    def edit(text: str) -> str:
        lines = text.splitlines()
        cells = lines[row].split("\t")
        cells[-1] = value
        lines[row] = "\t".join(cells)
        return "\n".join(lines) + "\n"

    return edit


def test_evaluation_data_errors_name_the_file_and_row(tiny_teacher, tmp_path, capsys):
    root = _glue_copy(tmp_path, "STS-B", "train.tsv", _last_cell(2, "inf"))
    out = tmp_path / "o"
    for argv in (
        _finetune(tiny_teacher, root, out, task="stsb"),
        _zeroshot(tiny_teacher, root, out, "--split", "train"),
    ):
        _fails(
            capsys,
            argv,
            f"{root / 'STS-B' / 'train.tsv'}:3: STS-B score 'inf' is not a finite number",
        )
    root = _glue_copy(tmp_path / "e", "STS-B", "dev.tsv", _last_cell(1, ""))
    _fails(
        capsys,
        _zeroshot(tiny_teacher, root, out),
        f"{root / 'STS-B' / 'dev.tsv'}:2: STS-B score is empty",
    )
    root = _glue_copy(tmp_path / "d", "SST-2", "dev.tsv", lambda t: t + "a new label\t2\n")
    _fails(
        capsys,
        _finetune(tiny_teacher, root, out),
        f"{root / 'SST-2' / 'dev.tsv'}:6: SST-2 label '2' is not one of 0, 1",
    )
    root = _glue_copy(tmp_path / "h", "SST-2", "train.tsv", lambda t: t.splitlines()[0] + "\n")
    _fails(
        capsys,
        _finetune(tiny_teacher, root, out),
        f"{root / 'SST-2' / 'train.tsv'}: no examples after the header",
    )
    root = _glue_copy(tmp_path / "z", "SST-2", "train.tsv", lambda t: "")
    _fails(
        capsys, _finetune(tiny_teacher, root, out), f"{root / 'SST-2' / 'train.tsv'}: file is empty"
    )
    _fails(
        capsys,
        _finetune(tiny_teacher, tmp_path / "nope", out),
        f"no SST-2 train file: looked for {tmp_path / 'nope' / 'SST-2' / 'train.tsv'} and",
    )
    mixed = tmp_path / "reviews.csv"
    mixed.write_text("text,label\ngreat,1\nawful,neg\nfine,1.0\nbad,0\n", encoding="utf-8")
    _fails(
        capsys,
        _finetune(tiny_teacher, mixed, out, task="classification"),
        f"{mixed}: label column 'label' mixes numbers and text (1 at {mixed}:2, 'neg' at "
        f"{mixed}:3), so its classes are ambiguous;",
    )
    no_column = tmp_path / "texts.csv"
    no_column.write_text("review,label\ngreat,1\nbad,0\n", encoding="utf-8")
    _fails(
        capsys,
        _finetune(tiny_teacher, no_column, out, task="classification"),
        f"{no_column}:1: no column 'text' in the header (found: review, label)",
    )
    _fails(capsys, _squad(tiny_teacher, out, train=tmp_path / "nope.json"),
           f"SQuAD file not found: {tmp_path / 'nope.json'}")  # fmt: skip
    _no_result_in(out)
    assert not out.exists()


def _copy_model(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    tensors = load_file(folder / "model.safetensors")
    tensors["bert.embeddings.word_embeddings.weight"][5, 0] = math.nan
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def _torn_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes()[:300])


def test_damaged_models_give_one_line_in_every_evaluation_stage(tiny_teacher, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    trunc = _copy_model(tiny_teacher, tmp_path / "trunc", _truncate)
    nan = _copy_model(tiny_teacher, tmp_path / "nan", _nan_weights)
    notok = _copy_model(tiny_teacher, tmp_path / "notok", _no_tokenizer)
    torn = _copy_model(tiny_teacher, tmp_path / "torn", _torn_tokenizer)
    cases = [
        (blocker, f"model path is not a folder: {blocker}"),
        (trunc, f"model folder {trunc}: model.safetensors is truncated (1,000 bytes; its header"),
        (
            notok,
            f"model folder {notok} has no tokenizer (none of tokenizer.json, vocab.txt, "
            "vocab.json, tokenizer.model, *.model); copy in the tokenizer files of the model it "
            "was made from",
        ),
        (torn, f"model folder {torn}: tokenizer.json is not valid JSON ("),
    ]
    out = tmp_path / "o"
    for model, message in cases:
        for argv in (
            _finetune(model, GLUE, out),
            _zeroshot(model, GLUE, out),
            _squad(model, out),
        ):
            _fails(capsys, argv, message)
    # Weights that load but are NaN: caught before any training or scoring (zeroshot loads the
    # bare encoder, whose parameter names lack the "bert." prefix).
    for argv in (_finetune(nan, GLUE, out), _zeroshot(nan, GLUE, out), _squad(nan, out)):
        _fails(
            capsys,
            argv,
            f"model '{nan}' holds non-finite weights (1 tensors, e.g. ",
            "embeddings.word_embeddings.weight); its weight file is damaged, or it was saved "
            "from a run that diverged",
        )
    assert not out.exists()


@pytest.mark.parametrize(
    ("stage", "override", "message"),
    [
        ("finetune", "lr=.nan", "config key 'lr' must be a finite number > 0, got nan"),
        ("finetune", "batch_size=0", "config key 'batch_size' must be at least 1"),
        ("finetune", "epochs=-1", "config key 'epochs' must be at least 1"),
        ("finetune", "dropout=1.5", "config key 'dropout' must be a finite number in [0, 1)"),
        ("zeroshot", "batch_size=0", "max_length must be >= 2 and batch_size >= 1"),
        ("zeroshot", "max_eval_examples=-1", "config key 'max_eval_examples' must be >= 0"),
        ("squad", "lr=.nan", "config key 'lr' must be a finite number > 0, got nan"),
        ("squad", "temperature=.inf", "config key 'temperature' must be a finite number > 0"),
        ("squad", "max_steps=-1", "config key 'max_steps' must be >= 0"),
    ],
)
def test_invalid_numbers_in_evaluation_configs(
    tiny_teacher, tmp_path, capsys, stage, override, message
):
    out = tmp_path / "o"
    argv = {
        "finetune": _finetune(tiny_teacher, GLUE, out),
        "zeroshot": _zeroshot(tiny_teacher, GLUE, out),
        "squad": _squad(tiny_teacher, out),
    }[stage]
    _fails(capsys, [*argv, override], message)
    assert not out.exists()


def test_squad_question_longer_than_the_window(tiny_teacher, tmp_path, capsys):
    out = tmp_path / "o"
    _fails(
        capsys,
        _squad(tiny_teacher, out, "max_length=12", "doc_stride=4", fast=SQ_FAST[2:]),
        "max_length 12 leaves 1 tokens for the context next to the longest question (q009: 8 "
        "tokens and 3 special tokens), not more than doc_stride 4; lower doc_stride, or raise "
        "max_length (up to the model's position table)",
    )
    assert not out.exists()


def test_max_length_beyond_the_position_table_is_cut_and_said(tiny_teacher, tmp_path, caplog):
    out = tmp_path / "z"
    assert cli.main(_argv(_zeroshot(tiny_teacher, GLUE, out, "max_length=4096"))) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["max_length"] == 64
    assert (
        f"max_length 4096 is longer than the position table of {tiny_teacher} (64 tokens); "
        "inputs are cut at 64 tokens" in caplog.text
    )
    out = tmp_path / "q"
    argv = _squad(tiny_teacher, out, "max_length=4096", "save_model=false", fast=SQ_FAST[1:])
    assert cli.main(_argv(argv)) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["max_length"] == 64


def test_evaluation_output_folders_follow_the_stage_rules(tiny_teacher, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for argv in (
        _finetune(tiny_teacher, GLUE, blocker / "o"),
        _zeroshot(tiny_teacher, GLUE, blocker / "o"),
        _squad(tiny_teacher, blocker / "o"),
    ):
        _fails(capsys, argv, f"cannot create output folder {blocker / 'o'}: Not a directory")
    _fails(capsys, _finetune(tiny_teacher, GLUE, blocker),
           f"output path {blocker} is a file, not a folder; choose another --out")  # fmt: skip
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _fails(
        capsys,
        [*_zeroshot(tiny_teacher, GLUE, mine), "--overwrite"],
        f"output folder {mine} holds files that distilkit did not write; refusing to delete them "
        "even with --overwrite; choose another --out",
    )
    assert (mine / "notes.txt").read_text() == "mine"
    # A finished result is not replaced silently; --overwrite replaces it.
    out = tmp_path / "ft"
    assert cli.main(_argv([*_finetune(tiny_teacher, GLUE, out), "save_model=true"])) == 0
    _fails(capsys, _finetune(tiny_teacher, GLUE, out),
           f"output folder {out} is not empty (use --overwrite to replace it)")  # fmt: skip
    # ... but never the model being fine-tuned, nor the data.
    model = out / "seed-42" / "model"
    shutil.copytree(GLUE / "STS-B", out / "STS-B")
    for argv, what in (
        (_finetune(model, GLUE, out), f"the model {model}"),
        (_zeroshot(tiny_teacher, out, out), f"the data {out}"),
    ):
        _fails(
            capsys,
            [*argv, "--overwrite"],
            f"output folder {out} holds an input of this command ({what}); refusing to delete "
            "it even with --overwrite; choose another --out",
        )
    assert (model / "model.safetensors").is_file()
    assert cli.main(_argv([*_finetune(tiny_teacher, GLUE, out), "--overwrite"])) == 0
    assert not (out / "seed-42").exists()
    # Results of an earlier version (no marker file) count as distilkit's.
    (out / ".distilkit-folder.json").unlink()
    assert cli.main(_argv([*_finetune(tiny_teacher, GLUE, out), "--overwrite"])) == 0
    # --out inside the model folder: allowed, and the model is left as it was.
    inside = tmp_path / "m"
    shutil.copytree(tiny_teacher, inside)
    before = {p.name: p.read_bytes() for p in inside.iterdir()}
    assert cli.main(_argv(_finetune(inside, GLUE, inside / "ft"))) == 0
    assert {p.name: p.read_bytes() for p in inside.iterdir() if p.is_file()} == before


def test_evaluation_stage_on_a_folder_in_use(tiny_teacher, tmp_path, capsys):
    import os

    from distilkit.runfolder import claim_folder

    out = tmp_path / "o"
    with claim_folder(out, "finetune"):
        for argv in (
            _finetune(tiny_teacher, GLUE, out),
            _zeroshot(tiny_teacher, GLUE, out, "--overwrite"),
            _squad(tiny_teacher, out),
        ):
            line = _fails(capsys, argv, f"output folder {out} is in use by process {os.getpid()}")
            assert line.endswith("wait for it to end, or choose another --out")
    _no_result_in(out)


def test_ctrl_c_while_fine_tuning_leaves_no_results(tiny_teacher, tmp_path, capsys, monkeypatch):
    import distilkit.finetune

    original, steps = distilkit.finetune._loss, []

    def interrupted(*args):
        steps.append(1)
        if len(steps) == 3:  # inside the second seed, after the first seed's model was saved
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(distilkit.finetune, "_loss", interrupted)
    out = tmp_path / "o"
    argv = [*_finetune(tiny_teacher, GLUE, out), "--seeds", "2", "max_steps=2", "save_model=true"]
    assert cli.main(_argv(argv)) == 130
    assert capsys.readouterr().err.strip().endswith("distilkit finetune: interrupted")
    assert not out.exists()  # the folder it created, with the first seed's model in it, went


def test_non_finite_embeddings_write_no_score(tiny_teacher, tmp_path, capsys, monkeypatch):
    import distilkit.zeroshot

    monkeypatch.setattr(distilkit.zeroshot, "embed", lambda *a, **k: torch.full((4, 8), math.nan))
    out = tmp_path / "z"
    _fails(
        capsys,
        _zeroshot(tiny_teacher, GLUE, out),
        f"the embeddings of '{tiny_teacher}' are not finite (NaN or inf) for 4 of 4 pairs; no "
        "score was written",
    )
    assert not out.exists()


def test_a_killed_prepare_or_init_student_does_not_block_the_rerun(tiny_teacher, tmp_path):
    """SIGTERM/SIGKILL mid-build leaves only the hidden scratch folder (and the marker): the
    next run clears it without --overwrite; anything else still needs --overwrite."""
    from conftest import write_corpus
    from distilkit.data import PrepareConfig, prepare
    from distilkit.runfolder import FOLDER_MARKER
    from distilkit.student import init_student

    corpus = write_corpus(tmp_path / "c.txt", n_docs=10)
    for out, scratch in ((tmp_path / "data", ".tmp-prepare"), (tmp_path / "s", ".tmp-init")):
        out.mkdir()
        (out / FOLDER_MARKER).write_text("{}")
        (out / scratch).mkdir()
        (out / scratch / "partial.bin").write_bytes(b"x")
    prepare(
        PrepareConfig(
            sources=[str(corpus)],
            tokenizer=str(tiny_teacher),
            out_dir=str(tmp_path / "data"),
            max_length=32,
        )
    )
    assert (tmp_path / "data" / "manifest.json").is_file()
    assert not (tmp_path / "data" / ".tmp-prepare").exists()
    init_student(tiny_teacher, tmp_path / "s", num_layers=2)
    assert (tmp_path / "s" / "config.json").is_file()
    with pytest.raises(DistilkitError, match="not empty"):
        init_student(tiny_teacher, tmp_path / "s", num_layers=2)  # a finished student: kept
