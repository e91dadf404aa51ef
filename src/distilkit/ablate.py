"""``distilkit ablate``: the paper's Table 4 on a real teacher, in one resumable command.

The chain: prepare the corpus -> give the teacher a masked-LM head (``adapt_teacher``) -> build
the students -> distil five of them with one budget -> fine-tune every model on GLUE (median of
seeds) and score STS-B zero-shot -> time them with ``bench`` -> write the report
(``ablate_report``: markdown, JSON, loss curves, bar charts).

The six students (``VARIANTS``) have the same architecture, ``student_layers`` layers:

- (i) triple loss, initialised from teacher layers (the paper's recipe);
- (ii)-(iv) the same without L_ce, L_cos or L_mlm;
- (v) triple loss from freshly initialised weights;
- (vi) no distillation: the teacher-initialised student as it is (layer dropping only).

Resuming: every sub-run (the data, the teacher, each student, each fine-tuning seed, each
zero-shot score, the benchmark) writes its own folder and, beside it, ``<folder>.step.json``
holding the settings it was made with. A rerun skips finished sub-runs, continues interrupted
distillations from their checkpoints, and refuses to mix in a finished result made with other
settings (the table would then compare unlike things).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from distilkit.ablate_sizes import (  # noqa: F401 (the public names of the study)
    REPO_ROOT,
    SIZES,
    VARIANTS,
    AblationSize,
    AblationSizes,
    TeacherSize,
    Variant,
    active_variants,
    load_size,
)
from distilkit.ablate_steps import (  # noqa: F401
    STEP_SUFFIX,
    Pending,
    _has_checkpoint,
    _now,
    _restore_evaluations,
    _Step,
    mirror_folder,
)
from distilkit.ablate_study import _canon, _Study
from distilkit.ablate_workers import run_workers
from distilkit.config import to_dict
from distilkit.errors import DistilkitError
from distilkit.plan import batch_text, log_plan

log = logging.getLogger(__name__)


@dataclass
class AblateConfig:
    """One invocation of the study."""

    size: str = "tiny"
    out: str = ""
    """Folder for every sub-run (default runs/ablation-SIZE)."""
    sizes_file: str = ""
    """The sizes YAML (default configs/ablation.yaml)."""
    overrides: list[str] = field(default_factory=list)
    """KEY=VALUE overrides of the size, e.g. distill.steps=1000."""
    report: str = ""
    """Markdown report path; overrides the size's."""
    command: str = ""
    """The command line, recorded in the report."""
    report_only: bool = False
    """Run nothing: write the report from the sub-runs finished so far (a study still running,
    or one spread over sessions), listing what is not finished yet."""


@dataclass
class AblateResult:
    out_dir: Path
    report_md: Path
    files: dict[str, Path]
    report: dict[str, Any]
    ran: list[str]
    """Sub-runs done by this invocation (the others were reused)."""


def ablate(cfg: AblateConfig) -> AblateResult:
    """Run (or resume) the whole study and write the report; see the module docstring."""
    from distilkit.ablate_report import build_report, check_report_target, write_report

    size = load_size(cfg.size, cfg.sizes_file or None, cfg.overrides)
    out = Path(cfg.out or f"runs/ablation-{cfg.size}")
    report_md = Path(cfg.report or size.report or out / "report" / "ablation.md")
    check_report_target(report_md)
    variants = active_variants(size)
    log_plan(
        log,
        "ablate",
        {
            "size": cfg.size + (f" from {cfg.sizes_file}" if cfg.sizes_file else ""),
            "teacher": size.teacher.name,
            "students": f"{len(variants)} with {size.student_layers} layers: "
            + ", ".join(v.key for v in variants),
            "data": ", ".join(size.data.corpus)
            + (f", first {size.data.max_documents:,} documents" if size.data.max_documents else "")
            + f", max length {size.data.max_length}",
            "distill": f"{size.distill.steps} steps, "
            + batch_text(size.distill.batch_size, size.distill.grad_accumulation)
            + f", precision {size.distill.precision}",
            "evaluate": f"{', '.join(size.evaluate.tasks)}, {size.evaluate.seeds} seed(s)"
            + (", STS-B zero-shot" if size.evaluate.zeroshot else ""),
            "workers": f"{size.workers}, threads {size.threads or 'default'} each",
            "output": out,
            "report": report_md,
        },
    )
    if cfg.report_only:
        # Read only: the study may be running in another process right now.
        if not out.is_dir():
            raise DistilkitError(
                f"no study in {out}: nothing to report (run it without --report-only)"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation_size.json").write_text(
            json.dumps({"size": cfg.size, "settings": to_dict(size)}, indent=2) + "\n"
        )
        restored = _restore_evaluations(out, mirror_folder(size))
        if restored:
            log.info("ablate: %d finished evaluation sub-run(s) restored from the mirror", restored)
    study = _Study(size, out, collect_only=cfg.report_only)
    try:
        data = study.data()
        teacher = study.teacher(data)
        inits = study.inits(teacher)
    except Pending as p:
        raise DistilkitError(f"nothing to report yet: {p.folder} is not finished") from None
    if size.workers > 1 and not cfg.report_only:
        run_workers(study, teacher, data, inits)
    students = study.students(teacher, data, inits)
    models = {"teacher": teacher} | {v.slug: students[v.key] for v in variants if v.key in students}
    evals: dict[str, dict[str, Any]] = {}
    # Models whose distillation or evaluations are not finished (only when collecting).
    pending: list[dict[str, Any]] = [
        {
            "key": v.key,
            "label": v.slug,
            "title": v.label,
            "distilled": False,
            "needs_distill": True,
            "progress": {},
        }
        for v in variants
        if v.key not in students
    ]
    for label, st in models.items():
        try:
            evals[label] = study.evaluate(label, st)
        except Pending as p:
            v = next((v for v in variants if v.slug == label), None)
            pending.append(
                {
                    "key": v.key if v else "teacher",
                    "label": label,
                    "title": v.label if v else "teacher",
                    "distilled": bool(v and v.distill),
                    "needs_distill": bool(v and v.distill),
                    "distill": (st.record or {}).get("summary", {}) if v and v.distill else {},
                    "progress": p.progress,
                }
            )
    if "teacher" not in evals:
        raise DistilkitError(
            "nothing to report yet: the teacher's evaluations are not finished "
            f"({_progress_text(pending[-1]['progress'] if pending else {})})"
        )
    bench_result = study.bench(models) if not pending else None

    rows = []
    for label, st in models.items():
        if label not in evals:
            continue
        v = next((v for v in variants if v.slug == label), None)
        rows.append(_row(label, v, st, evals[label], bench_result, size))
    order = {v.key: i for i, v in enumerate(variants)}
    pending.sort(key=lambda p: order.get(p["key"], -1))
    report = build_report(rows, [_canon(t) for t in size.evaluate.tasks], pending)
    report["size"] = cfg.size
    report["settings"] = to_dict(size)
    report["teacher_adapt"] = (teacher.record or {}).get("summary", {})
    report["teacher_source"] = size.teacher.name
    report["data"] = (data.record or {}).get("summary", {})
    report["environment"] = _environment(cfg.command)
    report["stage_seconds"] = _stage_seconds(study.steps)
    report["ran_now"] = study.ran
    report["out"] = str(out)
    files = write_report(
        report,
        report_md,
        {v.slug: students[v.key].folder for v in variants if v.distill and v.key in students},
        out / "bench",
    )
    return AblateResult(out, report_md, files, report, study.ran)


def _progress_text(progress: dict[str, Any]) -> str:
    """'cola 2/3 seeds, sst2 0/3, ...' for a model's unfinished evaluations."""
    parts = []
    for task, values in progress.items():
        if isinstance(values, list):
            parts.append(f"{task} {sum(v is not None for v in values)}/{len(values)} seeds")
        else:
            parts.append(f"{task} {'done' if values is not None else 'not done'}")
    return ", ".join(parts) or "not started"


def _row(label, v: Variant | None, st: _Step, ev: dict, bench_result, size) -> dict[str, Any]:
    from distilkit.compare import _public_key

    tasks = [_canon(t) for t in size.evaluate.tasks]
    # A head-only adaptation leaves the encoder, and so every score here, as the teacher's own.
    teacher_note = " + MLM head" if size.adapt.steps else ""
    row: dict[str, Any] = {
        "label": label,
        "key": v.key if v else "teacher",
        "title": v.label if v else f"teacher ({size.teacher.name}{teacher_note})",
        "init": v.init if v else None,
        "drop": v.drop if v else None,
        "distilled": bool(v and v.distill),
        "paper_delta": v.paper_delta if v else None,
        "folder": str(st.folder),
        "scores": {t: ev[t]["score"] for t in tasks},
        "metrics": {t: ev[t]["metrics"] for t in tasks},
        "spread": {
            t: {
                k: ev[t]["summary"][ev[t]["main_split"]]["score"][k]
                for k in ("min", "max", "values")
            }
            for t in tasks
        },
        "seeds": {t: len(ev[t]["runs"]) for t in tasks},
        "n_train": {t: [ev[t].get("n_train"), ev[t].get("n_train_available")] for t in tasks},
        "zeroshot": ev["stsb-zeroshot"]["score"] if "stsb-zeroshot" in ev else None,
        "zeroshot_spearman": (
            ev["stsb-zeroshot"]["metrics"]["spearman"] if "stsb-zeroshot" in ev else None
        ),
        "public": _public_key(size.teacher.name) if not v else None,
        "parameters": (ev[tasks[0]].get("parameters") or {}).get("total"),
        "distill": (st.record or {}).get("summary", {}) if v and v.distill else {},
    }
    if bench_result:
        b = next(m for m in bench_result["models"] if m["label"] == label)
        row["parameters"] = b["parameters"]["total"]
        row["latency_ms"] = b["latency"]["per_example_ms_median"]
        row["speedup"] = b["ratios"]["speedup_latency_median"]
        row["throughput"] = b["throughput"]["sequences_per_s"]
    return row


def _stage_seconds(steps: dict[str, _Step]) -> dict[str, float]:
    """Wall seconds per stage, their sum, and the span from the first sub-run's start to the
    last one's finish (shorter than the sum when workers overlap)."""
    out: dict[str, float] = {}
    spans = []
    for name, st in steps.items():
        stage = "evaluate" if "/" in name else name
        out[stage] = out.get(stage, 0.0) + st.seconds
        finished = (st.record or {}).get("finished_at")
        if finished:
            end = datetime.fromisoformat(finished).timestamp()
            spans.append((end - st.seconds, end))
    out["total"] = sum(out.values())
    if spans:
        out["span"] = max(e for _, e in spans) - min(b for b, _ in spans)
    return out


def _environment(command: str) -> dict[str, Any]:
    import transformers

    from distilkit.bench import cpu_name

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": _now(),
        "command": command,
        "cpu": cpu_name(),
        "cpus_usable": usable,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


__all__ = [
    "VARIANTS",
    "AblateConfig",
    "AblateResult",
    "AblationSize",
    "AblationSizes",
    "ablate",
    "active_variants",
]
