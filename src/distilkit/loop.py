"""The training loop shared by ``distill`` and ``adapt-teacher``.

It is written out explicitly: batches -> masking -> forward -> losses normalised over the whole
accumulation window -> backward -> clip -> step, with checkpoints that resume exactly.

Exactness rests on three choices:
- the batch order of an epoch is a pure function of ``(seed, epoch)``;
- the masks of global micro-batch ``k`` come from a generator seeded with ``(seed, epoch, 0, k)``;
  every rank masks the whole global batch and keeps its rows (DDP = one big batch);
- the global torch RNG (dropout) is re-seeded from ``(seed, step, micro-batch, rank)``.
A checkpoint therefore needs only weights, optimizer/scheduler/scaler state and the position
``(step, epoch, micro-batch cursor)``; RNG states are saved too, for the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from distilkit.checkpoints import (
    compare_settings,
    find_checkpoint,
    finite_number,
    flatten,
    nonfinite_parameters,
    save_checkpoint,
    start_branch,
    verify_checkpoint,  # noqa: F401 (re-exported)
    write_failure,
)
from distilkit.config import to_dict
from distilkit.data import TokenDataset, dataset_fingerprint
from distilkit.errors import DistilkitError
from distilkit.masking import MaskingConfig, mask_batch, token_weights
from distilkit.plan import batch_text, log_plan
from distilkit.runfolder import claim_folder, fsync_dir, fsync_tree

# Checkpoint I/O lives in distilkit.checkpoints; callers of earlier versions import it from here.
_write_failure = write_failure

log = logging.getLogger(__name__)

RUN_MARKER = "distilkit_run.json"


@dataclass
class OptimConfig:
    """AdamW and schedule (defaults: the reference implementation's)."""

    lr: float = 5e-4
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW's beta1 and beta2."""
    eps: float = 1e-6
    """AdamW's epsilon."""
    weight_decay: float = 0.0
    """Not applied to biases and LayerNorm weights."""
    warmup_ratio: float = 0.05
    """Linear warm-up over this share of the optimizer steps, then linear decay to 0."""
    max_grad_norm: float = 5.0
    """Gradient clipping (0: off)."""

    def validate(self) -> None:
        # NaN passes every comparison, so each number is checked for finiteness explicitly: a
        # NaN lr or eps would otherwise train a model of NaN weights (and eps=0 divides by 0
        # wherever a gradient is 0).
        finite_number("optim.lr", self.lr)
        if self.lr <= 0:
            raise DistilkitError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise DistilkitError("optim.betas must hold two numbers")
        for i, b in enumerate(self.betas):
            finite_number(f"optim.betas[{i}]", b, 0.0, 1.0)
            if b >= 1.0:
                raise DistilkitError(f"optim.betas[{i}] must be < 1, got {b}")
        finite_number("optim.eps", self.eps)
        if self.eps <= 0:
            raise DistilkitError(f"optim.eps must be > 0, got {self.eps}")
        finite_number("optim.weight_decay", self.weight_decay, 0.0)
        finite_number("optim.max_grad_norm", self.max_grad_norm, 0.0)
        finite_number("optim.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        if not 0 <= self.warmup_ratio < 1:
            raise DistilkitError("optim.warmup_ratio must be in [0, 1)")


@dataclass
class TrainConfig:
    """Loop options shared by distill and adapt-teacher."""

    batch_size: int = 8
    """Sequences per micro-batch per process."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step; effective batch = batch_size x this x processes."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means run ``epochs`` epochs."""
    epochs: int = 3
    """Passes over the training split when max_steps is 0."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """bf16 autocast (CPU and GPU), fp16 autocast with loss scaling (GPU only), or fp32. 'auto':
    bf16 on a GPU that supports it and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32;
    on an AVX2-only CPU bf16 is emulated and ~9x slower than fp32 (measured, docs/results)."""
    seed: int = 56
    """Seed of the batch order, the masks and dropout."""
    group_by_length: bool = True
    """Batch sequences of similar length together to cut padding."""
    log_every: int = 10
    """Log and record the training losses every N optimizer steps."""
    eval_every: int = 0
    """Validate every N optimizer steps (0: only at the end)."""
    eval_batches: int = 20
    """Validation batches of 16 held-out sequences per evaluation (0: the whole split); the set
    is fixed by the dataset alone, so runs with other seeds or batch sizes are comparable."""
    checkpoint_every: int = 0
    """Checkpoint every N optimizer steps (0: never)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted."""
    num_workers: int = 0
    """DataLoader worker processes preparing and masking batches."""
    threads: int = 0
    """torch CPU threads per process (0: leave torch's default)."""
    compile: bool = False
    """torch.compile the models (measure before relying on it)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    on_nonfinite: Literal["skip", "stop"] = "skip"
    """What to do when a loss is NaN/inf: skip the step (counted), or stop cleanly."""
    max_nonfinite: int = 20
    """Stop after this many skipped steps in a row even with on_nonfinite=skip."""
    halt_at_step: int = 0
    """End this process after that optimizer step with a checkpoint but no final model, to be
    continued with --resume (time-limited job slots; also how resume is tested). 0: off."""
    allow_changes: list[str] = field(default_factory=list)
    """Settings that may differ from the checkpoint's on --resume, e.g. [loss.alpha_cos,
    train.optim.lr, train.max_steps]; any other difference stops the resume. Recorded."""

    def validate(self) -> None:
        for name in ("batch_size", "grad_accumulation", "log_every"):
            if getattr(self, name) < 1:
                raise DistilkitError(f"train.{name} must be >= 1")
        if self.max_steps < 0 or self.epochs < 0 or (self.max_steps == 0 and self.epochs == 0):
            raise DistilkitError("set train.max_steps > 0 or train.epochs > 0")
        if self.keep_checkpoints < 1:
            raise DistilkitError("train.keep_checkpoints must be >= 1")
        self.optim.validate()


class Objective(Protocol):
    """What a training stage plugs into the loop."""

    part_names: tuple[str, ...]
    weights: dict[str, float]

    def train_module(self) -> nn.Module: ...

    def rows(self, batch: dict) -> dict[str, int]: ...

    def losses(self, module: nn.Module, batch: dict, norms: dict[str, float]) -> dict: ...

    def evaluate(self, batches: list[dict]) -> dict[str, float]: ...


# ---------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class Runtime:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(threads: int = 0) -> Runtime:
    """Join the process group when launched by torchrun / accelerate launch (env:// rendezvous)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if threads > 0:
        torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, local_rank, device)


def _barrier(rt: Runtime) -> None:
    if rt.world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Data: deterministic batch order, masking in the loader


def _mix(*values: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    h = hashlib.blake2b(",".join(str(v) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def global_batches(
    lengths: np.ndarray,
    size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    multiple: int = 1,
) -> list[np.ndarray]:
    """The epoch's global batches of ``size`` sequence indices, as one process would see them.

    Length grouping sorts windows of 50 batches by length, so each batch holds similar lengths,
    then shuffles the batches. The count is a multiple of ``multiple`` (the accumulation), so
    that no window spans two epochs.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if group_by_length:
        window = size * 50
        chunks = []
        for start in range(0, len(perm), window):
            part = perm[start : start + window]
            chunks.append(part[np.argsort(-lengths[part], kind="stable")])
        perm = np.concatenate(chunks) if chunks else perm
    n_full = len(perm) // size
    batches = [perm[i * size : (i + 1) * size] for i in range(n_full)]
    order = rng.permutation(len(batches))
    batches = [batches[i] for i in order]
    return batches[: len(batches) // multiple * multiple]


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    world: int = 1,
    rank: int = 0,
    multiple: int = 1,
) -> list[np.ndarray]:
    """This rank's micro-batches of sequence indices for one epoch.

    Rank ``r`` gets rows ``[r * batch_size, (r + 1) * batch_size)`` of every global batch of
    ``world * batch_size`` (``global_batches``), so ``world`` processes with batch ``b`` see the
    very batches one process with batch ``world * b`` sees (DDP equivalence, tested).
    """
    rows = slice(rank * batch_size, (rank + 1) * batch_size)
    return [
        g[rows]
        for g in global_batches(lengths, batch_size * world, seed, epoch, group_by_length, multiple)
    ]


class MaskedBatches(torch.utils.data.Dataset):
    """Micro-batch ``k`` of a list: padded ``(B, L)`` ids, masked with a seed derived from ``k``.

    With ``rows``, ``batches`` are global batches: the whole batch is masked (the same draw on
    every rank) and this rank keeps ``rows`` of it, so masks do not depend on the process count.
    """

    def __init__(
        self,
        data: TokenDataset,
        batches: list[np.ndarray],
        weights: torch.Tensor,
        masking: MaskingConfig,
        seed_parts: tuple[int, ...],
        first: int = 0,
        rows: slice | None = None,
    ):
        self.data, self.batches, self.weights, self.masking = data, batches, weights, masking
        self.seed_parts, self.first, self.rows = seed_parts, first, rows
        self.pad_id = data.special_ids["pad"]
        self.mask_id = data.special_ids["mask"]

    def __len__(self) -> int:
        return len(self.batches) - self.first

    def __getitem__(self, i: int) -> dict:
        k = self.first + i
        return collate(
            [self.data[j] for j in self.batches[k]],
            self.weights,
            self.masking,
            self.mask_id,
            self.pad_id,
            torch.Generator().manual_seed(_mix(*self.seed_parts, k)),
            self.rows,
        )


def collate(
    seqs: list[np.ndarray],
    weights: torch.Tensor,
    masking: MaskingConfig,
    mask_id: int,
    pad_id: int,
    generator: torch.Generator,
    rows: slice | None = None,
) -> dict:
    """Pad ``seqs`` into ``(B, L)``, mask them, keep ``rows`` (all when None) with the padding
    trimmed to their longest, and index the result (see ``index_batch``)."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.from_numpy(s)
    masked, targets = mask_batch(ids, weights, mask_id, pad_id, masking, generator)
    if rows is not None:
        keep = max(len(s) for s in seqs[rows])
        ids, masked, targets = (t[rows, :keep].contiguous() for t in (ids, masked, targets))
    return index_batch(ids, masked, targets, pad_id)


def index_batch(
    ids: torch.Tensor, masked: torch.Tensor, targets: torch.Tensor, pad_id: int
) -> dict:
    """Precompute flat row indices so that the step needs no host-device sync.

    Args: ``ids`` (B, L) original ids, ``masked`` (B, L) ids fed to the models, ``targets``
    (B, L) bool positions to predict.

    Returns ``input_ids`` (B, L) masked ids, ``attention_mask`` (B, L), ``real_idx`` (R,) flat
    indices of real tokens, ``target_idx`` (M,) flat indices of the targets, ``target_in_real``
    (M,) positions of the targets inside ``real_idx``, ``labels`` (M,) original ids there,
    ``original_ids`` (B, L) the unmasked ids, and ``n_tokens`` (an int) real tokens.
    """
    attention = ids != pad_id
    real_idx = attention.view(-1).nonzero().squeeze(1)
    target_idx = targets.view(-1).nonzero().squeeze(1)
    target_in_real = targets.view(-1)[real_idx].nonzero().squeeze(1)
    return {
        "input_ids": masked,
        "attention_mask": attention.long(),
        "real_idx": real_idx,
        "target_idx": target_idx,
        "target_in_real": target_in_real,
        "labels": ids.view(-1)[target_idx],
        "original_ids": ids,
        "n_tokens": int(attention.sum()),
    }


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


# ---------------------------------------------------------------------------------------------
# Optimizer, schedule, precision


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused: one pass over each tensor, on GPUs and CPUs alike (CPU: 5x less time than foreach
    # for a 10M-parameter student, docs/results/throughput.md).
    kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)


def build_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn 'auto' into what is fast on this hardware."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return "bf16" if native else "fp32"


def autocast_for(precision: str, device: torch.device):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise DistilkitError("fp16 needs a GPU; use precision=bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Output folder


def claim_run_folder(
    out: Path, stage: str, resume: bool, overwrite: bool, inputs: dict, rt: Runtime
) -> contextlib.AbstractContextManager:
    """Lock ``out`` for this run (rank 0 holds the lock; the other ranks wait for it).

    An existing run needs --resume or --overwrite; --overwrite deletes only distilkit's own
    output without any of ``inputs`` in it. What a failed start left (a built student, an empty
    checkpoints folder, a run marker) holds no work and is cleared, so it never blocks a rerun.
    """
    claim: contextlib.AbstractContextManager = contextlib.nullcontext()
    if rt.main:
        claim = claim_folder(
            out,
            stage,
            overwrite=overwrite,
            inputs=inputs,
            resume=resume,
            is_residue=_holds_no_work,
        )
    _barrier(rt)
    return claim


def _holds_no_work(claim) -> bool:
    """Whether a run folder holds only what a run leaves before its first step."""
    residue = {RUN_MARKER, "student-init", "checkpoints", "tensorboard", "metrics.jsonl"}
    for p in claim.contents():
        if p.name not in residue:
            return False
        if p.name == "checkpoints" and any(p.iterdir()):
            return False
        if p.name == "metrics.jsonl" and p.stat().st_size > 0:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Stopping: non-finite values and SIGTERM


class Preempted(DistilkitError):
    """The run stopped on SIGTERM after writing a checkpoint; ``--resume`` continues it."""

    exit_code = 75  # EX_TEMPFAIL: "try again"; schedulers can requeue on it


class _SigtermFlag:
    """SIGTERM (a scheduler's preemption, ``kill``) only sets a flag; the loop checkpoints at the
    next step boundary and stops. A second SIGTERM kills at once (the default action)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.requested = True
        log.warning("SIGTERM received: stopping after this step with a checkpoint")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which stops them itself: a
    process-group SIGTERM must not kill a worker in the middle of the step being finished."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _nonfinite_message(step: int, values: dict[str, float], grad_norm: float) -> str | None:
    """What is non-finite at this step (loss parts first, then the gradient), or None."""
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    if bad:
        return f"non-finite loss at step {step}: {', '.join(bad)} = " + ", ".join(
            str(values[n]) for n in bad
        )
    if not math.isfinite(grad_norm):
        return f"non-finite gradient at step {step} (norm {grad_norm}, losses finite)"
    return None


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class LoopResult:
    steps: int
    tokens: int
    seconds: float
    """Training time of the whole run, summed over the segments of a resumed run."""
    final_eval: dict[str, float]
    nonfinite_skipped: int
    history: list[dict]
    halted: bool = False
    changes: list[dict] = field(default_factory=list)
    """Settings changed on purpose at a resume: ``{"step", "checkpoint", "changed"}``."""


@dataclass
class Position:
    """Where a run is, and what it has counted: everything a checkpoint holds besides the
    model, optimizer, scheduler and scaler states."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0
    """Micro-batches of ``epoch`` consumed; a multiple of grad_accumulation at a checkpoint."""
    tokens: int = 0
    skipped: int = 0
    """Optimizer steps skipped for non-finite values."""
    seconds: float = 0.0
    """Training time so far, over all segments of the run."""
    history: list[dict] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)


def run(
    objective: Objective,
    model_to_save: nn.Module,
    data_dir: str | Path,
    masking: MaskingConfig,
    cfg: TrainConfig,
    out: Path,
    rt: Runtime,
    resume: bool | str = False,
    run_info: dict | None = None,
    settings: dict | None = None,
) -> LoopResult:
    """Train ``objective.train_module()`` and return what happened.

    ``model_to_save`` is the (unwrapped) Hugging Face model whose weights the checkpoints hold.
    ``settings`` are the caller's settings that shape the trajectory (teacher, student, losses as
    flat ``key: value``); with the loop's own (data, batch, seed, optimizer, ...) they are saved
    in every checkpoint and compared on resume.
    """
    cfg.validate()
    trainer = _Trainer(objective, model_to_save, data_dir, masking, cfg, out, rt, settings or {})
    if rt.main:
        trainer.log_plan(run_info, resume)
    if resume:
        trainer.resume(resume if isinstance(resume, str) else None)
    return trainer.train(run_info)


class _Trainer:
    """One run of the loop. Where to look:

    - ``step``: one optimizer step (accumulation window, forward/backward, clip, apply);
    - ``_guard``: the non-finite guard (losses and gradients; parameters before every save);
    - ``checkpoint`` and ``resume``: what a checkpoint holds and how a run continues from one;
    - ``train``: the schedule of steps, logging, evaluation, halting and SIGTERM.
    """

    def __init__(self, objective, model_to_save, data_dir, masking, cfg, out, rt, settings):
        self.objective, self.model_to_save, self.cfg, self.out, self.rt = (
            objective,
            model_to_save,
            cfg,
            Path(out),
            rt,
        )
        self.masking = masking
        self.train_data = TokenDataset(data_dir, "train")
        self.val_data = TokenDataset(data_dir, "validation")
        vocab = model_to_save.get_input_embeddings().num_embeddings
        for split in (self.train_data, self.val_data):
            split.check_ids(vocab)
        self.specials = self.train_data.special_ids
        self.weights = token_weights(
            self.train_data.token_counts(), list(self.specials.values()), masking.smoothing
        )
        self.total_steps = self._total_steps()
        self.settings = {
            "data": dataset_fingerprint(data_dir),
            "world_size": rt.world,
            **flatten("train", to_dict(cfg)),
            **flatten("masking", to_dict(masking)),
            **settings,
        }

        self.module = objective.train_module()
        if rt.world > 1:
            ddp_kwargs = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
            ddp_kwargs["find_unused_parameters"] = getattr(objective, "find_unused", False)
            self.module = nn.parallel.DistributedDataParallel(self.module, **ddp_kwargs)
        self.step_module = torch.compile(self.module) if cfg.compile else self.module
        self.optimizer = build_optimizer(self.module, cfg.optim, rt.device)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.optim.warmup_ratio)
        self.precision = resolve_precision(cfg.precision, rt.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.pos = Position()
        self.ckpt_root = self.out / "checkpoints"
        self.resumed_from: Path | None = None
        self.saved_step = -1  # the step of the newest checkpoint this run holds
        # An objective may turn token batches into its own inputs (sentence spans, ...).
        self.prepare_batch = getattr(objective, "prepare_batch", None) or (lambda b: b)

    def _total_steps(self) -> int:
        cfg, rt = self.cfg, self.rt
        batches = epoch_batches(
            self.train_data.lengths,
            cfg.batch_size,
            cfg.seed,
            0,
            cfg.group_by_length,
            rt.world,
            rt.rank,
            cfg.grad_accumulation,
        )
        per_epoch = self.per_epoch = len(batches) // cfg.grad_accumulation
        if per_epoch == 0:
            raise DistilkitError(
                f"the training split has too few sequences ({len(self.train_data)}) for "
                f"batch_size {cfg.batch_size} x grad_accumulation {cfg.grad_accumulation} x "
                f"{rt.world} processes"
            )
        return cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.epochs

    def log_plan(self, run_info: dict | None, resume: bool | str) -> None:
        """The block that opens the log: inputs, sizes, steps, batch, precision, output."""
        cfg, rt, info = self.cfg, self.rt, run_info or {}
        log_plan(
            log,
            info.get("stage", "training"),
            {
                "teacher": info.get("teacher"),
                "student": info.get("student_init"),
                "data": f"{self.train_data.root}: {len(self.train_data):,} train, "
                f"{len(self.val_data):,} validation sequences",
                "steps": f"{self.total_steps:,} optimizer steps"
                + (f" ({cfg.epochs} epochs)" if cfg.max_steps <= 0 else "")
                + f", {self.per_epoch:,} per epoch",
                "batch": batch_text(cfg.batch_size, cfg.grad_accumulation, rt.world),
                "precision": self.precision + (" (auto)" if cfg.precision == "auto" else ""),
                "device": f"{rt.device}, threads {torch.get_num_threads()} per process",
                "output": self.out,
                "resume": (resume if isinstance(resume, str) else "newest checkpoint")
                if resume
                else None,
            },
        )

    # -- one optimizer step ---------------------------------------------------------------

    def step(self, batches: Iterator) -> tuple[dict[str, float], float, int, bool]:
        """Run one accumulation window; apply it unless ``_guard`` refuses.

        Returns ``(loss parts summed over the window and ranks, grad norm, real tokens of this
        rank, SIGTERM seen by any rank)``. The position moves on either way: the batches are
        consumed.
        """
        cfg, rt, objective = self.cfg, self.rt, self.objective
        micro = []
        for _ in range(cfg.grad_accumulation):
            self.pos.epoch, self.pos.cursor, batch = next(batches)
            micro.append(self.prepare_batch(batch))
        # Normalisers: rows of each loss over the whole window and all ranks.
        rows = {name: 0 for name in objective.part_names}
        for b in micro:
            for name, n in objective.rows(b).items():
                rows[name] += n
        if rt.world > 1:
            t = torch.tensor(
                [rows[n] for n in objective.part_names], dtype=torch.float64, device=rt.device
            )
            dist.all_reduce(t)
            rows = {n: float(v) for n, v in zip(objective.part_names, t.tolist())}
        norms = {n: max(float(v), 1.0) for n, v in rows.items()}

        parts_sum = {n: torch.zeros((), device=rt.device) for n in objective.part_names}
        for i, b in enumerate(micro):
            torch.manual_seed(_mix(cfg.seed, self.pos.step, i, rt.rank))  # dropout, resumable
            b = to_device(b, rt.device)
            sync = (
                self.module.no_sync()
                if rt.world > 1 and i < len(micro) - 1
                else contextlib.nullcontext()
            )
            with sync:
                with autocast_for(self.precision, rt.device):
                    parts = objective.losses(self.step_module, b, norms)
                # DDP averages gradients over ranks; the normalisers already count all ranks.
                loss = sum(objective.weights[n] * parts[n] for n in parts) * rt.world
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for n, v in parts.items():
                parts_sum[n] += v.detach().float()
        self.pos.cursor += 1  # counts micro-batches consumed; checkpoints fall on window ends

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip()
        # One small reduction per step: the loss parts (logging and the finite check), whether
        # the gradient is finite, and whether any rank got SIGTERM, so every rank decides alike.
        # With fp16 an infinite gradient is the loss scaler's business (it skips the step and
        # lowers the scale), not an error.
        grad_bad = (
            (~torch.isfinite(grad_norm)).float()
            if self.scaler is None
            else torch.zeros((), device=rt.device)
        )
        stop = torch.tensor(float(self.sigterm.requested), device=rt.device)
        flags = torch.stack([grad_bad.to(rt.device), stop])
        stats = torch.cat([torch.stack([parts_sum[n] for n in objective.part_names]), flags])
        if rt.world > 1:
            dist.all_reduce(stats)
        *parts_list, grad_flag, stop_flag = stats.tolist()
        values = dict(zip(objective.part_names, parts_list))
        norm = math.inf if grad_flag > 0 else float(grad_norm)
        if self._guard(values, norm):
            self._apply()
            self.pos.tokens += sum(b["n_tokens"] for b in micro) * rt.world
        return values, norm, sum(b["n_tokens"] for b in micro), stop_flag > 0

    def _clip(self) -> torch.Tensor:
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.cfg.optim.max_grad_norm
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))

    def _apply(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1

    # -- the non-finite guard --------------------------------------------------------------

    def _guard(self, values: dict[str, float], grad_norm: float) -> bool:
        """True when the step may be applied. A NaN/inf loss part or gradient norm drops the
        window's gradients (``skip``: counted, the run goes on; ``stop``, or
        ``max_nonfinite`` in a row: the run ends with its checkpoints intact)."""
        msg = _nonfinite_message(self.pos.step + 1, values, grad_norm)
        if msg is None:
            self.consecutive_bad = 0
            return True
        self.pos.skipped += 1
        self.consecutive_bad += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()
        if self.cfg.on_nonfinite == "stop" or self.consecutive_bad >= self.cfg.max_nonfinite:
            if self.rt.main:
                log.error("%s; stopping (last good checkpoint kept)", msg)
            raise DistilkitError(f"{msg}; stopped with the last good checkpoint kept")
        if self.rt.main:
            log.warning("%s; step skipped (%d so far)", msg, self.pos.skipped)
        return False

    def _check_parameters(self, what: str) -> None:
        """Refuse to save a model with NaN/inf weights (finite losses and gradients do not rule
        it out: an update can still overflow)."""
        bad = nonfinite_parameters(self.model_to_save)
        if bad:
            raise DistilkitError(
                f"the model's weights are not finite after step {self.pos.step} ({len(bad)} "
                f"tensors, e.g. {bad[0]}); {what} was not written; the last good checkpoint is "
                "kept"
            )

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self) -> Path:
        path = self.ckpt_root / f"step-{self.pos.step:08d}"
        if self.rt.main:
            self._check_parameters(f"checkpoint {path.name}")
            p = self.pos
            state = {
                "step": p.step,
                "epoch": p.epoch,
                "cursor": p.cursor,
                "tokens": p.tokens,
                "nonfinite_skipped": p.skipped,
                "seconds": self._seconds(),
                "world_size": self.rt.world,
                "total_steps": self.total_steps,
                "history": p.history[-200:],
                "settings": self.settings,
                "changes": p.changes,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
            }
            path = save_checkpoint(
                self.ckpt_root, p.step, self.model_to_save, state, self.cfg.keep_checkpoints
            )
            log.info("checkpoint %s", path)
        self.saved_step = self.pos.step
        _barrier(self.rt)
        return path

    def resume(self, explicit: str | None) -> None:
        """Load the checkpoint (``explicit``, or the newest valid one) after checking that it
        belongs to this run: same process count, same weights layout, same settings (but for
        the changes ``train.allow_changes`` names, which are recorded)."""
        rt, out = self.rt, self.out
        path = find_checkpoint(out, explicit)
        state = json.loads((path / "trainer_state.json").read_text())
        if state["world_size"] != rt.world:
            raise DistilkitError(
                f"checkpoint {path} was written by {state['world_size']} processes; resume with "
                f"the same number (got {rt.world})"
            )
        changed = compare_settings(
            path, state.get("settings"), self.settings, self.cfg.allow_changes
        )
        if state["step"] > self.total_steps:
            raise DistilkitError(
                f"checkpoint {path} is at step {state['step']}, past this run's "
                f"{self.total_steps} steps"
            )
        self._load_weights(path)
        self.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=rt.device, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        # The schedule continues from the saved step with this run's lr and length (equal to
        # the checkpoint's unless train.allow_changes let them change).
        lr = self.cfg.optim.lr
        self.scheduler.base_lrs = [lr for _ in self.optimizer.param_groups]
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = lr
            group["lr"] = lr * factor(self.scheduler.last_epoch)
        if self.scaler is not None and (path / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        self.pos = Position(
            step=state["step"],
            epoch=state["epoch"],
            cursor=state["cursor"],
            tokens=state["tokens"],
            skipped=state["nonfinite_skipped"],
            seconds=float(state.get("seconds", 0.0)),
            history=state.get("history", []),
            changes=list(state.get("changes", [])),
        )
        if changed:
            self.pos.changes.append(
                {"step": self.pos.step, "checkpoint": str(path), "changed": changed}
            )
        self.resumed_from = path
        self.saved_step = self.pos.step
        if rt.main:
            if explicit:
                start_branch(self.ckpt_root, path)
            _truncate_metrics(out / "metrics.jsonl", self.pos.step)
            log.info(
                "resumed from %s at step %d (epoch %d, micro-batch %d)",
                path,
                self.pos.step,
                self.pos.epoch,
                self.pos.cursor,
            )

    def _load_weights(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        model = self.model_to_save
        try:
            saved = load_file(path / "model.safetensors", device=str(self.rt.device))
            missing, unexpected = model.load_state_dict(saved, strict=False)
        except (SafetensorError, RuntimeError) as exc:
            # A size mismatch: a checkpoint of another architecture (width, vocabulary, ...).
            detail = " ".join(str(exc).split())[:300]
            raise DistilkitError(
                f"checkpoint {path} does not fit this model ({detail}); was it written by a "
                "different run?"
            ) from exc
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        # save_pretrained stores tied tensors once; anything else missing is a real mismatch.
        real_missing = [
            k
            for k in missing
            if k not in tied
            and not k.endswith("decoder.weight")
            and not k.endswith("vocab_projector.weight")
        ]
        if real_missing or unexpected:
            raise DistilkitError(
                f"checkpoint {path} does not fit this model (missing {real_missing[:3]}, "
                f"unexpected {unexpected[:3]}); was it written by a different run?"
            )
        model.tie_weights()
        bad = nonfinite_parameters(model)
        if bad:
            raise DistilkitError(
                f"checkpoint {path} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                "resume from an earlier one with --resume-from"
            )

    # -- the run ----------------------------------------------------------------------------

    def train(self, run_info: dict | None) -> LoopResult:
        """Steps until ``total_steps`` (or a halt, a stop, SIGTERM), then the final evaluation."""
        cfg, rt, out = self.cfg, self.rt, self.out
        self.writer = self.metrics_file = None
        if rt.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
            self.metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in _close)
            if run_info is not None:
                _write_run_marker(out, run_info, self.pos.changes)
        self.val_batches = [
            self.prepare_batch(b)
            for b in _validation_batches(self.val_data, cfg.eval_batches, self.specials)
        ]
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.pos.step,
            desc="train",
            disable=not rt.main,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        self.segment_start = time.time()
        self.consecutive_bad = 0
        self.window = (0, time.time())  # (tokens, start) since the last train record
        batches = _micro_batches(
            self.train_data, self.weights, self.masking, cfg, rt, self.pos.epoch, self.pos.cursor
        )
        self.module.train()
        try:
            with _SigtermFlag() as self.sigterm:
                while self.pos.step < self.total_steps:
                    before = self.pos.step
                    values, grad_norm, step_tokens, stop = self.step(batches)
                    if self.pos.step > before:
                        self._record(values, grad_norm, step_tokens)
                    if self._after_step(applied=self.pos.step > before, stop=stop):
                        return self._result({}, halted=True)
            self.bar.close()
            seconds = self._seconds()
            final = _evaluate(
                self.objective, self.module, self.val_batches, rt, self.pos.step, self._log
            )
            if cfg.checkpoint_every and self.pos.step % cfg.checkpoint_every != 0:
                self.checkpoint()
            return self._result(final, seconds=seconds)
        finally:
            self.bar.close()
            batches.close()  # stops DataLoader workers now, also on an error or SIGTERM
            self._close()

    def _record(self, values: dict[str, float], grad_norm: float, step_tokens: int) -> None:
        """Progress bar, and every ``log_every`` steps a train record (metrics.jsonl, TB)."""
        cfg, step = self.cfg, self.pos.step
        tokens, start = self.window
        tokens += step_tokens
        self.window = (tokens, start)
        self.bar.update(1)
        if step % cfg.log_every and step != self.total_steps:
            return
        record = {
            "kind": "train",
            "step": step,
            "epoch": self.pos.epoch,
            "loss": sum(self.objective.weights[n] * values[n] for n in values),
            **{f"loss_{n}": v for n, v in values.items()},
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens_per_s": tokens * self.rt.world / max(time.time() - start, 1e-9),
        }
        self.pos.history.append({k: record[k] for k in ("step", "loss")})
        del self.pos.history[:-200]  # flat memory over long runs; metrics.jsonl has it all
        self._log(record)
        self.bar.set_postfix(
            {n: f"{v:.3f}" for n, v in values.items()} | {"tok/s": f"{record['tokens_per_s']:.0f}"}
        )
        self.window = (0, time.time())

    def _after_step(self, applied: bool, stop: bool) -> bool:
        """Evaluation, checkpoint, halt and SIGTERM at a step boundary; True when halted."""
        cfg, step, last = self.cfg, self.pos.step, self.total_steps
        saved = False
        if applied:
            if cfg.eval_every and step % cfg.eval_every == 0 and step < last:
                _evaluate(self.objective, self.module, self.val_batches, self.rt, step, self._log)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                self.checkpoint()
                saved = True
        if stop and step < last:
            self._preempted()
        if applied and cfg.halt_at_step and step == cfg.halt_at_step and step < last:
            path = self.ckpt_root / f"step-{step:08d}" if saved else self.checkpoint()
            self.bar.close()
            if self.rt.main:
                log.info("halted at step %d as asked (%s); continue with --resume", step, path)
            return True
        return False

    def _preempted(self) -> None:
        step = self.pos.step
        path = self.ckpt_root / f"step-{step:08d}"
        if step > 0 and self.saved_step != step:
            path = self.checkpoint()
        self.bar.close()
        where = f"checkpoint {path}" if step > 0 else "no checkpoint (no step was done)"
        raise Preempted(
            f"stopped by SIGTERM after step {step} with {where}; the same command with "
            f"--resume continues it (exit status {Preempted.exit_code}: resumable)"
        )

    def _seconds(self) -> float:
        """Training time of the run so far: earlier segments plus this one."""
        return self.pos.seconds + (time.time() - self.segment_start)

    def _result(self, final: dict, halted: bool = False, seconds: float | None = None):
        p = self.pos
        seconds = self._seconds() if seconds is None else seconds
        return LoopResult(
            p.step, p.tokens, seconds, final, p.skipped, p.history, halted, list(p.changes)
        )

    def _log(self, record: dict) -> None:
        if not self.rt.main:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                self.writer.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.metrics_file.close()
            self.writer = self.metrics_file = None


def _write_run_marker(out: Path, run_info: dict, changes: list[dict]) -> None:
    """``distilkit_run.json``: what this run is, with the changes made on purpose at resumes."""
    info = dict(run_info)
    if changes:
        info["changes"] = changes
    (out / RUN_MARKER).write_text(json.dumps(info, indent=2, default=str) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step``: a killed run logged steps its checkpoint does not hold,
    and may have left a torn last line."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            keep.append(line + "\n")
    path.write_text("".join(keep), encoding="utf-8")


def _micro_batches(
    train: TokenDataset, weights, masking, cfg: TrainConfig, rt: Runtime, epoch: int, cursor: int
) -> Iterator[tuple[int, int, dict]]:
    """Endless ``(epoch, cursor_before, batch)``; starts at ``(epoch, cursor)`` for resume."""
    while True:
        batches = global_batches(
            train.lengths,
            cfg.batch_size * rt.world,
            cfg.seed,
            epoch,
            cfg.group_by_length,
            cfg.grad_accumulation,
        )
        if cursor >= len(batches):
            epoch, cursor = epoch + 1, 0
            continue
        # Every rank masks the whole global batch with one seed (0: the single-process seed)
        # and keeps its rows, so N processes x batch b train on what 1 process x N*b would.
        rows = slice(rt.rank * cfg.batch_size, (rt.rank + 1) * cfg.batch_size)
        rows = rows if rt.world > 1 else None
        ds = MaskedBatches(train, batches, weights, masking, (cfg.seed, epoch, 0), cursor, rows)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            shuffle=False,
            num_workers=cfg.num_workers,
            pin_memory=rt.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=_ignore_sigterm if cfg.num_workers > 0 else None,
        )
        it = iter(loader)
        try:
            for batch in it:
                yield epoch, cursor, batch
                cursor += 1
        finally:
            # Closing this generator (end of run, error, SIGTERM) ends the workers now rather
            # than whenever the iterator is collected; they must not outlive the run.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        epoch, cursor = epoch + 1, 0


VAL_BATCH_SIZE = 16
VAL_SEED = 1234


def _validation_batches(val: TokenDataset, n_batches: int, specials: dict[str, int]) -> list:
    """Fixed validation micro-batches: the same sequences and masks at every evaluation and in
    every run on this dataset, whatever the training seed, batch size or masking options.

    Masks are uniform (15% of the real tokens, 80/10/10), not frequency-smoothed: smoothed masks
    favour rare tokens and read as a far lower accuracy (4.7% vs 20.7% for the same teacher), and
    depended on the run's settings, so two runs could not be compared.
    """
    if len(val) == 0:
        return []
    # Longest first, every sequence once (the last batch may be smaller): little padding, and
    # an order that depends on the data alone.
    order = np.argsort(-val.lengths, kind="stable")
    batches = [order[i : i + VAL_BATCH_SIZE] for i in range(0, len(order), VAL_BATCH_SIZE)]
    if n_batches:
        batches = batches[:n_batches]
    counts = np.ones(val.vocab_size, dtype=np.int64)
    uniform = token_weights(counts, list(specials.values()), 0.0)
    ds = MaskedBatches(val, batches, uniform, MaskingConfig(smoothing=0.0), (VAL_SEED, -1, 0))
    return [ds[i] for i in range(len(ds))]


def _evaluate(objective, module, val_batches, rt: Runtime, step: int, log_record) -> dict:
    if not val_batches:
        return {}
    result: dict[str, float] = {}
    if rt.main:
        module.eval()
        with torch.no_grad():
            result = objective.evaluate([to_device(b, rt.device) for b in val_batches])
        module.train()
        log_record({"kind": "eval", "step": step, **result})
        log.info(
            "validation at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in result.items())
        )
    _barrier(rt)
    return result


def plot_curves(out: Path) -> Path | None:
    """``loss_curve.png`` from ``metrics.jsonl``: training loss parts and validation metrics."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    # One panel per quantity: loss parts and validation metrics differ in scale by orders of
    # magnitude, and a shared axis flattens all but the largest.
    panels = [("train", k) for k in sorted({k for r in train for k in r if k.startswith("loss")})]
    panels += [
        ("eval", k) for k in sorted({k for r in evals for k in r if k not in ("kind", "step")})
    ]
    if not panels:
        return None
    cols = min(3, len(panels))
    n_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.2 * n_rows), squeeze=False)
    for ax, (kind, key) in zip(axes.flat, panels):
        src = train if kind == "train" else evals
        pts = [(r["step"], r[key]) for r in src if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-" if kind == "train" else "o-")
        ax.set_title(f"{'training' if kind == 'train' else 'validation'}: {key}", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    png = out / "loss_curve.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def save_final(model: nn.Module, tokenizer, out: Path, card: str, write=None) -> None:
    """Write the trained model, its tokenizer and a model card into ``out``.

    Files are written into a temporary folder first and moved in at the end, so a crash never
    leaves a ``config.json`` next to missing or partial weights. ``write(folder)``, when given,
    writes the model files instead of ``save_pretrained`` (another layout).
    """
    bad = nonfinite_parameters(model)
    if bad:
        raise DistilkitError(
            f"the trained model's weights are not finite ({len(bad)} tensors, e.g. {bad[0]}); "
            f"no model was written to {out}"
        )
    tmp = out / ".final-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if write is not None:
            tmp.mkdir()
            write(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(exc, f"the final model in {out}", out)
        if failure is not None:
            raise failure from exc
        raise
    # Weights first, config.json last: the folder only looks like a model once it is one.
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
    fsync_dir(out)
