"""Checkpoints of the training loop: atomic and durable writes, verification, the choice of what
to resume, and the check that a resumed run is the run that wrote the checkpoint.

Layout of ``<out>/checkpoints/step-NNNNNNNN/``: ``model.safetensors`` + ``config.json``,
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (fp16), ``rng.pt``, ``trainer_state.json``
(position, counters, the settings of the run) and ``checksums.json`` (SHA-256 of the others).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from distilkit.errors import DistilkitError
from distilkit.runfolder import fsync_dir, fsync_tree

log = logging.getLogger(__name__)

ABANDONED = "abandoned"
"""Sub-folder of ``checkpoints/`` holding the checkpoints of trajectories left by --resume-from."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or inf (empty when the model is usable)."""
    bad = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def save_checkpoint(ckpt_root: Path, step: int, model: nn.Module, state: dict, keep: int) -> Path:
    """Write ``step-NNNNNNNN`` atomically and durably: a temporary folder, checksums, fsync of
    every file and of the folder, one rename, fsync of ``ckpt_root``. Then keep the newest
    ``keep`` checkpoints; the one just written is always kept."""
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
        # Without the fsyncs a power loss after the rename can leave a published checkpoint
        # whose files are empty or partial (the rename reached the disk, the data did not).
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(ckpt_root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(exc, f"checkpoint {final}", ckpt_root)
        if failure is not None:
            raise failure from exc
        raise
    older = sorted((p for p in ckpt_root.glob("step-*") if p != final), key=step_of)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_failure(exc: BaseException, what: str, where: Path) -> DistilkitError | None:
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
    candidates = sorted((out / "checkpoints").glob("step-*"), key=step_of, reverse=True)
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is unusable (%s); trying an older one", path.name, problem)
    raise DistilkitError(f"--resume was given but {out}/checkpoints holds no usable checkpoint")


def start_branch(ckpt_root: Path, origin: Path) -> Path | None:
    """Resuming from ``origin`` (--resume-from) starts a new trajectory: move the checkpoints of
    ``ckpt_root`` that do not lie on it out of the way, into ``abandoned/``, where nothing
    resumes from or counts them. Those are the ones after ``origin``, or all of them when
    ``origin`` belongs to another folder. Returns where they went (None: nothing moved)."""
    origin = origin.resolve()
    inside = origin.parent == ckpt_root.resolve()
    later = [
        p
        for p in ckpt_root.glob("step-*")
        if p.resolve() != origin and (not inside or step_of(p) > step_of(origin))
    ]
    if not later:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = ckpt_root / ABANDONED / f"before-{origin.name}-{stamp}"
    dest.mkdir(parents=True)
    for p in sorted(later, key=step_of):
        p.rename(dest / p.name)
    fsync_dir(ckpt_root)
    log.warning(
        "--resume-from %s starts a new branch: %d checkpoint(s) of the abandoned trajectory (%s) "
        "moved to %s",
        origin.name,
        len(later),
        ", ".join(p.name for p in sorted(later, key=step_of)),
        dest,
    )
    return dest


# ---------------------------------------------------------------------------------------------
# What a resumed run may change

FREE = {
    # Settings that do not change the trajectory: logging, evaluation, checkpointing, speed.
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_workers",
    "train.threads",
    "train.compile",
    "train.on_nonfinite",
    "train.max_nonfinite",
    "train.halt_at_step",
    "train.allow_changes",
}


def allowable(key: str) -> bool:
    """Changes a user may allow on resume (``train.allow_changes``): loss weights, learning
    rates and the run's length. Everything else would make the saved position meaningless
    (batch, accumulation, seed, data) or the run a different one (teacher, student, losses)."""
    last = key.rsplit(".", 1)[-1]
    return (key.startswith("loss.") and last.startswith("alpha_")) or key in (
        "train.optim.lr",
        "train.max_steps",
        "train.epochs",
    )


def flatten(prefix: str, value) -> dict:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``, with JSON-normal values (lists, not tuples)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out |= flatten(f"{prefix}.{k}" if prefix else k, v)
        return out
    return {prefix: json.loads(json.dumps(value, default=str))}


def _show(value) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value)


_UNSET = object()


def compare_settings(path: Path, saved: dict | None, now: dict, allowed: list[str]) -> dict:
    """The differences ``{key: [checkpoint's, now]}`` between the settings a checkpoint was
    written with and this run's, when every one is allowed; else one error listing them."""
    if saved is None:
        log.warning(
            "checkpoint %s records no settings (written by an older distilkit): cannot check "
            "that this run continues it with the same ones",
            path,
        )
        return {}
    keys = sorted((saved.keys() | now.keys()) - FREE)
    diff = {
        k: (saved.get(k, _UNSET), now.get(k, _UNSET))
        for k in keys
        if saved.get(k, _UNSET) != now.get(k, _UNSET)
    }
    unknown = [k for k in allowed if not allowable(k)]
    if unknown:
        raise DistilkitError(
            f"train.allow_changes names {', '.join(unknown)}, which cannot change on resume "
            "(allowed: loss weights loss.alpha_*, train.optim.lr, train.max_steps, train.epochs)"
        )
    refused = {k: v for k, v in diff.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        fixable = [k for k in refused if allowable(k)]
        hint = (
            f"; to change them on purpose add train.allow_changes=[{','.join(fixable)}]"
            if len(fixable) == len(refused)
            else "; resume with the checkpoint's settings, or start a new run in another --out"
        )
        raise DistilkitError(f"cannot resume from {path}: the settings differ: {listed}{hint}")
    for k, (a, b) in diff.items():
        log.warning("resuming with %s changed on purpose: %s -> %s", k, _show(a), _show(b))
    return {
        k: [None if a is _UNSET else a, None if b is _UNSET else b] for k, (a, b) in diff.items()
    }


def finite_number(name: str, value, low: float | None = None, high: float | None = None) -> None:
    """``value`` must be a finite number in ``[low, high]``; one line naming ``name`` else."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None and value < low:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        bounds = (
            f" in [{low}, {high}]"
            if low is not None and high is not None
            else f" >= {low}"
            if low is not None
            else ""
        )
        raise DistilkitError(f"{name} must be a finite number{bounds}, got {value!r}")


def weights_problem(folder: str | Path) -> str | None:
    """What is wrong with the weight files of a model folder, or None. Cheap (headers and
    sizes only), so every stage can call it before loading: a truncated download or copy must
    fail with one line naming the file, not with a loader's traceback."""
    folder = Path(folder)
    files = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError):
                return f"{index} is corrupt"
            files += [folder / s for s in sorted(shards)]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            files.append(folder / name)
    for f in files:
        problem = _file_problem(f)
        if problem:
            return f"{f.name} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if path.suffix == ".bin":
        import zipfile

        # torch.save writes a zip archive: a truncated one has lost its central directory.
        return None if zipfile.is_zipfile(path) else "is truncated or not a torch file"
    # safetensors: 8-byte little-endian header length, a JSON header, then the tensor data;
    # the header's largest data offset must be the end of the file.
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"is truncated ({size:,} bytes; its header alone needs {n + 8:,})"
        try:
            header = json.loads(f.read(n))
            end = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return "is corrupt (unreadable header)"
    if size < 8 + n + end:
        return f"is truncated ({size:,} bytes; its header says {8 + n + end:,})"
    return None
