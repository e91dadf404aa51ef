"""Exact resume after kill -9, and atomic checkpoints that fall back when torn or corrupt.

Bit-exactness is asserted on CPU in fp32 with one thread per process: every run here, killed,
resumed or uninterrupted, uses ``train.threads=1``.

Checkpoints are written at optimizer-step boundaries, so the position inside gradient
accumulation is always 0 in a checkpoint; a kill inside an accumulation window loses the
micro-batches of that window, which the resumed run recomputes from the same batches and masks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distilkit import cli
from distilkit.errors import DistilkitError
from distilkit.loop import find_checkpoint, verify_checkpoint

STEPS = 30  # 101 train sequences / (4 x 2) = 12 steps per epoch: the run crosses epochs
TRAIN = [
    "train.batch_size=4",
    "train.grad_accumulation=2",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=2",
    "train.precision=fp32",
    "train.threads=1",
    "train.log_every=1",
    "train.eval_batches=2",
    "train.optim.lr=0.003",
]

# Runs `distilkit` in this process after making the N-th micro-batch forward SIGKILL it: a kill
# inside an accumulation window, after the window's first micro-batch was back-propagated.
SELF_KILL = """
import os, signal, sys
import distilkit.distill as d
original, calls = d.DistillObjective.losses, [0]
def losses(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT_MICRO_BATCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
d.DistillObjective.losses = losses
from distilkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs set torch to one thread (train.threads=1); give the test process its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _distill_args(teacher, data, out, steps: int = STEPS) -> list[str]:
    return [
        "distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
        "--max-steps", str(steps), *TRAIN,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def _train_records(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def _kill_when(proc: subprocess.Popen, path: Path, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before {path.name}:\n{log.read_text()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear in {timeout} s")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_twice_then_resume_gives_the_uninterrupted_weights_bit_for_bit(
    tiny_teacher, tiny_data, tmp_path
):
    ref, out = tmp_path / "reference", tmp_path / "killed"
    assert cli.main(_distill_args(tiny_teacher, tiny_data, ref)) == 0

    # 1. kill -9 from outside as soon as the step-2 checkpoint exists: wherever the run is then
    #    (mid-window, mid-checkpoint-write, ...). The run is niced so that on busy cores this
    #    process still gets to kill it well before its end.
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as f:
        proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "distilkit",
             *_distill_args(tiny_teacher, tiny_data, out)],
            stdout=f, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
        _kill_when(proc, out / "checkpoints" / "step-00000002", log1)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}:\n{log1.read_text()}"
    assert not (out / "config.json").exists()
    first = int(find_checkpoint(out, None).name.split("-")[1])
    assert 2 <= first <= STEPS - 4, f"the kill came too late (newest checkpoint: step {first})"

    # 2. resume, and kill -9 again inside an accumulation window: the 2nd micro-batch of the
    #    3rd step after the resume.
    log2 = tmp_path / "run2.log"
    with open(log2, "w") as f:
        proc = subprocess.run(
            ["nice", "-n", "10", sys.executable, "-c", SELF_KILL,
             *_distill_args(tiny_teacher, tiny_data, out), "--resume"],
            stdout=f, stderr=subprocess.STDOUT, env=_env() | {"KILL_AT_MICRO_BATCH": "6"},
            timeout=300,
        )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, log2.read_text()
    assert f"resumed from {out / 'checkpoints' / f'step-{first:08d}'}" in log2.read_text()
    assert not (out / "config.json").exists()

    # 3. resume to the end.
    assert cli.main([*_distill_args(tiny_teacher, tiny_data, out), "--resume"]) == 0
    _assert_same_weights(ref, out)
    # The metrics of steps the checkpoint did not hold were dropped on resume: each step once,
    # with the uninterrupted run's values.
    got, want = _train_records(out), _train_records(ref)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    assert json.loads((out / "results.json").read_text())["steps"] == STEPS


def test_adapt_teacher_halt_and_resume_is_bit_exact(tiny_teacher, tiny_data, tmp_path):
    def args(out, *extra):
        return [
            "adapt-teacher", "--teacher", str(tiny_teacher), "--data", str(tiny_data),
            "--out", str(out), "--max-steps", "6", *TRAIN, *extra,
        ]  # fmt: skip

    assert cli.main(args(tmp_path / "a")) == 0
    assert cli.main(args(tmp_path / "b", "train.halt_at_step=3")) == 0
    assert not (tmp_path / "b" / "config.json").exists()
    assert cli.main(args(tmp_path / "b", "--resume")) == 0
    _assert_same_weights(tmp_path / "a", tmp_path / "b")


# ---------------------------------------------------------------------------------------------
# Atomic checkpoints


@pytest.fixture(scope="module")
def halted(tiny_teacher, tiny_data, tmp_path_factory):
    """A run halted after step 4 (checkpoints at 2 and 4) and the same run uninterrupted (6)."""
    root = tmp_path_factory.mktemp("halted")
    threads = torch.get_num_threads()
    common = [*TRAIN, "train.keep_checkpoints=3"]
    full = _distill_args(tiny_teacher, tiny_data, root / "full", steps=6)
    part = _distill_args(tiny_teacher, tiny_data, root / "part", steps=6)
    assert cli.main([*full, *common]) == 0
    assert cli.main([*part, *common, "train.halt_at_step=4"]) == 0
    torch.set_num_threads(threads)
    names = sorted(p.name for p in (root / "part" / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000004"]
    return {"full": root / "full", "part": root / "part", "args": part + common}


def _copy_run(halted, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(halted["part"], out)
    return out


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "weights deleted": (
        lambda c: (c / "model.safetensors").unlink(),
        "model.safetensors is missing",
    ),
    "optimizer byte flipped": (
        lambda c: _flip_byte(c / "optimizer.pt"),
        "optimizer.pt does not match its checksum",
    ),
    "state truncated": (
        lambda c: (c / "trainer_state.json").write_text('{"step": 4,'),
        "trainer_state.json does not match its checksum",
    ),
    "no checksums": (
        lambda c: (c / "checksums.json").unlink(),
        "no checksums.json (torn write?)",
    ),
    "checksums corrupt": (
        lambda c: (c / "checksums.json").write_text("{"),
        "checksums.json is corrupt",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_torn_or_corrupt_newest_checkpoint_falls_back_with_a_warning(
    halted, tmp_path, caplog, damage
):
    out = _copy_run(halted, tmp_path)
    # A kill during a checkpoint write leaves its temporary folder behind.
    tmp = out / "checkpoints" / ".tmp-step-00000006"
    tmp.mkdir()
    shutil.copy(out / "checkpoints" / "step-00000004" / "config.json", tmp)
    assert find_checkpoint(out, None).name == "step-00000004"
    assert not caplog.records  # a leftover temporary folder is simply not a checkpoint

    breaks, reason = DAMAGE[damage]
    breaks(out / "checkpoints" / "step-00000004")
    assert verify_checkpoint(out / "checkpoints" / "step-00000004") == reason
    assert find_checkpoint(out, None).name == "step-00000002"
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == [f"checkpoint step-00000004 is unusable ({reason}); trying an older one"]


def test_resume_past_a_corrupt_checkpoint_is_still_exact(halted, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = _copy_run(halted, tmp_path)
    _flip_byte(out / "checkpoints" / "step-00000004" / "model.safetensors")
    assert cli.main([*halted["args"], "--out", str(out), "--resume"]) == 0
    assert "step-00000004 is unusable (model.safetensors does not match its checksum)" in (
        caplog.text
    )
    assert "resumed from" in caplog.text and "step-00000002 at step 2" in caplog.text
    _assert_same_weights(halted["full"], out)
    assert [r["step"] for r in _train_records(out)] == [1, 2, 3, 4, 5, 6]


def _error_line(capsys) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("distilkit ")]
    assert len(err) == 1, err
    return err[0]


def test_resume_with_nothing_usable_is_an_error_never_a_fresh_start(halted, tmp_path, capsys):
    out = _copy_run(halted, tmp_path)
    for ckpt in (out / "checkpoints").iterdir():
        _flip_byte(ckpt / "model.safetensors")
    metrics = (out / "metrics.jsonl").read_text()
    assert cli.main([*halted["args"], "--out", str(out), "--resume"]) == 2
    assert _error_line(capsys) == (
        f"distilkit distill: error: --resume was given but {out}/checkpoints holds no usable "
        "checkpoint"
    )
    assert (out / "metrics.jsonl").read_text() == metrics  # no step was run
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()

    fresh = tmp_path / "fresh"
    assert cli.main([*halted["args"], "--out", str(fresh), "--resume"]) == 2
    assert "holds no usable checkpoint" in _error_line(capsys)
    assert not (fresh / "metrics.jsonl").exists() and not (fresh / "config.json").exists()

    explicit = out / "checkpoints" / "step-00000002"
    assert cli.main([*halted["args"], "--out", str(out), "--resume-from", str(explicit)]) == 2
    assert _error_line(capsys) == (
        f"distilkit distill: error: cannot resume from {explicit}: model.safetensors does not "
        "match its checksum"
    )


def test_checkpoint_holds_what_resume_needs(halted):
    ckpt = halted["part"] / "checkpoints" / "step-00000004"
    assert verify_checkpoint(ckpt) is None
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng.pt"} <= names
    assert {"trainer_state.json", "checksums.json"} <= names
    state = json.loads((ckpt / "trainer_state.json").read_text())
    # 4 steps x 2 micro-batches: the cursor counts micro-batches, always at a window's end.
    assert (state["step"], state["epoch"], state["cursor"]) == (4, 0, 8)
    assert state["world_size"] == 1
    with pytest.raises(DistilkitError, match="not a folder"):
        find_checkpoint(halted["part"], str(halted["part"] / "checkpoints" / "step-00000099"))


# ---------------------------------------------------------------------------------------------
# Resume knows what it resumes (issue 11, item 3)


def _resume(halted, out, *extra) -> list[str]:
    """The halted run's command on ``out`` with --resume; ``key=value`` overrides last."""
    parts = [*halted["args"], "--out", str(out), "--resume", *extra]
    overrides = [a for a in parts if "=" in a and not a.startswith("-")]
    return [a for a in parts if a not in overrides] + overrides


def test_resume_refuses_changed_settings_and_lists_them(
    halted, tiny_teacher, tiny_data, tmp_path, capsys
):
    out = _copy_run(halted, tmp_path)
    metrics = (out / "metrics.jsonl").read_text()
    ckpt = out / "checkpoints" / "step-00000004"
    assert cli.main(_resume(halted, out, "train.batch_size=2", "train.seed=5")) == 2
    assert _error_line(capsys) == (
        f"distilkit distill: error: cannot resume from {ckpt}: the settings differ: "
        "train.batch_size 4 -> 2; train.seed 56 -> 5; resume with the checkpoint's settings, or "
        "start a new run in another --out"
    )
    # Another dataset (same tokenizer), another teacher, other student layers, another loss.
    from conftest import save_tiny_bert, write_corpus
    from distilkit.data import PrepareConfig, prepare

    other = tmp_path / "other-data"
    prepare(PrepareConfig(sources=[str(write_corpus(tmp_path / "c.txt", 60, seed=9))],
                          tokenizer=str(tiny_teacher), out_dir=str(other), max_length=32,
                          validation_fraction=0.15, seed=3))  # fmt: skip
    args = _resume(halted, out)
    i = args.index("--data")
    assert cli.main([*args[: i + 1], str(other), *args[i + 2 :]]) == 2
    assert "the settings differ: data " in _error_line(capsys)
    from transformers import AutoTokenizer

    teacher2 = save_tiny_bert(tmp_path / "t2", AutoTokenizer.from_pretrained(tiny_teacher), seed=1)
    i = args.index("--teacher")
    assert cli.main([*args[: i + 1], str(teacher2), *args[i + 2 :]]) == 2
    assert "the settings differ: teacher " in _error_line(capsys)
    assert cli.main(_resume(halted, out, "student_layers=[0,3]")) == 2
    assert "student_layers [] -> [0, 3]" in _error_line(capsys)
    assert cli.main(_resume(halted, out, "loss.alpha_cos=0")) == 2
    assert _error_line(capsys).endswith(
        "the settings differ: loss.alpha_cos 1.0 -> 0.0; to change them on purpose add "
        "train.allow_changes=[loss.alpha_cos]"
    )
    assert cli.main(_resume(halted, out, "train.allow_changes=[train.seed]")) == 2
    assert "train.allow_changes names train.seed, which cannot change on resume" in (
        _error_line(capsys)
    )
    # Nothing ran: no step logged, no model, the checkpoints as they were.
    assert (out / "metrics.jsonl").read_text() == metrics
    assert not (out / "config.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]


def test_allowed_changes_are_applied_and_recorded(halted, tmp_path):
    out = _copy_run(halted, tmp_path)
    allow = "train.allow_changes=[loss.alpha_cos,train.optim.lr,train.max_steps]"
    argv = _resume(halted, out, "loss.alpha_cos=0", "train.optim.lr=0.001", allow)
    argv[argv.index("--max-steps") + 1] = "8"
    assert cli.main(argv) == 0
    changed = {
        "loss.alpha_cos": [1.0, 0.0],
        "train.max_steps": [6, 8],
        "train.optim.lr": [0.003, 0.001],
    }
    record = json.loads((out / "distilkit_run.json").read_text())["changes"]
    assert record == [
        {"step": 4, "checkpoint": str(out / "checkpoints" / "step-00000004"), "changed": changed}
    ]
    assert json.loads((out / "results.json").read_text())["changed_on_resume"] == record
    rows = _train_records(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert "loss_cos" in rows[3] and "loss_cos" not in rows[4]  # the set of parts changed
    # The new lr and length: linear decay of 0.001 over 8 steps (1 warm-up step).
    assert rows[4]["lr"] == pytest.approx(0.001 * (8 - 5) / (8 - 1))
    assert (out / "loss_curve.png").is_file() and (out / "model.safetensors").is_file()
    # The next resume compares with the changed settings, not the first ones.
    state = json.loads((out / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    assert state["settings"]["loss.alpha_cos"] == 0.0 and state["changes"] == record


def test_resume_from_starts_a_new_branch(halted, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = _copy_run(halted, tmp_path)
    origin = out / "checkpoints" / "step-00000002"
    # Back to step 2, keeping one checkpoint, halting at 3: the abandoned step-4 must neither
    # push out the new step-3 nor be resumed later.
    argv = _resume(halted, out, "train.keep_checkpoints=1", "train.checkpoint_every=1",
                   "train.halt_at_step=3")  # fmt: skip
    argv[argv.index("--resume")] = "--resume-from"
    argv.insert(argv.index("--resume-from") + 1, str(origin))
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000003"]
    moved = list((out / "checkpoints" / "abandoned").glob("before-step-00000002-*/step-00000004"))
    assert len(moved) == 1 and verify_checkpoint(moved[0]) is None
    assert "starts a new branch: 1 checkpoint(s) of the abandoned trajectory" in caplog.text
    caplog.clear()
    assert cli.main(_resume(halted, out)) == 0
    assert f"resumed from {out / 'checkpoints' / 'step-00000003'} at step 3" in caplog.text
    _assert_same_weights(halted["full"], out)  # the same trajectory, replayed from step 2
    assert [r["step"] for r in _train_records(out)] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------
# Durability and truthful records (items 7, 8)


def test_checkpoint_and_final_files_are_fsynced_before_they_are_published(
    tiny_teacher, tiny_data, tmp_path, monkeypatch
):
    synced: list[str] = []
    original = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return original(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "o"
    args = _distill_args(tiny_teacher, tiny_data, out, steps=2)
    assert cli.main(args) == 0
    ckpt = out / "checkpoints" / "step-00000002"
    tmp = out / "checkpoints" / ".tmp-step-00000002"
    # Every file under its temporary name (so: before the rename), the folder, then its parent.
    assert {str(tmp / p.name) for p in ckpt.iterdir()} <= set(synced)
    assert synced.index(str(tmp)) < synced.index(str(out / "checkpoints"))
    final = out / ".final-tmp"
    assert {str(final / n) for n in ("model.safetensors", "config.json")} <= set(synced)
    assert str(out) in synced


def test_throughput_and_time_cover_every_segment_of_a_resumed_run(halted, tmp_path):
    out = _copy_run(halted, tmp_path)
    # Say the first segment trained for 1000 s (and keep the checkpoint valid).
    ckpt = out / "checkpoints" / "step-00000004"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    first = state["seconds"]
    assert 0 < first < 1000
    state["seconds"] = 1000.0
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    sums = json.loads((ckpt / "checksums.json").read_text())
    from distilkit.checkpoints import _sha256

    sums["trainer_state.json"] = _sha256(ckpt / "trainer_state.json")
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    assert cli.main(_resume(halted, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert 1000 < results["seconds"] < 1000 + 600
    assert results["tokens_per_second"] == pytest.approx(results["tokens"] / results["seconds"])
    card = (out / "README.md").read_text()
    assert f"{results['tokens']:,} tokens, {results['seconds']:.0f} s" in card


# ---------------------------------------------------------------------------------------------
# SIGTERM is a preemption (item 5)

# SIGTERM to the whole process group (as a scheduler sends it: the DataLoader worker gets it
# too) at the N-th micro-batch forward, inside an accumulation window.
SELF_TERM = """
import os, signal, sys
import distilkit.distill as d
original, calls = d.DistillObjective.losses, [0]
def losses(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["TERM_AT_MICRO_BATCH"]):
        os.killpg(os.getpgid(0), signal.SIGTERM)
    return original(self, *args, **kwargs)
d.DistillObjective.losses = losses
from distilkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _session_processes(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after "(comm)": state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def test_sigterm_checkpoints_at_the_step_boundary_and_exits_resumable(
    tiny_teacher, tiny_data, tmp_path
):
    ref, out = tmp_path / "reference", tmp_path / "stopped"
    steps = 8
    assert cli.main(_distill_args(tiny_teacher, tiny_data, ref, steps)) == 0
    args = [*_distill_args(tiny_teacher, tiny_data, out, steps), "train.num_workers=1"]
    # A session of its own: its id is the child's pid, and every process it starts (the
    # DataLoader worker) stays in it, so leftovers can be found after the child exits.
    proc = subprocess.Popen(
        [sys.executable, "-c", SELF_TERM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env() | {"TERM_AT_MICRO_BATCH": "6"}, start_new_session=True,
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=300)
    proc.stderr = stderr
    assert proc.returncode == 75, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("distilkit ")]
    ckpt = out / "checkpoints" / "step-00000003"
    assert errors == [
        f"distilkit distill: error: stopped by SIGTERM after step 3 with checkpoint {ckpt}; the "
        "same command with --resume continues it (exit status 75: resumable)"
    ]
    assert verify_checkpoint(ckpt) is None and not (out / "config.json").exists()
    assert _session_processes(proc.pid) == []  # the DataLoader worker ended with the run
    assert cli.main([*args, "--resume"]) == 0
    _assert_same_weights(ref, out)
