"""Corpus -> packed token sequences in memory-mapped shards, plus token counts and a manifest.

Streaming from start to end: documents are read lazily, tokenised in batches by the Rust
tokenizer (which runs on all cores), packed, and appended to shard files; nothing grows with the
corpus except the files on disk and a per-shard list of sequence lengths.

Layout of a prepared folder::

    manifest.json              tokenizer, special ids, dtype, sources, counts, shards, seed
    token_counts.npy           (V,) int64 counts over the train split (masking weights)
    train-00000.bin            token ids, little-endian ``dtype``, sequences back to back
    train-00000.len            (n_seq,) uint32 sequence lengths for that shard
    validation-00000.bin/.len  held-out documents
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distilkit.errors import DistilkitError
from distilkit.modeling import load_tokenizer
from distilkit.runfolder import claim_folder, only_scratch

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
SPLITS = ("train", "validation")


@dataclass
class PrepareConfig:
    """Options of ``distilkit prepare``."""

    sources: list[str] = field(default_factory=list)
    """Files, folders (searched for .txt, .txt.gz, .jsonl) or ``hf:NAME[:CONFIG[:SPLIT]]``."""
    tokenizer: str = ""
    """Teacher (folder, hub id or 'minilm') whose fast tokenizer is used."""
    out_dir: str = ""
    """Output folder (written under a temporary name, renamed when complete)."""
    max_length: int = 512
    """Longest packed sequence, [CLS] and [SEP] included."""
    min_length: int = 12
    """Sequences shorter than this are dropped (the paper drops <= 11 tokens)."""
    max_unk_ratio: float = 0.5
    """Sequences with at least this share of [UNK] are dropped."""
    validation_fraction: float = 0.01
    """Share of documents held out for validation."""
    seed: int = 56
    """Seed of the validation hold-out."""
    text_field: str = "text"
    """Field holding the text in .jsonl files and datasets."""
    batch_paragraphs: int = 2048
    """Paragraphs per tokenizer call."""
    shard_tokens: int = 100_000_000
    """Tokens per memory-mapped shard file."""
    max_documents: int = 0
    """Stop after this many documents (0: all)."""
    overwrite: bool = False
    """Replace a non-empty output folder."""

    def validate(self) -> None:
        if not 16 <= self.max_length <= 65536:
            raise DistilkitError(f"max_length must be in 16..65536, got {self.max_length}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DistilkitError("validation_fraction must be in [0, 1)")
        if not 0.0 < self.max_unk_ratio <= 1.0:
            raise DistilkitError("max_unk_ratio must be in (0, 1]")


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: uint16 only when all ids are <= 65,535."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def vocab_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary; a teacher and a dataset must agree on it."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256()
    for tok, idx in items:
        h.update(f"{idx}\t{tok}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reading documents


@dataclass
class _ReadStats:
    files: int = 0
    bytes: int = 0
    documents: int = 0
    bad_utf8_lines: int = 0


def _expand_sources(sources: list[str]) -> list[str | Path]:
    if not sources:
        raise DistilkitError("no corpus sources given")
    out: list[str | Path] = []
    for src in sources:
        if src.startswith("hf:"):
            out.append(src)
            continue
        p = Path(src).expanduser()
        if not p.exists():
            raise DistilkitError(
                f"corpus source not found: {src} (for a Hugging Face dataset write hf:NAME)"
            )
        if p.is_dir():
            files = _corpus_files(p)
            if not files:
                raise DistilkitError(f"folder {src} holds no {', '.join(TEXT_SUFFIXES)} files")
            out.extend(files)
        else:
            out.append(p)
    return out


def _corpus_files(folder: Path) -> list[Path]:
    """Corpus files under ``folder``, following symlinked folders (each real folder once, so a
    link cycle ends): a corpus assembled from links to other disks is common, and skipping the
    links would silently train on part of it. Each followed link is logged."""
    files: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for d in dirs:
            link = Path(root) / d
            if link.is_symlink():
                target = os.path.realpath(link)
                if target in seen:
                    log.info("skipping symlinked folder %s -> %s (read already)", link, target)
                else:
                    log.info("following symlinked folder %s -> %s", link, target)
        for name in names:
            f = Path(root) / name
            if name.endswith(TEXT_SUFFIXES) and f.is_file():
                files.append(f)
    return sorted(files)


def _check_format(path: Path, is_jsonl: bool) -> None:
    """The suffix says how a file is read; refuse one whose content says otherwise (JSON lines
    named .json or .txt would be trained on as raw JSON text, braces and keys included)."""
    if is_jsonl:
        return
    if path.name.endswith((".json", ".json.gz")):
        raise DistilkitError(
            f"corpus file {path}: .json is not a corpus format; name JSON lines (one object "
            "with a 'text' field per line) .jsonl, and plain text .txt"
        )
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            if line.startswith(b"{") and line.endswith(b"}"):
                with contextlib.suppress(ValueError):
                    if isinstance(json.loads(line), dict):
                        raise DistilkitError(
                            f"corpus file {path} holds JSON lines but is read as plain text "
                            "(by its name); rename it to .jsonl"
                        )
            return


def _check_not_binary(path: Path) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(8192)
    except (OSError, EOFError) as exc:
        raise DistilkitError(f"cannot read corpus file {path}: {exc}") from exc
    if b"\x00" in head:
        raise DistilkitError(f"corpus file {path} looks binary (NUL bytes); expected UTF-8 text")


def _lines(path: Path, stats: _ReadStats) -> Iterator[str]:
    """Decoded lines; undecodable lines are skipped and counted (reported in the manifest)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for raw in f:
                stats.bytes += len(raw)
                try:
                    yield raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    stats.bad_utf8_lines += 1
    except (OSError, EOFError) as exc:
        raise DistilkitError(f"cannot read corpus file {path}: {exc}") from exc


def _documents(path: str | Path, text_field: str, stats: _ReadStats) -> Iterator[list[str]]:
    """Yield documents as lists of paragraphs.

    .txt: one paragraph per line, a blank line between documents. .jsonl: one document per line
    in ``text_field``, paragraphs split on newlines. ``hf:`` sources: one document per row.
    """
    if isinstance(path, str) and path.startswith("hf:"):
        yield from _hf_documents(path, text_field)
        return
    path = Path(path)
    _check_not_binary(path)
    stats.files += 1
    is_jsonl = path.name.endswith((".jsonl", ".jsonl.gz"))
    _check_format(path, is_jsonl)
    paragraphs: list[str] = []
    for lineno, line in enumerate(_lines(path, stats), start=1):
        if is_jsonl:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row[text_field]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DistilkitError(
                    f"{path}:{lineno}: expected a JSON object with a '{text_field}' field ({exc})"
                ) from exc
            if not isinstance(text, str):
                raise DistilkitError(f"{path}:{lineno}: field '{text_field}' is not a string")
            paras = [p.strip() for p in text.split("\n") if p.strip()]
            if paras:
                yield paras
        elif line.strip():
            paragraphs.append(line.strip())
        elif paragraphs:
            yield paragraphs
            paragraphs = []
    if paragraphs:
        yield paragraphs


def _hf_documents(spec: str, text_field: str) -> Iterator[list[str]]:
    parts = spec[3:].split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 else "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # network, auth, unknown name: all end the run the same way
        raise DistilkitError(f"cannot open dataset {spec}: {exc}") from exc
    for row in ds:
        text = row.get(text_field)
        if not isinstance(text, str):
            raise DistilkitError(f"dataset {spec} has no string field '{text_field}'")
        paras = [p.strip() for p in text.split("\n") if p.strip()]
        if paras:
            yield paras


# ---------------------------------------------------------------------------------------------
# Writing shards


class _ShardWriter:
    """Appends sequences to ``{split}-NNNNN.bin`` / ``.len`` files, rolling over at a size."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.sequences = 0
        self.tokens = 0
        self._bin = self._len = None
        self._cur_tokens = self._cur_seqs = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}"
        self._bin = open(self.root / f"{name}.bin", "wb")  # noqa: SIM115 (closed in close())
        self._len = open(self.root / f"{name}.len", "wb")  # noqa: SIM115
        self.shards.append({"name": name, "sequences": 0, "tokens": 0})
        self._cur_tokens = self._cur_seqs = 0

    def write(self, ids: np.ndarray) -> None:
        if self._bin is None or self._cur_tokens >= self.shard_tokens:
            self.close()
            self._open()
        self._bin.write(ids.astype(self.dtype, copy=False).tobytes())
        self._len.write(np.uint32(len(ids)).tobytes())
        self._cur_tokens += len(ids)
        self._cur_seqs += 1
        self.shards[-1]["sequences"] = self._cur_seqs
        self.shards[-1]["tokens"] = self._cur_tokens
        self.sequences += 1
        self.tokens += len(ids)

    def close(self) -> None:
        if self._bin is not None:
            self._bin.close()
            self._len.close()
            self._bin = self._len = None


def _pack(paragraphs: list[list[int]], body: int) -> Iterator[list[int]]:
    """Pack consecutive paragraphs of one document into chunks of at most ``body`` tokens.

    A paragraph longer than ``body`` is split into pieces of ``body`` tokens.
    """
    current: list[int] = []
    for ids in paragraphs:
        if len(ids) > body:
            if current:
                yield current
                current = []
            for start in range(0, len(ids), body):
                yield ids[start : start + body]
        elif len(current) + len(ids) > body:
            yield current
            current = list(ids)
        else:
            current.extend(ids)
    if current:
        yield current


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Tokenise, pack and store a corpus; see the module docstring for the layout."""
    if not cfg.out_dir:
        raise DistilkitError("no output folder given (--out)")
    if not cfg.tokenizer:
        raise DistilkitError("no tokenizer/teacher given (--teacher)")
    out = Path(cfg.out_dir)
    sources = _expand_sources(cfg.sources)
    inputs = {"the corpus source": list(cfg.sources), "the tokenizer": cfg.tokenizer}
    with claim_folder(
        out,
        "prepare",
        overwrite=cfg.overwrite,
        inputs=inputs,
        is_residue=only_scratch(".tmp-prepare"),
    ) as claim:
        tok = load_tokenizer(cfg.tokenizer)
        specials = _special_ids(tok)
        vocab_size = len(tok)
        dtype = id_dtype(vocab_size)
        # Built in a hidden sub-folder and moved in with manifest.json last: the folder looks
        # like a dataset only once it is a whole one.
        tmp = claim.scratch(".tmp-prepare")
        try:
            manifest = _prepare_into(tmp, cfg, sources, tok, specials, vocab_size, dtype)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        claim.publish(tmp, last="manifest.json")
    log.info(
        "prepared %d train / %d validation sequences (%d / %d tokens) in %s",
        manifest["splits"]["train"]["sequences"],
        manifest["splits"]["validation"]["sequences"],
        manifest["splits"]["train"]["tokens"],
        manifest["splits"]["validation"]["tokens"],
        out,
    )
    return PrepareResult(out, manifest)


def _special_ids(tok) -> dict[str, int]:
    ids = {}
    for name in ("cls", "sep", "pad", "mask", "unk"):
        value = getattr(tok, f"{name}_token_id", None)
        if value is None:
            raise DistilkitError(f"tokenizer has no {name} token; a BERT-style tokenizer is needed")
        ids[name] = int(value)
    return ids


def _prepare_into(tmp, cfg, sources, tok, specials, vocab_size, dtype) -> dict:
    start = time.time()
    # A copy without the truncation/padding some tokenizer.json files carry (MiniLM's truncates
    # at 128): packing needs every token of a paragraph.
    backend = copy.deepcopy(tok.backend_tokenizer)
    backend.no_truncation()
    backend.no_padding()
    body = cfg.max_length - 2
    counts = np.zeros(vocab_size, dtype=np.int64)
    writers = {s: _ShardWriter(tmp, s, dtype, cfg.shard_tokens) for s in SPLITS}
    dropped = {"too_short": 0, "too_many_unk": 0}
    stats = _ReadStats()
    rng = np.random.default_rng(cfg.seed)
    cls_, sep, unk = specials["cls"], specials["sep"], specials["unk"]

    # Buffer whole documents until enough paragraphs for one tokenizer call.
    pending: list[tuple[str, list[str]]] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        flat = [p for _, doc in pending for p in doc]
        if not flat:
            return
        encoded = backend.encode_batch(flat, add_special_tokens=False)
        pos = 0
        train_seqs: list[np.ndarray] = []
        for split, doc in pending:
            paras = [encoded[pos + i].ids for i in range(len(doc))]
            pos += len(doc)
            for chunk in _pack(paras, body):
                seq = np.asarray([cls_, *chunk, sep], dtype=np.int64)
                if len(seq) < cfg.min_length:
                    dropped["too_short"] += 1
                    continue
                if (seq == unk).sum() >= cfg.max_unk_ratio * len(seq):
                    dropped["too_many_unk"] += 1
                    continue
                writers[split].write(seq)
                if split == "train":
                    train_seqs.append(seq)
        if train_seqs:
            # One bincount per tokenizer call: a (V,) allocation per sequence would dominate.
            np.add(
                counts, np.bincount(np.concatenate(train_seqs), minlength=vocab_size), out=counts
            )
        pending, n_pending = [], 0

    bar = tqdm(desc="prepare", unit="doc", dynamic_ncols=True, mininterval=1.0)
    done = False
    for src in sources:
        for doc in _documents(src, cfg.text_field, stats):
            split = "validation" if rng.random() < cfg.validation_fraction else "train"
            pending.append((split, doc))
            n_pending += len(doc)
            stats.documents += 1
            bar.update(1)
            if n_pending >= cfg.batch_paragraphs:
                flush()
                bar.set_postfix(MB=f"{stats.bytes / 1e6:.1f}", seqs=writers["train"].sequences)
            if cfg.max_documents and stats.documents >= cfg.max_documents:
                done = True
                break
        if done:
            break
    flush()
    bar.close()
    for w in writers.values():
        w.close()

    if writers["train"].sequences == 0:
        raise DistilkitError(
            "the corpus gave no training sequences (empty, or every sequence was dropped as too "
            f"short or mostly [UNK]; documents read: {stats.documents})"
        )
    if writers["validation"].sequences == 0:
        log.warning("no document was held out for validation (corpus too small?)")
    if stats.bad_utf8_lines:
        log.warning("skipped %d lines that were not valid UTF-8", stats.bad_utf8_lines)

    np.save(tmp / "token_counts.npy", counts)
    seconds = time.time() - start
    manifest = {
        "format": "distilkit-tokens-v1",
        "tokenizer": str(cfg.tokenizer),
        "vocab_size": vocab_size,
        "vocab_fingerprint": vocab_fingerprint(tok),
        "special_ids": specials,
        "dtype": dtype.name,
        "max_length": cfg.max_length,
        "min_length": cfg.min_length,
        "max_unk_ratio": cfg.max_unk_ratio,
        "validation_fraction": cfg.validation_fraction,
        "seed": cfg.seed,
        "sources": [str(s) for s in cfg.sources],
        "read": {
            "files": stats.files,
            "bytes": stats.bytes,
            "documents": stats.documents,
            "bad_utf8_lines_skipped": stats.bad_utf8_lines,
        },
        "dropped_sequences": dropped,
        "splits": {
            s: {"sequences": w.sequences, "tokens": w.tokens, "shards": w.shards}
            for s, w in writers.items()
        },
        "seconds": round(seconds, 2),
        "mb_per_second": round(stats.bytes / 1e6 / max(seconds, 1e-9), 2),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # The tokenizer travels with the data so that a dataset is usable on its own.
    tok.save_pretrained(tmp / "tokenizer")
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading prepared data


class TokenDataset:
    """Random access to the packed sequences of one split, through memory maps.

    ``dataset[i]`` is a ``(L_i,)`` int64 array; ``dataset.lengths`` is ``(N,)``.
    """

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        self.manifest = _read_manifest(self.root)
        if split not in self.manifest["splits"]:
            raise DistilkitError(f"dataset {self.root} has no split '{split}'")
        dtype = self._dtype = np.dtype(self.manifest["dtype"])
        self._maps: list[np.ndarray] = []
        self._names: list[str] = []
        lengths, shard_of, start_of = [], [], []
        for k, shard in enumerate(self.manifest["splits"][split]["shards"]):
            lens = self._lengths(shard)
            n_tokens = int(lens.sum())
            bin_path = self.root / f"{shard['name']}.bin"
            if not bin_path.is_file():
                raise DistilkitError(f"dataset {self.root}: shard file {bin_path.name} is missing")
            if bin_path.stat().st_size != n_tokens * dtype.itemsize:
                raise DistilkitError(
                    f"shard {shard['name']} of {self.root} is truncated or damaged "
                    f"({bin_path.name} has {bin_path.stat().st_size:,} bytes; its .len file and "
                    f"dtype {dtype.name} say {n_tokens * dtype.itemsize:,})"
                )
            if n_tokens == 0:
                self._maps.append(np.zeros(0, dtype=dtype))
            else:
                self._maps.append(np.memmap(bin_path, dtype=dtype, mode="r"))
            self._names.append(bin_path.name)
            starts = np.zeros(len(lens), dtype=np.int64)
            np.cumsum(lens[:-1], out=starts[1:])
            lengths.append(lens.astype(np.int64))
            shard_of.append(np.full(len(lens), k, dtype=np.int32))
            start_of.append(starts)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        self._shard = np.concatenate(shard_of) if shard_of else np.zeros(0, dtype=np.int32)
        self._start = np.concatenate(start_of) if start_of else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        s = self._start[i]
        return np.asarray(self._maps[self._shard[i]][s : s + self.lengths[i]], dtype=np.int64)

    @property
    def special_ids(self) -> dict[str, int]:
        return self.manifest["special_ids"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def _lengths(self, shard: dict) -> np.ndarray:
        """The ``.len`` side file of a shard, checked against the manifest: ``(n_seq,)``."""
        path = self.root / f"{shard['name']}.len"
        if not path.is_file():
            raise DistilkitError(f"dataset {self.root}: shard file {path.name} is missing")
        size = path.stat().st_size
        if size % 4 or size // 4 != shard.get("sequences", size // 4):
            raise DistilkitError(
                f"dataset {self.root}: {path.name} is damaged ({size:,} bytes; the manifest "
                f"says {shard.get('sequences')} sequences, {4 * shard.get('sequences', 0):,} "
                "bytes)"
            )
        lens = np.fromfile(path, dtype=np.uint32)
        if len(lens) and (lens.min() == 0 or lens.max() > self.manifest.get("max_length", 1 << 20)):
            raise DistilkitError(
                f"dataset {self.root}: {path.name} is damaged (sequence lengths "
                f"{int(lens.min())}..{int(lens.max())}, expected 1..{self.manifest.get('max_length')})"
            )
        return lens

    @property
    def longest(self) -> int:
        """The longest sequence of the split, in tokens (0 when empty)."""
        return int(self.lengths.max()) if len(self.lengths) else 0

    def check_ids(self, vocab_size: int) -> None:
        """Every token id must index the model's embedding table; a damaged shard (or one
        tokenised with a larger vocabulary) otherwise crashes the run hours in with an index
        error. One pass over the shards, in chunks (memory-mapped: about a second per GB)."""
        if self._dtype == np.uint16 and vocab_size >= 65536:
            return
        for name, ids in zip(self._names, self._maps):
            for start in range(0, len(ids), 1 << 24):
                chunk = np.asarray(ids[start : start + (1 << 24)])
                top = int(chunk.max()) if len(chunk) else 0
                if top >= vocab_size:
                    where = start + int(np.argmax(chunk >= vocab_size))
                    raise DistilkitError(
                        f"dataset {self.root}: {name} holds token id {top} (first bad one at "
                        f"token {where:,}), outside the model's vocabulary of {vocab_size}; the "
                        "shard is damaged or was tokenised with another tokenizer"
                    )

    def token_counts(self) -> np.ndarray:
        path = self.root / "token_counts.npy"
        if not path.is_file():
            raise DistilkitError(f"dataset {self.root}: token_counts.npy is missing")
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise DistilkitError(f"dataset {self.root}: token_counts.npy is not a .npy file")
        try:
            counts = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DistilkitError(
                f"dataset {self.root}: token_counts.npy is unreadable ({exc})"
            ) from exc
        if counts.shape != (self.vocab_size,) or not np.issubdtype(counts.dtype, np.integer):
            raise DistilkitError(
                f"dataset {self.root}: token_counts.npy is damaged (shape {counts.shape}, dtype "
                f"{counts.dtype}; expected ({self.vocab_size},) integers)"
            )
        if (counts < 0).any():
            raise DistilkitError(f"dataset {self.root}: token_counts.npy holds negative counts")
        return counts


_MANIFEST_KEYS = ("format", "vocab_size", "special_ids", "dtype", "splits")


def _read_manifest(root: Path) -> dict:
    """``manifest.json``, or one line saying what is wrong with it."""
    path = root / "manifest.json"
    if not path.is_file():
        raise DistilkitError(f"{root} is not a prepared dataset (no manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DistilkitError(
            f"dataset {root}: manifest.json is corrupt ({exc}); run `distilkit prepare` again"
        ) from exc
    if not isinstance(manifest, dict):
        raise DistilkitError(f"dataset {root}: manifest.json is not a JSON object")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise DistilkitError(
            f"dataset {root}: manifest.json lacks {', '.join(missing)}; run `distilkit prepare` "
            "again"
        )
    if manifest["format"] != "distilkit-tokens-v1":
        raise DistilkitError(f"dataset {root}: unknown format {manifest['format']!r}")
    try:
        np.dtype(manifest["dtype"])
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                str(shard["name"])
    except (TypeError, KeyError, AttributeError) as exc:
        raise DistilkitError(f"dataset {root}: manifest.json is damaged ({exc!r})") from exc
    return manifest


def dataset_fingerprint(root: str | Path) -> str:
    """Identity of a prepared dataset: its manifest (without timings) and the sequence lengths
    and token counts. Another corpus, tokenizer or preparation setting changes it; moving or
    copying the folder does not. Cheap: the token shards themselves are not read."""
    root = Path(root)
    manifest = {
        k: v for k, v in _read_manifest(root).items() if k not in ("seconds", "mb_per_second")
    }
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = root / f"{shard['name']}.len"
            if path.is_file():
                h.update(path.read_bytes())
    counts = root / "token_counts.npy"
    if counts.is_file():
        h.update(counts.read_bytes())
    return h.hexdigest()[:16]
