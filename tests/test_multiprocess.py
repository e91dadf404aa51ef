"""Distillation with 2 processes under torchrun (gloo, CPU).

One torchrun launch (``python -m torch.distributed.run``, what the ``torchrun`` script runs) of
``tests/ddp_worker.py`` serves both tests: the ranks must end with identical weights, and 2
processes with per-rank batch b must give the weights of 1 process with batch 2b. The latter
holds because every rank takes its rows of the same global batch, masked once for all ranks
(``loop.global_batches``); the tiny models have dropout 0, so nothing else is random.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from distilkit.distill import DistillConfig, distill
from distilkit.loop import OptimConfig, TrainConfig

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS, ACCUMULATION, PER_RANK_BATCH = 4, 2, 4
LR = 3e-3

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tiny_teacher, tiny_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    _torchrun_distill(root, tiny_teacher, tiny_data, f"train.grad_accumulation={ACCUMULATION}")
    return root


def _torchrun_distill(root: Path, teacher: Path, data: Path, *overrides: str) -> None:
    """``distill`` on 2 CPU ranks (gloo) through tests/ddp_worker.py, which dumps each rank's
    final weights into ``root``."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        str(WORKER), str(root),
        "distill", "--teacher", str(teacher), "--data", str(data),
        "--out", str(root / "out"), "--max-steps", str(STEPS),
        f"train.batch_size={PER_RANK_BATCH}", f"train.optim.lr={LR}", "train.precision=fp32",
        "train.threads=1", "train.log_every=1", "train.eval_batches=1", *overrides,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _weights(root: Path, rank: int) -> dict[str, torch.Tensor]:
    dump = torch.load(root / f"rank{rank}.pt", weights_only=True)
    assert dump["steps"] == STEPS
    return dump["weights"]


def _train_losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_two_ranks_end_with_identical_weights(ddp_run):
    w0, w1 = _weights(ddp_run, 0), _weights(ddp_run, 1)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # The saved model is rank 0's, and training moved it away from its initialisation.
    saved = load_file(ddp_run / "out" / "model.safetensors")
    init = load_file(ddp_run / "out" / "student-init" / "model.safetensors")
    for k in saved:
        assert torch.equal(saved[k], w0[k]), k
    moved = max((saved[k] - init[k]).abs().max().item() for k in saved if k in init)
    assert moved > 1e-3


def test_two_processes_equal_one_process_with_double_batch(
    ddp_run, tiny_teacher, tiny_data, tmp_path
):
    out = tmp_path / "single"
    train = TrainConfig(
        batch_size=2 * PER_RANK_BATCH,
        grad_accumulation=ACCUMULATION,
        max_steps=STEPS,
        precision="fp32",
        log_every=1,
        eval_batches=1,
        threads=1,
        optim=OptimConfig(lr=LR),
    )
    distill(
        DistillConfig(teacher=str(tiny_teacher), data=str(tiny_data), out_dir=str(out), train=train)
    )
    single = load_file(out / "model.safetensors")
    init = load_file(out / "student-init" / "model.safetensors")
    ddp = _weights(ddp_run, 0)
    # Same global batches and masks: the logged losses (all-reduced over ranks) agree step by step.
    torch.testing.assert_close(
        torch.tensor(_train_losses(ddp_run / "out")),
        torch.tensor(_train_losses(out)),
        rtol=1e-5,
        atol=1e-6,
    )
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=2e-6, msg=k)
    # The tolerance is far below how far training moved the weights, so a different batch
    # composition (the old "every other batch per rank" split) fails this test.
    moved = max((single[k] - init[k]).abs().max().item() for k in single if k in init)
    assert moved > 1e-3


def test_sentence_objective_with_several_forwards_per_step_stays_in_sync(
    sentence_teacher, tiny_data, tmp_path
):
    # spans=pairs with L_tok and L_layers runs the student on sentences and on pairs, in
    # length chunks: several forwards of the DDP module before one backward. Both ranks must
    # still end with the same weights (the gradients were all-reduced once, correctly).
    root = tmp_path
    _torchrun_distill(
        root,
        sentence_teacher,
        tiny_data,
        "student_layers=[0,3]",
        "loss.embedding.spans=pairs",
        "loss.embedding.alpha_tok=1",
        "loss.embedding.alpha_layers=1",
    )
    w0, w1 = _weights(root, 0), _weights(root, 1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    init = load_file(root / "out" / "student-init" / "model.safetensors")
    assert max((w0[k] - init[k]).abs().max().item() for k in init if k in w0) > 1e-4
