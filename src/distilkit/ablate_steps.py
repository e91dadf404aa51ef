"""Resumable sub-runs of ``distilkit ablate``: a record beside each output folder, and a
committed mirror of finished results so that a study spread over sessions loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distilkit.ablate_sizes import AblationSize
from distilkit.errors import DistilkitError

STEP_SUFFIX = ".step.json"


# ---------------------------------------------------------------------------------------------
# Resumable sub-runs


def _plain(obj: Any) -> Any:
    """JSON round trip, so that settings compare equal to what a record file holds."""
    return json.loads(json.dumps(obj, default=str))


def _digest(settings: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(settings), sort_keys=True).encode()).hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "<all>"]


class Pending(Exception):
    """A sub-run that is not finished, met by a study that only collects results
    (``distilkit ablate --report-only``)."""

    def __init__(self, folder: Path, progress: dict[str, Any] | None = None):
        super().__init__(f"{folder} is not finished")
        self.folder = folder
        self.progress = progress


class _Step:
    """One sub-run: its output ``folder`` and the record ``<folder>.step.json`` beside it."""

    collect_only = False
    """Set for a study that only collects finished results: ``start`` raises ``Pending``
    instead of writing a record."""
    mirror: tuple[Path, Path] | None = None
    """(study folder, mirror folder): finished records and small result files are copied
    there too (``_mirror_small``)."""

    def __init__(self, folder: Path, settings: dict[str, Any]):
        self.folder = folder
        self.record_path = folder.with_name(folder.name + STEP_SUFFIX)
        self.settings = _plain(settings)
        self.digest = _digest(self.settings)
        self.record: dict[str, Any] | None = None
        if self.record_path.is_file():
            try:
                self.record = json.loads(self.record_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:  # a torn write: the run is not known to be finished
                self.record = None

    @property
    def done(self) -> bool:
        r = self.record
        if not r or not r.get("finished") or not self.folder.exists():
            return False
        if r.get("settings") != self.settings:
            keys = ", ".join(_diff(r.get("settings"), self.settings)[:6])
            raise DistilkitError(
                f"{self.folder} was finished with other settings (differing: {keys}); delete it "
                "(and its .step.json) to redo it, or give another --out"
            )
        return True

    @property
    def same_settings(self) -> bool:
        return bool(self.record) and self.record.get("settings") == self.settings

    def start(self) -> float:
        if self.collect_only:
            raise Pending(self.folder)
        self._write({"settings": self.settings, "finished": False, "started": _now()})
        return time.time()

    def finish(self, started: float, summary: dict[str, Any] | None = None) -> None:
        self._write(
            {
                "settings": self.settings,
                "finished": True,
                "finished_at": _now(),
                "seconds": round(time.time() - started, 2),
                "summary": summary or {},
                "machine": _machine(),
            }
        )
        if self.mirror:
            _mirror_small(self, *self.mirror)

    def _write(self, record: dict[str, Any]) -> None:
        self.record = _plain(record)
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_name(self.record_path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.record_path)

    @property
    def seconds(self) -> float:
        return float((self.record or {}).get("seconds", 0.0))


# Files of a finished sub-run small enough for git: results and logs, never weights.
_SMALL = ("metrics.json", "results.json", "metrics.jsonl", "distilkit_run.json", "bench.json")


def mirror_folder(size: AblationSize) -> Path | None:
    """``<report stem>/subruns`` beside the size's report: the committed copy of every finished
    sub-run's record and small result files, so that a study spread over several machines or
    sessions loses nothing finished (``_restore_evaluations`` brings them back)."""
    return Path(size.report).with_suffix("") / "subruns" if size.report else None


def _mirror_small(st: _Step, out: Path, mirror: Path) -> None:
    rel = st.folder.relative_to(out)
    dest = mirror / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(st.record_path, mirror / rel.with_name(st.record_path.name))
    for name in _SMALL:
        if (st.folder / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(st.folder / name, dest / name)


def _restore_evaluations(out: Path, mirror: Path | None) -> int:
    """Copy finished fine-tuning and zero-shot sub-runs from the mirror into ``out`` where
    ``out`` lacks them; returns how many. They hold no weights, and their settings name the
    model by its sub-run's settings digest, so they are reused exactly when the model they
    scored would be rebuilt with the same settings (distillation is seeded)."""
    if not mirror or not (mirror / "eval").is_dir():
        return 0
    restored = 0
    for record in (mirror / "eval").rglob("*" + STEP_SUFFIX):
        rel = record.relative_to(mirror)
        target = out / rel
        folder_rel = rel.with_name(rel.name[: -len(STEP_SUFFIX)])
        if target.exists() or not (mirror / folder_rel / "metrics.json").is_file():
            continue
        shutil.copytree(mirror / folder_rel, out / folder_rel, dirs_exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record, target)
        restored += 1
    return restored


def _machine() -> dict[str, Any]:
    """The CPU a sub-run ran on: a study spread over sessions may change machines, and bf16
    results differ (by rounding) between CPUs."""
    import socket

    from distilkit.bench import cpu_features, cpu_name

    return {"cpu": cpu_name(), "features": cpu_features(), "host": socket.gethostname()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _has_checkpoint(folder: Path) -> bool:
    from distilkit.loop import verify_checkpoint

    return any(verify_checkpoint(p) is None for p in (folder / "checkpoints").glob("step-*"))
