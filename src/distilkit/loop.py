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
import errno
import hashlib
import json
import logging
import math
import os
import random
import shutil
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

from distilkit.data import TokenDataset
from distilkit.errors import DistilkitError
from distilkit.masking import MaskingConfig, mask_batch, token_weights

log = logging.getLogger(__name__)

RUN_MARKER = "distilkit_run.json"


@dataclass
class OptimConfig:
    """AdamW and schedule (defaults: the reference implementation's)."""

    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.0
    """Not applied to biases and LayerNorm weights."""
    warmup_ratio: float = 0.05
    """Linear warm-up over this share of the optimizer steps, then linear decay to 0."""
    max_grad_norm: float = 5.0
    """Gradient clipping (0: off)."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise DistilkitError("optim.lr must be > 0")
        if len(self.betas) != 2:
            raise DistilkitError("optim.betas must hold two numbers")
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """bf16 autocast (CPU and GPU), fp16 autocast with loss scaling (GPU only), or fp32. 'auto':
    bf16 on a GPU that supports it and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32;
    on an AVX2-only CPU bf16 is emulated and ~9x slower than fp32 (measured, docs/results)."""
    seed: int = 56
    group_by_length: bool = True
    """Batch sequences of similar length together to cut padding."""
    log_every: int = 10
    eval_every: int = 0
    """Validate every N optimizer steps (0: only at the end)."""
    eval_batches: int = 20
    """Validation batches of 16 held-out sequences per evaluation (0: the whole split); the set
    is fixed by the dataset alone, so runs with other seeds or batch sizes are comparable."""
    checkpoint_every: int = 0
    """Checkpoint every N optimizer steps (0: never)."""
    keep_checkpoints: int = 2
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

    def validate(self) -> None:
        for name in ("batch_size", "grad_accumulation", "log_every"):
            if getattr(self, name) < 1:
                raise DistilkitError(f"train.{name} must be >= 1")
        if self.max_steps < 0 or self.epochs < 0 or (self.max_steps == 0 and self.epochs == 0):
            raise DistilkitError("set train.max_steps > 0 or train.epochs > 0")
        if self.keep_checkpoints < 1:
            raise DistilkitError("train.keep_checkpoints must be >= 1")


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
# Output folder and checkpoints


def prepare_out_dir(out: Path, resume: bool, overwrite: bool, rt: Runtime) -> None:
    """Refuse to mix runs: an existing run needs --resume or --overwrite."""
    if rt.main:
        if out.exists() and not out.is_dir():
            raise DistilkitError(f"output path {out} is a file")
        busy = out.exists() and any(out.iterdir())
        if busy and not resume:
            if not overwrite:
                raise DistilkitError(
                    f"output folder {out} already holds files (use --resume to continue a run, "
                    "or --overwrite to replace it)"
                )
            ours = (
                out / RUN_MARKER,
                out / "checkpoints",
                out / "student-init" / "distilkit_student.json",
            )
            if not any(p.exists() for p in ours):
                raise DistilkitError(
                    f"output folder {out} holds files that are not a distilkit run; "
                    "refusing to delete them even with --overwrite"
                )
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    _barrier(rt)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(ckpt_root: Path, step: int, model: nn.Module, state: dict, keep: int) -> Path:
    """Write ``step-NNNNNNNN`` atomically: a temporary folder, checksums, then one rename."""
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(state.pop("optimizer"), tmp / "optimizer.pt")
        torch.save(state.pop("scheduler"), tmp / "scheduler.pt")
        scaler = state.pop("scaler", None)
        if scaler is not None:
            torch.save(scaler, tmp / "scaler.pt")
        torch.save(state.pop("rng"), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        sums = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = _write_failure(exc, f"checkpoint {final}", ckpt_root)
        if failure is not None:
            raise failure from exc
        raise
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_failure(exc: BaseException, what: str, where: Path) -> DistilkitError | None:
    """One clear line for a failed write (disk full, quota, I/O error); None for other errors.

    Disk full shows up as OSError(ENOSPC) from Python writes, as a SafetensorError "(os error
    28)" from safetensors and as a RuntimeError "unexpected pos" from torch.save's zip writer.
    """
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        m in text for m in ("No space left", "os error 28", "Disk quota")
    )
    if not (full or isinstance(exc, OSError) or "I/O error" in text or "unexpected pos" in text):
        return None
    try:
        free = f"; {shutil.disk_usage(where).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = ""
    cause = "no space left on device (disk full)" if full else f"write failed ({text})"
    return DistilkitError(f"cannot write {what}: {cause}{free}; nothing partial was kept")


def verify_checkpoint(path: Path) -> str | None:
    """``None`` when every file matches its checksum, else what is wrong."""
    sums_file = path / "checksums.json"
    if not sums_file.is_file():
        return "no checksums.json (torn write?)"
    try:
        sums = json.loads(sums_file.read_text())
    except json.JSONDecodeError:
        return "checksums.json is corrupt"
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum"
    return None


def find_checkpoint(out: Path, explicit: str | None) -> Path:
    """The checkpoint to resume from: ``explicit``, or the newest valid one under ``out``.

    Falls back to an older checkpoint (with a warning) when the newest is torn or corrupt, and
    never returns nothing: asking to resume with no usable checkpoint is an error.
    """
    if explicit:
        path = Path(explicit)
        problem = verify_checkpoint(path) if path.is_dir() else "not a folder"
        if problem:
            raise DistilkitError(f"cannot resume from {path}: {problem}")
        return path
    candidates = sorted((out / "checkpoints").glob("step-*"), reverse=True)
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is unusable (%s); trying an older one", path.name, problem)
    raise DistilkitError(f"--resume was given but {out}/checkpoints holds no usable checkpoint")


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class LoopResult:
    steps: int
    tokens: int
    seconds: float
    final_eval: dict[str, float]
    nonfinite_skipped: int
    history: list[dict]
    halted: bool = False


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
) -> LoopResult:
    """Train ``objective.train_module()`` and return what happened.

    ``model_to_save`` is the (unwrapped) Hugging Face model whose weights the checkpoints hold.
    """
    train = TokenDataset(data_dir, "train")
    val = TokenDataset(data_dir, "validation")
    specials = train.special_ids
    weights = token_weights(train.token_counts(), list(specials.values()), masking.smoothing)

    # Steps and epochs.
    per_epoch = (
        len(
            epoch_batches(
                train.lengths,
                cfg.batch_size,
                cfg.seed,
                0,
                cfg.group_by_length,
                rt.world,
                rt.rank,
                cfg.grad_accumulation,
            )
        )
        // cfg.grad_accumulation
    )
    if per_epoch == 0:
        raise DistilkitError(
            f"the training split has too few sequences ({len(train)}) for batch_size "
            f"{cfg.batch_size} x grad_accumulation {cfg.grad_accumulation} x {rt.world} processes"
        )
    total_steps = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.epochs

    module = objective.train_module()
    if rt.world > 1:
        ddp_kwargs = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
        ddp_kwargs["find_unused_parameters"] = getattr(objective, "find_unused", False)
        module = nn.parallel.DistributedDataParallel(module, **ddp_kwargs)
    step_module = torch.compile(module) if cfg.compile else module
    optimizer = build_optimizer(module, cfg.optim, rt.device)
    scheduler = build_scheduler(optimizer, total_steps, cfg.optim.warmup_ratio)
    precision = resolve_precision(cfg.precision, rt.device)
    if rt.main:
        log.info(
            "precision %s on %s, %d process(es), %d optimizer steps",
            precision,
            rt.device,
            rt.world,
            total_steps,
        )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    step, epoch, cursor, tokens, skipped, history = 0, 0, 0, 0, 0, []
    ckpt_root = out / "checkpoints"
    if resume:
        path = find_checkpoint(out, resume if isinstance(resume, str) else None)
        state = json.loads((path / "trainer_state.json").read_text())
        if state["world_size"] != rt.world:
            raise DistilkitError(
                f"checkpoint {path} was written by {state['world_size']} processes; resume with "
                f"the same number (got {rt.world})"
            )
        from safetensors.torch import load_file

        weights_file = path / "model.safetensors"
        missing, unexpected = model_to_save.load_state_dict(
            load_file(weights_file, device=str(rt.device)), strict=False
        )
        tied = set(getattr(model_to_save, "_tied_weights_keys", None) or [])
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
        model_to_save.tie_weights()
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=rt.device, weights_only=True)
        )
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if scaler is not None and (path / "scaler.pt").is_file():
            scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        step, epoch, cursor = state["step"], state["epoch"], state["cursor"]
        tokens, skipped = state["tokens"], state["nonfinite_skipped"]
        history = state.get("history", [])
        if rt.main:
            _truncate_metrics(out / "metrics.jsonl", step)
            log.info(
                "resumed from %s at step %d (epoch %d, micro-batch %d)", path, step, epoch, cursor
            )

    writer = None
    metrics_file = None
    if rt.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
        metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed at the end of run)
        if run_info is not None:
            (out / RUN_MARKER).write_text(json.dumps(run_info, indent=2, default=str) + "\n")

    val_batches = _validation_batches(val, cfg.eval_batches, specials)
    # An objective may turn token batches into its own inputs (sentence spans, ...).
    prepare_batch = getattr(objective, "prepare_batch", None) or (lambda b: b)
    val_batches = [prepare_batch(b) for b in val_batches]

    def log_record(record: dict) -> None:
        if not rt.main:
            return
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                writer.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def checkpoint() -> None:
        if rt.main:
            state = {
                "step": step,
                "epoch": epoch,
                "cursor": cursor,
                "tokens": tokens,
                "nonfinite_skipped": skipped,
                "world_size": rt.world,
                "total_steps": total_steps,
                "history": history[-200:],
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
            }
            path = save_checkpoint(ckpt_root, step, model_to_save, state, cfg.keep_checkpoints)
            log.info("checkpoint %s", path)
        _barrier(rt)

    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        disable=not rt.main,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    start = time.time()
    window_tokens = 0
    window_start = time.time()
    consecutive_bad = 0
    batches_iter = _micro_batches(train, weights, masking, cfg, rt, epoch, cursor)
    module.train()
    while step < total_steps:
        micro = []
        for _ in range(cfg.grad_accumulation):
            epoch, cursor, batch = next(batches_iter)
            micro.append(prepare_batch(batch))
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
        step_tokens = sum(b["n_tokens"] for b in micro)
        for i, b in enumerate(micro):
            torch.manual_seed(_mix(cfg.seed, step, i, rt.rank))  # dropout, resumable
            b = to_device(b, rt.device)
            sync = (
                module.no_sync()
                if rt.world > 1 and i < len(micro) - 1
                else contextlib.nullcontext()
            )
            with sync:
                with autocast_for(precision, rt.device):
                    parts = objective.losses(step_module, b, norms)
                # DDP averages gradients over ranks; the normalisers already count all ranks.
                loss = sum(objective.weights[n] * parts[n] for n in parts) * rt.world
                (scaler.scale(loss) if scaler is not None else loss).backward()
            for n, v in parts.items():
                parts_sum[n] += v.detach().float()
        cursor += 1  # cursor counts micro-batches consumed; checkpoints fall on window ends

        if scaler is not None:
            scaler.unscale_(optimizer)
        max_norm = cfg.optim.max_grad_norm
        params = [p for p in module.parameters() if p.grad is not None]
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            if max_norm > 0
            else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        )
        # One small reduction per step: loss parts for logging and the finite check.
        stats = torch.stack([parts_sum[n] for n in objective.part_names])
        if rt.world > 1:
            dist.all_reduce(stats)
        values = dict(zip(objective.part_names, stats.tolist()))
        bad = [n for n, v in values.items() if not math.isfinite(v)]
        if bad:
            skipped += 1
            consecutive_bad += 1
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            msg = f"non-finite loss at step {step + 1}: {', '.join(bad)} = " + ", ".join(
                str(values[n]) for n in bad
            )
            if cfg.on_nonfinite == "stop" or consecutive_bad >= cfg.max_nonfinite:
                bar.close()
                if rt.main:
                    log.error("%s; stopping (last good checkpoint kept)", msg)
                raise DistilkitError(f"{msg}; stopped with the last good checkpoint kept")
            if rt.main:
                log.warning("%s; step skipped (%d so far)", msg, skipped)
            continue
        consecutive_bad = 0
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += step_tokens * rt.world
        window_tokens += step_tokens
        bar.update(1)

        if step % cfg.log_every == 0 or step == total_steps:
            elapsed = time.time() - window_start
            record = {
                "kind": "train",
                "step": step,
                "epoch": epoch,
                "loss": sum(objective.weights[n] * values[n] for n in values),
                **{f"loss_{n}": v for n, v in values.items()},
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens * rt.world / max(elapsed, 1e-9),
            }
            history.append({k: record[k] for k in ("step", "loss")})
            del history[:-200]  # flat memory over long runs; metrics.jsonl has every record
            log_record(record)
            bar.set_postfix(
                {n: f"{v:.3f}" for n, v in values.items()}
                | {"tok/s": f"{record['tokens_per_s']:.0f}"}
            )
            window_tokens, window_start = 0, time.time()
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            _evaluate(objective, module, val_batches, rt, step, log_record)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            checkpoint()
        if cfg.halt_at_step and step == cfg.halt_at_step and step < total_steps:
            if not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
            bar.close()
            if writer is not None:
                writer.close()
                metrics_file.close()
            if rt.main:
                log.info("halted at step %d as asked; continue with --resume", step)
            return LoopResult(step, tokens, time.time() - start, {}, skipped, history, True)
    bar.close()
    seconds = time.time() - start
    final = _evaluate(objective, module, val_batches, rt, step, log_record)
    if cfg.checkpoint_every and step % cfg.checkpoint_every != 0:
        checkpoint()
    if writer is not None:
        writer.close()
        metrics_file.close()
    return LoopResult(step, tokens, seconds, final, skipped, history)


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
        )
        for batch in loader:
            yield epoch, cursor, batch
            cursor += 1
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
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = _write_failure(exc, f"the final model in {out}", out)
        if failure is not None:
            raise failure from exc
        raise
    # Weights first, config.json last: the folder only looks like a model once it is one.
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
