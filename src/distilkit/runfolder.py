"""Output folders: who made them, who is writing them, and what ``--overwrite`` may delete.

Every stage that writes a folder claims it first (``claim_folder``):

- **One process per folder.** An exclusive ``flock`` on ``<out>/.distilkit.lock`` is held for the
  whole stage; the file says which process holds it and since when, so a second process stops
  with one line naming it. The kernel drops the lock when its process dies, so a lock left by a
  killed run never blocks; the next run says it takes it over.
- **Deletion only of distilkit's own output.** ``--overwrite`` empties a folder only when a
  marker proves that distilkit wrote it, and only when it holds none of the command's inputs
  (source, teacher, student, data, model). Anything else stops with one line that suggests no
  command that would delete an input.
- **Durable publication.** Files are fsynced, and their folder too, before the rename that
  makes them visible (``fsync_tree``, ``Claim.publish``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from distilkit.errors import DistilkitError

log = logging.getLogger(__name__)

LOCK_FILE = ".distilkit.lock"
FOLDER_MARKER = ".distilkit-folder.json"
"""Written into every folder a stage claims: the proof that distilkit made it."""

# Files that proved a folder was distilkit's before FOLDER_MARKER existed (runs, students and
# datasets of earlier versions, such as an ablation study's sub-runs).
_LEGACY_MARKERS = ("distilkit_run.json", "distilkit_student.json")
_OWN_FILES = {LOCK_FILE, FOLDER_MARKER}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc)


def made_by_distilkit(folder: Path) -> bool:
    """Whether a marker in ``folder`` proves that distilkit wrote it."""
    if (folder / FOLDER_MARKER).is_file():
        return True
    if any((folder / name).exists() for name in _LEGACY_MARKERS):
        return True
    if (folder / "student-init" / "distilkit_student.json").is_file():
        return True
    if any((folder / "checkpoints").glob("*step-*/trainer_state.json")):
        return True
    manifest = folder / "manifest.json"
    if manifest.is_file():  # a dataset of `distilkit prepare`
        with contextlib.suppress(OSError, ValueError):
            return json.loads(manifest.read_text()).get("format") == "distilkit-tokens-v1"
    export = folder / "export.json"
    if export.is_file():  # an ONNX export written before the marker
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if "opset" in json.loads(export.read_text()):
                return True
    metrics = folder / "metrics.json"
    if metrics.is_file():  # results of finetune, zeroshot or squad written before the marker
        with contextlib.suppress(OSError, ValueError, AttributeError):
            kind = json.loads(metrics.read_text()).get("kind")
            return kind in ("finetune", "zeroshot", "squad", "squad-distil")
    return False


def _local_path(ref: str | os.PathLike | None) -> Path | None:
    """A command input as an absolute path, or None for hub ids and unset inputs."""
    if ref is None or str(ref) == "" or str(ref).startswith("hf:"):
        return None
    path = Path(str(ref)).expanduser()
    return path.resolve() if path.exists() else None


def inputs_inside(folder: Path, inputs: Mapping[str, object], exact: bool = False) -> list[str]:
    """``"name path"`` for every input that is ``folder`` or lies inside it (symlinks resolved;
    ``exact``: only an input that is ``folder`` itself).

    ``inputs`` maps a name ("the teacher") to a path, a list of paths, or None.
    """
    root = folder.resolve()
    found = []
    for name, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            path = _local_path(v)
            if path is not None and (path == root or (not exact and path.is_relative_to(root))):
                found.append(f"{name} {v}")
    return found


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then each folder (deepest first): after this, a power
    loss cannot leave a published name pointing at data that never reached the disk."""
    dirs = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            dirs.append(path)
        else:
            _fsync(path, os.O_RDONLY)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


def fsync_dir(folder: Path) -> None:
    """fsync a folder itself, so that the names in it (a rename) are durable."""
    _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; files must work
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP) or not path.is_dir():
            raise
    finally:
        os.close(fd)


def fingerprint(path: str | os.PathLike) -> str:
    """A quick identity of a model or student folder: config, tokenizer and the size, head and
    tail of each weight file (hashing gigabytes of weights on every resume would cost minutes).
    A hub id or a missing path fingerprints as its name."""
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        return f"name:{path}"
    h = hashlib.sha256()
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        h.update(f"{p.name}\n".encode())
        if p.suffix in (".json", ".txt", ".model"):
            h.update(p.read_bytes())
        elif p.suffix in (".safetensors", ".bin", ".pt"):
            size = p.stat().st_size
            h.update(str(size).encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


class Claim:
    """A folder held by this process: ``with claim_folder(...) as c:`` for the whole stage."""

    def __init__(self, folder: Path, stage: str, fd: int, created: bool):
        self.folder, self.stage, self._fd, self._created = folder, stage, fd, created

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def contents(self) -> list[Path]:
        """What the folder holds besides the lock and the marker."""
        return sorted(p for p in self.folder.iterdir() if p.name not in _OWN_FILES)

    def clear(self, keep: Iterable[str] = ()) -> None:
        """Delete everything but the lock, the marker and ``keep`` (names)."""
        keep = set(keep)
        for p in self.contents():
            if p.name in keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def scratch(self, name: str) -> Path:
        """A fresh temporary sub-folder, for a stage that builds its output and then
        ``publish``-es it: only the finished output ever appears in the folder."""
        tmp = self.folder / name
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def publish(self, tmp: Path, last: str) -> None:
        """Replace the folder's contents by those of ``tmp``: fsync, clear the old output, move
        each entry in with ``last`` (the file that makes the folder look complete: a model's
        config.json, a dataset's manifest.json) moved last, then fsync the folder."""
        fsync_tree(tmp)
        self.clear(keep=[tmp.name])
        names = sorted(p.name for p in tmp.iterdir())
        names.sort(key=lambda n: n == last)
        for name in names:
            os.replace(tmp / name, self.folder / name)
        tmp.rmdir()
        fsync_dir(self.folder)

    def release(self) -> None:
        if self._fd < 0:
            return
        # An empty lock file says "released cleanly": the next holder has nothing to take over.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        # A folder this claim created and that stayed empty (the stage failed before writing)
        # goes again: nothing is left that looks like an output.
        if self._created:
            with contextlib.suppress(OSError):
                if not self.contents():
                    for name in _OWN_FILES:
                        (self.folder / name).unlink(missing_ok=True)
                    self.folder.rmdir()
        os.close(self._fd)  # drops the flock
        self._fd = -1


def _lock(folder: Path, lock_path: Path, stage: str) -> int:
    """Take the exclusive lock on ``lock_path``, or fail naming the process that holds it."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DistilkitError(f"cannot write in output folder {folder}: {_cause(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (
                f"process {holder.get('pid', '?')} ({holder.get('command', 'distilkit')}, "
                f"started {holder.get('started', '?')}"
                + (f" on {holder['host']}" if holder.get("host") != socket.gethostname() else "")
                + ")"
                if holder
                else "another process"
            )
            raise DistilkitError(
                f"output folder {folder} is in use by {who}; wait for it to end, or choose "
                "another --out"
            ) from None
        # The previous holder may have removed the file (a folder it created and left empty)
        # between our open and our lock: then we hold a lock on a deleted file; start over.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def only_scratch(name: str):
    """``is_residue`` for a stage that builds in the scratch folder ``name``: a folder holding
    only that (a killed run's) holds no output, so the next run clears it unasked."""
    return lambda claim: all(p.name == name for p in claim.contents())


def claim_folder(
    out: str | os.PathLike,
    stage: str,
    *,
    overwrite: bool = False,
    inputs: Mapping[str, object] | None = None,
    resume: bool = False,
    is_residue=None,
) -> Claim:
    """Lock ``out`` for this process and make it ready for ``stage``'s output.

    - A folder holding files needs ``resume`` (the caller continues what is there) or
      ``overwrite``; ``overwrite`` empties it only if distilkit made it and it holds none of
      ``inputs``.
    - ``is_residue(claim) -> bool``: contents a failed earlier attempt of this stage left and
      that hold no work (a student built before a refused --resume): cleared without
      --overwrite, so they never block the next run.

    Checked before any work, so an unwritable or busy folder fails in seconds, not after hours.
    """
    folder = Path(out)
    inputs = inputs or {}
    if folder.exists() and not folder.is_dir():
        raise DistilkitError(f"output path {folder} is a file, not a folder; choose another --out")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistilkitError(f"cannot create output folder {folder}: {_cause(exc)}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DistilkitError(f"cannot write in output folder {folder}: permission denied")
    lock_existed = (folder / LOCK_FILE).exists()
    fd = _lock(folder, folder / LOCK_FILE, stage)
    claim = Claim(folder, stage, fd, created)
    try:
        previous = _read_holder(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            gone = (
                "no longer running"
                if previous.get("host") != socket.gethostname() or not _pid_alive(previous["pid"])
                else "which released it without saying so"
            )
            log.warning(
                "output folder %s was locked by process %s (started %s), %s; taking it over",
                folder,
                previous["pid"],
                previous.get("started", "?"),
                gone,
            )
        me = {
            "pid": os.getpid(),
            "command": f"distilkit {stage}",
            "started": _now(),
            "host": socket.gethostname(),
            "argv": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        _make_ready(claim, overwrite, inputs, resume, is_residue)
        marker = folder / FOLDER_MARKER
        # Only a folder that is empty or already distilkit's becomes distilkit's: a marker in a
        # folder of someone else's files would later let --overwrite delete them.
        if not marker.is_file() and (not claim.contents() or made_by_distilkit(folder)):
            marker.write_text(json.dumps({"stage": stage, "created": _now()}) + "\n")
    except BaseException:
        if not lock_existed:  # a refused folder (a model, the user's files) keeps no trace
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
        claim.release()
        raise
    return claim


def _make_ready(claim: Claim, overwrite: bool, inputs, resume: bool, is_residue) -> None:
    folder = claim.folder
    if not claim.contents():
        return
    ours = made_by_distilkit(folder)
    # A resumed run deletes nothing; it only must not write its output over an input.
    inside = inputs_inside(folder, inputs, exact=resume)
    if inside:
        action = "delete it even with --overwrite" if overwrite else "write into it"
        raise DistilkitError(
            f"output folder {folder} holds an input of this command ({', '.join(inside)}); "
            f"refusing to {action}; choose another --out"
        )
    if resume:
        return  # the caller continues what is there (and fails if it is not a run)
    if ours and is_residue is not None and is_residue(claim):
        log.info("output folder %s holds only what a failed attempt left; clearing it", folder)
        claim.clear()
        return
    if not ours:
        if overwrite:
            raise DistilkitError(
                f"output folder {folder} holds files that distilkit did not write; refusing to "
                "delete them even with --overwrite; choose another --out"
            )
        raise DistilkitError(
            f"output folder {folder} is not empty and holds files that distilkit did not "
            "write; choose another --out"
        )
    if not overwrite:
        if claim.stage in _RESUMABLE:
            raise DistilkitError(
                f"output folder {folder} already holds files (use --resume to continue a run, "
                "or --overwrite to replace it)"
            )
        raise DistilkitError(f"output folder {folder} is not empty (use --overwrite to replace it)")
    log.info("--overwrite: deleting the earlier output in %s", folder)
    claim.clear()


_RESUMABLE = ("distill", "adapt-teacher")
