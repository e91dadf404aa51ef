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
