"""Evaluation tasks: a plain dict registry of GLUE specs, their TSV readers, and generic files.

The GLUE readers expect the layout that the usual ``download_glue_data.py`` writes, column for
column, and fail on anything else with ``file:line: what is wrong``. A silently mis-read column
(a sentence read as a label, a header read as an example) would make every score meaningless, so
there is no guessing: each task names its columns, its header and its label values.

Public API (kept stable; the bench/export stage reuses it for its metric parity check):

- ``read_task(task, split, data_dir) -> list[Example]``
- ``load_task(task, data_dir, options) -> TaskData`` (train + every dev split + label names)
- ``TASKS`` / ``get_task(name)``
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

from distilkit.errors import DistilkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One labelled example. ``label`` is a class index (classification) or a float (regression)."""

    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class TaskSpec:
    """How to read and score one task."""

    name: str  # registry key, e.g. "mnli"
    title: str  # column name in reports, as in the paper's Table 1
    kind: Literal["classification", "regression"]
    labels: tuple[str, ...]  # label strings as written in the files; () for regression
    metrics: tuple[str, ...]  # what compute_metrics reports besides "score"
    folder: str = ""  # GLUE folder under the data root, e.g. "MNLI"
    splits: dict[str, str] = field(default_factory=dict)  # split -> file name
    dev_splits: tuple[str, ...] = ("dev",)  # evaluated after fine-tuning; the first is the main one
    # Expected header cells by position (negative = from the end); None = the file has no header.
    header: dict[int, str] | None = None
    n_columns: int | None = None  # exact column count of a header-less file
    text_a: int = 0
    text_b: int | None = None
    label: int = -1
    # Hugging Face datasets source when online: (path, config, text_a, text_b, label, split map).
    hf: tuple[str, str, str, str | None, str, dict[str, str]] | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None


_TRAIN_DEV = {"train": "train.tsv", "dev": "dev.tsv"}
_HF_SPLITS = {"train": "train", "dev": "validation"}
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

# The nine GLUE tasks (MNLI counted once, with matched and mismatched dev sets), plus "mnli-mm" so
# that the mismatched set can be named as a task of its own, and generic file classification.
TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        name="cola",
        title="CoLA",
        kind="classification",
        labels=_BINARY,
        metrics=("mcc",),
        folder="CoLA",
        splits=_TRAIN_DEV,
        header=None,
        n_columns=4,
        text_a=3,
        label=1,
        hf=("nyu-mll/glue", "cola", "sentence", None, "label", _HF_SPLITS),
    ),
    "sst2": TaskSpec(
        name="sst2",
        title="SST-2",
        kind="classification",
        labels=_BINARY,
        metrics=("accuracy",),
        folder="SST-2",
        splits=_TRAIN_DEV,
        header={0: "sentence", 1: "label"},
        text_a=0,
        label=1,
        hf=("nyu-mll/glue", "sst2", "sentence", None, "label", _HF_SPLITS),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        title="MRPC",
        kind="classification",
        labels=_BINARY,
        metrics=("accuracy", "f1"),
        folder="MRPC",
        splits=_TRAIN_DEV,
        header={0: "Quality", 3: "#1 String", 4: "#2 String"},
        text_a=3,
        text_b=4,
        label=0,
        hf=("nyu-mll/glue", "mrpc", "sentence1", "sentence2", "label", _HF_SPLITS),
    ),
    "stsb": TaskSpec(
        name="stsb",
        title="STS-B",
        kind="regression",
        labels=(),
        metrics=("pearson", "spearman"),
        folder="STS-B",
        splits=_TRAIN_DEV,
        header={7: "sentence1", 8: "sentence2", -1: "score"},
        text_a=7,
        text_b=8,
        label=-1,
        hf=("nyu-mll/glue", "stsb", "sentence1", "sentence2", "label", _HF_SPLITS),
    ),
    "qqp": TaskSpec(
        name="qqp",
        title="QQP",
        kind="classification",
        labels=_BINARY,
        metrics=("accuracy", "f1"),
        folder="QQP",
        splits=_TRAIN_DEV,
        header={3: "question1", 4: "question2", 5: "is_duplicate"},
        text_a=3,
        text_b=4,
        label=5,
        hf=("nyu-mll/glue", "qqp", "question1", "question2", "label", _HF_SPLITS),
    ),
    "mnli": TaskSpec(
        name="mnli",
        title="MNLI",
        kind="classification",
        labels=("contradiction", "entailment", "neutral"),
        metrics=("accuracy",),
        folder="MNLI",
        splits={
            "train": "train.tsv",
            "dev": "dev_matched.tsv",
            "dev_matched": "dev_matched.tsv",
            "dev_mismatched": "dev_mismatched.tsv",
        },
        dev_splits=("dev_matched", "dev_mismatched"),
        header={8: "sentence1", 9: "sentence2", -1: "gold_label"},
        text_a=8,
        text_b=9,
        label=-1,
        hf=(
            "nyu-mll/glue",
            "mnli",
            "premise",
            "hypothesis",
            "label",
            {
                "train": "train",
                "dev": "validation_matched",
                "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched",
            },
        ),
    ),
    "mnli-mm": TaskSpec(
        name="mnli-mm",
        title="MNLI-mm",
        kind="classification",
        labels=("contradiction", "entailment", "neutral"),
        metrics=("accuracy",),
        folder="MNLI",
        splits={"train": "train.tsv", "dev": "dev_mismatched.tsv"},
        header={8: "sentence1", 9: "sentence2", -1: "gold_label"},
        text_a=8,
        text_b=9,
        label=-1,
        hf=(
            "nyu-mll/glue",
            "mnli",
            "premise",
            "hypothesis",
            "label",
            {"train": "train", "dev": "validation_mismatched"},
        ),
    ),
    "qnli": TaskSpec(
        name="qnli",
        title="QNLI",
        kind="classification",
        labels=_NLI2,
        metrics=("accuracy",),
        folder="QNLI",
        splits=_TRAIN_DEV,
        header={1: "question", 2: "sentence", 3: "label"},
        text_a=1,
        text_b=2,
        label=3,
        hf=("nyu-mll/glue", "qnli", "question", "sentence", "label", _HF_SPLITS),
    ),
    "rte": TaskSpec(
        name="rte",
        title="RTE",
        kind="classification",
        labels=_NLI2,
        metrics=("accuracy",),
        folder="RTE",
        splits=_TRAIN_DEV,
        header={1: "sentence1", 2: "sentence2", 3: "label"},
        text_a=1,
        text_b=2,
        label=3,
        hf=("nyu-mll/glue", "rte", "sentence1", "sentence2", "label", _HF_SPLITS),
    ),
    "wnli": TaskSpec(
        name="wnli",
        title="WNLI",
        kind="classification",
        labels=_BINARY,
        metrics=("accuracy",),
        folder="WNLI",
        splits=_TRAIN_DEV,
        header={1: "sentence1", 2: "sentence2", 3: "label"},
        text_a=1,
        text_b=2,
        label=3,
        hf=("nyu-mll/glue", "wnli", "sentence1", "sentence2", "label", _HF_SPLITS),
    ),
    # CSV/TSV/JSONL files with configurable columns (the paper's IMDb experiment). Labels are
    # discovered from the training file unless ClassificationOptions.labels fixes them.
    "classification": TaskSpec(
        name="classification",
        title="Classification",
        kind="classification",
        labels=(),
        metrics=("accuracy", "macro_f1"),
    ),
}

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; ``SST-2``, ``sst_2`` and ``sst2`` are the same task."""
    key = name.strip().lower().replace("_", "-")
    if key not in TASKS:
        squashed = key.replace("-", "")
        key = next((k for k in TASKS if k.replace("-", "") == squashed), key)
    if key not in TASKS:
        raise DistilkitError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[key]


@dataclass
class ClassificationOptions:
    """Where and how to read the generic ``classification`` task."""

    train_file: str | None = None
    """Training file (.csv, .tsv, .jsonl or .json); default: train.* inside --data-dir."""
    dev_file: str | None = None
    """Dev file; default: dev.* inside --data-dir, else a held-out split of the training file."""
    text_column: str = "text"
    """Column holding the text."""
    text_pair_column: str | None = None
    """Column holding the second text, for pair tasks."""
    label_column: str = "label"
    """Column holding the label."""
    labels: list[str] | None = None
    """Label values in class-index order; default: sorted distinct values of the training file."""
    dev_fraction: float = 0.1
    """Share of the training file held out when there is no dev file."""
    split_seed: int = 0
    """Seed of that hold-out."""

    def validate(self) -> None:
        if not 0.0 < self.dev_fraction < 1.0:
            raise DistilkitError(
                f"classification.dev_fraction must be in (0, 1), got {self.dev_fraction}"
            )


@dataclass
class TaskData:
    """Everything fine-tuning needs: the spec (labels filled in), train set and dev sets."""

    spec: TaskSpec
    train: list[Example]
    dev: dict[str, list[Example]]  # split name -> examples; the first key is the main dev set


def read_task(
    task: str,
    split: str,
    data_dir: str | Path,
    options: ClassificationOptions | None = None,
) -> list[Example]:
    """Read one split of a task.

    ``data_dir`` is the GLUE root (holding ``CoLA/`` ...), the task's own folder, or ``hf`` /
    ``hf:<dataset>`` to load from the Hugging Face hub (needs network). For ``classification`` it
    is the training file or a folder with ``train.*`` (and optionally ``dev.*``).
    ``split`` is ``train`` or ``dev`` (MNLI also ``dev_matched`` / ``dev_mismatched``).
    """
    spec = get_task(task)
    if spec.name == "classification":
        data = _load_classification(spec, data_dir, options or ClassificationOptions())
        if split == "train":
            return data.train
        if split == "dev":
            return data.dev["dev"]
        raise DistilkitError(f"task 'classification' has splits train, dev; not '{split}'")
    if split not in spec.splits:
        raise DistilkitError(
            f"task '{spec.name}' has splits {', '.join(spec.splits)}; not '{split}'"
        )
    if _is_hf(data_dir):
        return _read_hf(spec, split, str(data_dir))
    return read_glue_tsv(spec, _glue_file(spec, split, Path(data_dir)))


def load_task(
    task: str, data_dir: str | Path, options: ClassificationOptions | None = None
) -> TaskData:
    """Train set, every dev split of the task, and the spec with its label names."""
    spec = get_task(task)
    if spec.name == "classification":
        return _load_classification(spec, data_dir, options or ClassificationOptions())
    train = read_task(spec.name, "train", data_dir)
    dev = {s: read_task(spec.name, s, data_dir) for s in spec.dev_splits}
    return TaskData(spec=spec, train=train, dev=dev)


# ----------------------------------------------------------------------------- GLUE TSV


def _is_hf(data_dir: str | Path) -> bool:
    text = str(data_dir)
    return text == "hf" or text.startswith("hf:")


def _glue_file(spec: TaskSpec, split: str, data_dir: Path) -> Path:
    name = spec.splits[split]
    for candidate in (data_dir / spec.folder / name, data_dir / name):
        if candidate.is_file():
            return candidate
    raise DistilkitError(
        f"no {spec.title} {split} file: looked for {data_dir / spec.folder / name} and "
        f"{data_dir / name}"
    )


def read_glue_tsv(spec: TaskSpec, path: str | Path) -> list[Example]:
    """Parse one GLUE TSV file exactly as ``download_glue_data.py`` lays it out.

    GLUE files are not CSV-quoted (sentences contain bare quotes), so lines are split on tabs and
    nothing else, like the reference processors (``quotechar=None``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DistilkitError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DistilkitError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    # MRPC's header starts with a byte-order mark (copied from the MSR release); strip it anywhere.
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":  # final newline; CoLA dev famously has none
        lines.pop()
    if not lines:
        raise DistilkitError(f"{path}: file is empty")

    first_data_line = 1
    n_columns = spec.n_columns
    if spec.header is not None:
        header = lines[0].rstrip("\r").split("\t")
        for pos, name in spec.header.items():
            got = header[pos] if -len(header) <= pos < len(header) else None
            if got != name:
                col = pos + 1 if pos >= 0 else f"{pos} (from the end)"
                raise DistilkitError(
                    f"{path}:1: not a {spec.title} header: column {col} should be '{name}', "
                    f"found {got!r}"
                )
        n_columns = len(header)
        first_data_line = 2

    label_index = {label: i for i, label in enumerate(spec.labels)}
    examples = []
    for lineno, line in enumerate(lines[first_data_line - 1 :], start=first_data_line):
        cells = line.rstrip("\r").split("\t")
        if len(cells) != n_columns:
            raise DistilkitError(
                f"{path}:{lineno}: expected {n_columns} tab-separated columns for {spec.title}, "
                f"found {len(cells)}"
            )
        raw_label = cells[spec.label].strip()
        label = _parse_label(spec, raw_label, label_index, f"{path}:{lineno}")
        text_b = cells[spec.text_b] if spec.text_b is not None else None
        examples.append(Example(cells[spec.text_a], text_b, label))
    if not examples:
        raise DistilkitError(f"{path}: no examples after the header")
    return examples


def _parse_label(spec: TaskSpec, raw: str, label_index: dict[str, int], where: str) -> int | float:
    if spec.kind == "regression":
        return _parse_score(spec, raw, where)
    # Files written through pandas turn GLUE's 0/1 into 0.0/1.0: the same classes.
    key = canonical_label(raw)
    if key not in label_index:
        raise DistilkitError(
            f"{where}: {spec.title} label {raw!r} is not one of {', '.join(spec.labels)}"
        )
    return label_index[key]


def _parse_score(spec: TaskSpec, raw: str, where: str) -> float:
    """A regression target; anything but a finite number stops the run before training (one
    NaN or inf makes the MSE loss, and every correlation computed from the file, NaN)."""
    if not raw:
        raise DistilkitError(f"{where}: {spec.title} score is empty")
    try:
        value = float(raw)
    except ValueError:
        raise DistilkitError(f"{where}: {spec.title} score {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DistilkitError(f"{where}: {spec.title} score {raw!r} is not a finite number")
    return value


# A plain decimal number as people write labels: 1, -1, 1.0, .5, 1e0. Not "nan"/"inf" (float()
# takes them, but as labels they are words), nor "1_000" (float() takes that too).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def canonical_label(raw: object) -> str:
    """One spelling per class: a numeric label becomes its shortest decimal form (``1``, ``1.0``,
    `` 1 ``, ``+1`` and ``1e0`` are all ``"1"``; ``0.50`` is ``"0.5"``), a JSON boolean
    ``true``/``false``; any other label is kept as written, without surrounding white space."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    text = str(raw).strip()
    if not _NUMBER.fullmatch(text):
        return text
    value = Decimal(text)
    if value == value.to_integral_value():
        return str(int(value))  # exact for any size, and -0 is 0
    return format(value.normalize(), "f")


def is_numeric_label(label: str) -> bool:
    return _NUMBER.fullmatch(label) is not None


def _read_hf(spec: TaskSpec, split: str, source: str) -> list[Example]:
    if spec.hf is None:
        raise DistilkitError(f"task '{spec.name}' has no Hugging Face datasets source")
    path, config, col_a, col_b, col_label, split_map = spec.hf
    if source.startswith("hf:"):
        path = source[3:]
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=split_map[split])
    except Exception as exc:  # network, missing dataset, bad config: all user-facing
        raise DistilkitError(f"cannot load {path}/{config} [{split_map[split]}]: {exc}") from exc
    names = getattr(ds.features.get(col_label), "names", None)
    # The hub's MNLI orders labels entailment/neutral/contradiction, the TSV processors
    # contradiction/entailment/neutral: map by name so both sources give the same indices.
    remap = None
    if names and spec.labels and not spec.labels[0].isdigit():
        remap = {i: spec.labels.index(n) for i, n in enumerate(names) if n in spec.labels}
    out = []
    for i, row in enumerate(ds):
        label = row[col_label]
        if spec.kind == "regression":
            label = float(label)
            if not math.isfinite(label):
                raise DistilkitError(
                    f"{path}/{config} [{split}] row {i}: {spec.title} score {label} is not a "
                    "finite number"
                )
        else:
            if label < 0:
                raise DistilkitError(f"{path}/{config} [{split}] row {i}: no label (test split?)")
            label = remap[label] if remap is not None else int(label)
        out.append(Example(row[col_a], row[col_b] if col_b else None, label))
    return out


# ----------------------------------------------------------------------------- generic files

_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def _find_file(folder: Path, stem: str) -> Path | None:
    for suffix in _SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _load_classification(
    spec: TaskSpec, data_dir: str | Path | None, opts: ClassificationOptions
) -> TaskData:
    opts.validate()
    root = Path(data_dir) if data_dir is not None else None
    train_path = Path(opts.train_file) if opts.train_file else None
    dev_path = Path(opts.dev_file) if opts.dev_file else None
    if train_path is None and root is not None:
        train_path = root if root.is_file() else _find_file(root, "train")
        if dev_path is None and root.is_dir():
            dev_path = _find_file(root, "dev") or _find_file(root, "validation")
    if train_path is None:
        raise DistilkitError(
            f"classification: no training file (give classification.train_file or a --data-dir "
            f"holding train{{{','.join(_SUFFIXES)}}}); looked in {root}"
        )
    train_rows = _read_rows(train_path, opts)
    dev_rows = _read_rows(dev_path, opts) if dev_path else None

    if opts.labels:
        labels = tuple(canonical_label(x) for x in opts.labels)
        if len(set(labels)) < len(labels):
            raise DistilkitError(
                f"classification.labels {opts.labels} names a class twice ({', '.join(labels)} "
                "once numbers are normalised)"
            )
    else:
        labels = _discover_labels(train_path, train_rows, opts.label_column)
    if len(labels) < 2:
        raise DistilkitError(f"{train_path}: need at least 2 distinct labels, found {labels}")
    index = {label: i for i, label in enumerate(labels)}

    def to_examples(rows: list[tuple[str, str | None, str, str]]) -> list[Example]:
        out = []
        for text_a, text_b, label, where in rows:
            if label not in index:
                raise DistilkitError(f"{where}: label {label!r} is not one of {', '.join(labels)}")
            out.append(Example(text_a, text_b, index[label]))
        return out

    train = to_examples(train_rows)
    if dev_rows is not None:
        dev = to_examples(dev_rows)
    else:
        # Deterministic hold-out, independent of the fine-tuning seed: every seed sees one split.
        order = list(range(len(train)))
        random.Random(opts.split_seed).shuffle(order)
        n_dev = max(1, round(len(train) * opts.dev_fraction))
        if n_dev >= len(train):
            raise DistilkitError(f"{train_path}: too few rows ({len(train)}) to hold out a dev set")
        held = set(order[:n_dev])
        dev = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
        log.info(
            "no dev file: held out %d of %d training rows (seed %d)",
            n_dev,
            n_dev + len(train),
            opts.split_seed,
        )
    spec = dataclasses.replace(spec, labels=labels, text_b=1 if opts.text_pair_column else None)
    return TaskData(spec=spec, train=train, dev={"dev": dev})


def _discover_labels(
    path: Path, rows: list[tuple[str, str | None, str, str]], column: str
) -> tuple[str, ...]:
    """The classes of a training file in index order: numbers by value, names sorted.

    A column holding both numbers and names is refused: whether ``1`` and ``pos`` are two
    classes, one class spelt two ways, or a stray value (a repeated header, ``nan`` from a
    spreadsheet) cannot be told from the file, and a wrong guess trains on wrong targets.
    """
    first: dict[str, str] = {}  # label -> where it first occurs
    for _, _, label, where in rows:
        first.setdefault(label, where)
    numbers = [x for x in first if is_numeric_label(x)]
    names = [x for x in first if not is_numeric_label(x)]
    if numbers and names:
        num, name = numbers[0], names[0]
        raise DistilkitError(
            f"{path}: label column '{column}' mixes numbers and text ({num} at {first[num]}, "
            f"{name!r} at {first[name]}), so its classes are ambiguous; make the column all "
            "numbers or all names, or list the classes with classification.labels=[...]"
        )
    if numbers:
        return tuple(sorted(numbers, key=Decimal))
    return tuple(sorted(names))


def _read_rows(path: Path, opts: ClassificationOptions) -> list[tuple[str, str | None, str, str]]:
    """Rows ``(text_a, text_b, label_string, "file:line")`` of a CSV/TSV/JSONL file."""
    if not path.is_file():
        raise DistilkitError(f"classification file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DistilkitError(f"{path}: unsupported extension (use {', '.join(_SUFFIXES)})")
    wanted = [opts.text_column, opts.label_column] + (
        [opts.text_pair_column] if opts.text_pair_column else []
    )
    rows: list[tuple[str, str | None, str, str]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            if suffix in (".csv", ".tsv"):
                reader = csv.DictReader(fh, delimiter="," if suffix == ".csv" else "\t")
                if reader.fieldnames is None:
                    raise DistilkitError(f"{path}: file is empty")
                missing = [c for c in wanted if c not in reader.fieldnames]
                if missing:
                    raise DistilkitError(
                        f"{path}:1: no column '{missing[0]}' in the header "
                        f"(found: {', '.join(reader.fieldnames or [])})"
                    )
                for record in reader:
                    where = f"{path}:{reader.line_num}"
                    if None in record or any(record[c] is None for c in wanted):
                        raise DistilkitError(f"{where}: wrong number of columns")
                    rows.append(_row(record, opts, where))
            else:
                rows = _read_json_rows(path, fh.read(), opts)
    except UnicodeDecodeError as exc:
        raise DistilkitError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DistilkitError(f"{path}: malformed CSV ({exc})") from exc
    if not rows:
        raise DistilkitError(f"{path}: no rows")
    return rows


def _read_json_rows(
    path: Path, text: str, opts: ClassificationOptions
) -> list[tuple[str, str | None, str, str]]:
    rows = []
    if text.lstrip().startswith("["):  # a JSON array of objects
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DistilkitError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        for i, record in enumerate(records):
            rows.append(_row(record, opts, f"{path}: item {i}"))
        return rows
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DistilkitError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        rows.append(_row(record, opts, f"{path}:{lineno}"))
    return rows


def _row(
    record: object, opts: ClassificationOptions, where: str
) -> tuple[str, str | None, str, str]:
    if not isinstance(record, dict):
        raise DistilkitError(f"{where}: expected an object with named fields")
    for col in (opts.text_column, opts.label_column, opts.text_pair_column):
        if col is not None and col not in record:
            raise DistilkitError(f"{where}: no field '{col}'")
    raw = record[opts.label_column]
    if raw is None or isinstance(raw, (dict, list)):
        raise DistilkitError(f"{where}: label {raw!r} is not a scalar")
    if isinstance(raw, float) and not math.isfinite(raw):  # JSON NaN/Infinity (Python's json)
        raise DistilkitError(f"{where}: label {raw!r} is not a class")
    label = canonical_label(raw)
    if not label:
        raise DistilkitError(f"{where}: empty label")
    text_b = str(record[opts.text_pair_column]) if opts.text_pair_column else None
    return str(record[opts.text_column]), text_b, label, where
