"""The report of ``distilkit ablate``: Table 4 numbers, goals, markdown, plots.

Pure functions of the per-model rows (``build_report``, ``render_markdown``), tested with plain
numbers, and the files written from them (``write_report``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def build_report(
    rows: list[dict[str, Any]],
    tasks: list[str],
    pending: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Macro score, retention and Δ against (i) from per-model rows (first row: the teacher).

    Each row needs ``key`` and ``scores`` ({task: score as a fraction}); other fields are
    carried along. Macro = mean of the fine-tuned task scores (the paper's GLUE score).
    ``pending``: models not finished yet (a report written while the study runs), each with
    ``key``, ``label``, ``title`` and ``progress`` ({task: [score or None per seed],
    "stsb-zeroshot": score or None}); they get no row, and a goal that needs them is left
    out, except the zero-shot goal of (E), which needs only (E)'s zero-shot score."""
    from distilkit.compare import retention

    rows = [dict(r) for r in rows]
    for r in rows:
        r["macro"] = sum(r["scores"][t] for t in tasks) / len(tasks)
        r["macro_by_seed"] = _macro_by_seed(r, tasks)
    teacher = rows[0]
    ref = next((r for r in rows if r["key"] == "i"), None)
    for r in rows:
        r["retention"] = retention(r["macro"], teacher["macro"])
        r["delta_vs_i"] = None if ref is None or r is teacher else 100 * (r["macro"] - ref["macro"])
        z, zt = r.get("zeroshot"), teacher.get("zeroshot")
        r["zeroshot_retention"] = None if z is None or zt is None else retention(z, zt)
    pending = pending or []
    names = {r["key"]: _name(r) for r in [*rows, *pending]}
    zeroshot = {r["key"]: r.get("zeroshot") for r in rows} | {
        p["key"]: p.get("progress", {}).get("stsb-zeroshot") for p in pending
    }
    return {
        "tasks": tasks,
        "rows": rows,
        "pending": pending,
        "names": names,
        "goals": _goals(rows, zeroshot),
        "gates": sanity_gates(rows, tasks),
    }


def _name(row: dict[str, Any]) -> str:
    title = row.get("title", row["key"])
    return title if row["key"] == "teacher" else f"({row['key']}) {title}"


def sanity_gates(rows: list[dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    """Checks that tell a broken evaluation from a weak model, per row (as ``compare`` does):
    fine-tuned STS-B >= the same model's zero-shot STS-B; CoLA MCC > 0 for every model that
    starts from teacher weights; the teacher's zero-shot STS-B near its public level."""
    from distilkit.compare import PUBLIC_LEVELS, PUBLIC_TOLERANCE

    gates = []
    for r in rows:
        name = _name(r)
        zs = r.get("zeroshot_spearman")
        ft = r.get("metrics", {}).get("stsb", {}).get("spearman")
        if "stsb" in tasks and zs is not None and ft is not None:
            gates.append(
                {
                    "model": name,
                    "gate": "fine-tuned STS-B >= zero-shot STS-B",
                    "passed": ft >= zs,
                    "detail": f"Spearman {100 * ft:.1f} fine-tuned vs {100 * zs:.1f} zero-shot",
                }
            )
        if "cola" in tasks and r.get("init") != "random":
            mcc = r["scores"]["cola"]
            gates.append(
                {
                    "model": name,
                    "gate": "CoLA MCC > 0",
                    "passed": mcc > 0,
                    "detail": f"MCC {100 * mcc:.1f}",
                }
            )
    teacher = rows[0]
    ref = PUBLIC_LEVELS["minilm"]
    if teacher.get("public") == "minilm" and teacher.get("zeroshot") is not None:
        ours, theirs = 100 * teacher["zeroshot"], ref["scores"]["stsb-zeroshot"]
        gates.append(
            {
                "model": _name(teacher),
                "gate": "teacher STS-B zero-shot near its public level",
                "passed": ours >= theirs - PUBLIC_TOLERANCE,
                "detail": f"{ours:.1f} (dev) vs {theirs:.1f} ({ref['source']})",
            }
        )
    return gates


def _macro_by_seed(row: dict[str, Any], tasks: list[str]) -> list[float] | None:
    """The Score of each seed index (seed k of every task), when every task has the same
    seeds: its spread shows how much of a Δ the fine-tuning noise alone can make."""
    values = [row.get("spread", {}).get(t, {}).get("values") for t in tasks]
    if not all(values) or len({len(v) for v in values}) != 1:
        return None
    return [sum(v[k] for v in values) / len(tasks) for k in range(len(values[0]))]


def _goals(
    rows: list[dict[str, Any]], zeroshot: dict[str, float | None] | None = None
) -> dict[str, Any]:
    """The issue's goals, checked against the numbers (never tuned towards them).
    ``zeroshot``: every model's zero-shot STS-B, finished rows or not."""
    by = {r["key"]: r for r in rows}
    zs = {r["key"]: r.get("zeroshot") for r in rows} | (zeroshot or {})
    goals: dict[str, Any] = {}
    if "i" in by:
        ret = by["i"]["retention"]
        goals["retention_i"] = ret
        goals["retention_met"] = ret is not None and ret >= 97.0
        goals["retention_98"] = ret is not None and ret >= 98.0
    if "i" in by and "vi" in by:
        margin = 100 * (by["i"]["macro"] - by["vi"]["macro"])
        goals["i_minus_vi"] = margin
        # "Clearly": more than one Score point, and (when every seed's Score is known) every
        # seed of (i) above every seed of (vi), so that fine-tuning noise cannot explain it.
        si, svi = by["i"].get("macro_by_seed"), by["vi"].get("macro_by_seed")
        separated = None if not (si and svi) else min(si) > max(svi)
        goals["seed_ranges"] = (
            None
            if separated is None
            else [
                [100 * min(si), 100 * max(si)],
                [100 * min(svi), 100 * max(svi)],
            ]
        )
        goals["beats_vi"] = margin > 1.0 and separated is not False
    # The embedding track: the sentence-embedding student against layer dropping and the
    # teacher, zero-shot (what a sentence encoder is for) and fine-tuned.
    e0, vi0, t0 = zs.get("E"), zs.get("vi"), zs.get(rows[0]["key"]) if rows else None
    if None not in (e0, vi0, t0):
        goals["E_zeroshot"] = [100 * e0, 100 * vi0, 100 * t0]
        goals["E_zeroshot_met"] = e0 >= 0.98 * t0 and e0 > vi0
    if "E" in by and "vi" in by:
        e, vi = by["E"], by["vi"]
        goals["E_minus_vi"] = 100 * (e["macro"] - vi["macro"])
        se, svi = e.get("macro_by_seed"), vi.get("macro_by_seed")
        goals["E_separated"] = None if not (se and svi) else min(se) > max(svi)
    ablated = [k for k in ("ii", "iii", "iv", "v") if k in by and by[k]["delta_vs_i"] is not None]
    if len(ablated) == 4:
        order = sorted(ablated, key=lambda k: by[k]["delta_vs_i"])  # most harmful first
        goals["order"] = order
        goals["paper_order"] = ["v", "ii", "iii", "iv"]
        goals["order_met"] = set(order[:2]) == {"v", "ii"} and order[-1] == "iv"
        goals["order_exact"] = order == goals["paper_order"]
    return goals


def _f(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def render_markdown(report: dict[str, Any], figures: str) -> str:
    """The report page; ``figures`` is the folder of the PNGs relative to the page."""
    has_speed = any(r.get("latency_ms") is not None for r in report["rows"])
    pending = report.get("pending") or []
    parts = [
        TITLE,
        "",
        *_pending_lines(report["tasks"], pending, len(report["rows"])),
        *_intro(report),
        *_settings_lines(report.get("settings")),
        "## Table 4 on this teacher",
        "",
        *_table4(report, has_speed),
        "## Goals",
        "",
        *_goal_lines(report.get("goals", {}), report.get("names", {})),
        "",
        "## Sanity gates",
        "",
        *_gate_lines(report.get("gates", [])),
        "",
        "## Distillation runs (one budget for all)",
        "",
        *_distill_table([*report["rows"], *pending]),
        "",
        f"![loss curves]({figures}/curves.png)",
        "",
        f"![scores]({figures}/scores.png)",
        "",
        f"![change against (i), measured and in the paper]({figures}/delta.png)",
        "",
        "## Spread over fine-tuning seeds",
        "",
        "Median [min, max] over seeds, ×100.",
        "",
        *_spread_table(report["rows"], report["tasks"]),
        "",
    ]
    if has_speed:
        parts += [
            "## Speed",
            "",
            "From `distilkit bench` (every student has the same architecture, so their "
            f"differences are measurement noise). Full table: [bench.md]({figures}/bench.md).",
            "",
            f"![speed]({figures}/speed.png)",
            "",
        ]
    stages = dict(report.get("stage_seconds", {}))
    names = {
        "total": "**sum of the sub-runs**",
        "span": "**elapsed**, first start to last finish (workers overlap)",
    }
    parts += [
        "## Compute time",
        "",
        "Wall time of the recorded sub-runs (reused ones included).",
        "",
        "| stage | wall time |",
        "|---|---|",
        *(f"| {names.get(k, k)} | {_dur(v)} |" for k, v in stages.items()),
        "",
    ]
    return "\n".join(parts)


def _pending_lines(tasks: list[str], pending: list[dict[str, Any]], n_rows: int) -> list[str]:
    """The banner of a partial report: which models are not finished, and how far each is."""
    if not pending:
        return []
    from distilkit.tasks import get_task

    head = ["model", "distilled", *(get_task(t).title for t in tasks), "STS-B 0-shot"]
    lines = [
        f"> **Partial report: {n_rows} of {n_rows + len(pending)} models are finished.** The "
        "study is still running or spans sessions (`distilkit ablate --report-only` wrote this "
        "page from the sub-runs finished so far). Unfinished models have no row in Table 4, "
        "and no goal that needs them is checked. Their finished seeds so far (×100):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for p in pending:
        progress = p.get("progress") or {}
        distilled = "yes" if p.get("distilled") else "not yet" if p.get("needs_distill") else "—"
        cells = [f"({p['key']}) {p['title']}", distilled]
        for t in tasks:
            values = progress.get(t)
            if not values:
                cells.append("—")
                continue
            done = [100 * v for v in values if v is not None]
            cells.append(
                f"{len(done)}/{len(values)} seeds"
                + (": " + ", ".join(f"{v:.1f}" for v in done) if done else "")
            )
        zs = progress.get("stsb-zeroshot")
        cells.append("—" if zs is None else f"{100 * zs:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _settings_lines(settings: dict[str, Any] | None) -> list[str]:
    """The budget in words, from the size's settings (every number is in the size's YAML)."""
    if not settings:
        return []
    d, ev, data = settings["distill"], settings["evaluate"], settings["data"]
    rows = d["batch_size"] * d["grad_accumulation"]
    task_extra = "; ".join(
        f"{task}: {', '.join(items)}" for task, items in ev.get("task_overrides", {}).items()
    )
    workers = settings.get("workers", 1)
    return [
        "## Settings",
        "",
        f"- Students: {settings['student_layers']} layers, the teacher's width.",
        f"- Distillation, the same for (i)–(v): {d['steps']} optimizer steps of {rows} "
        f"sequences of ≤ {data['max_length']} tokens, lr {d['lr']:g} ({d['warmup_ratio']:g} "
        f"warm-up), α_ce / α_mlm / α_cos = {d['alpha_ce']:g} / {d['alpha_mlm']:g} / "
        f"{d['alpha_cos']:g} (the removed one set to 0), T = {d['temperature']:g}, seed "
        f"{d['seed']}: every student sees the same batches and masks.",
        f"- Fine-tuning, the same for every model: `configs/finetune.yaml` plus "
        f"`{' '.join(ev['overrides']) or '(nothing)'}`"
        + (f"; per task `{task_extra}`" if task_extra else "")
        + f"; {ev['seeds']} seeds, median reported.",
        f"- Ran as {workers} worker process(es) × {settings.get('threads') or 'default'} "
        "torch thread(s).",
        "- Method, limits and discussion: `docs/ablation.md`.",
        "",
    ]


def _intro(report: dict[str, Any]) -> list[str]:
    env = report.get("environment", {})
    machine = (
        f"{env.get('cpu', '?')}, {env.get('cpus_usable', '?')} usable CPUs"
        + (f", GPU {env['gpu']}" if env.get("gpu") else "")
        + f"; torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
        f"Python {env.get('python', '?')}"
    )
    ta = report.get("teacher_adapt", {})
    held = ta.get("held_out", {})
    teacher = f"Teacher: `{report.get('teacher_source', '?')}`."
    if ta:
        how = "head only, encoder frozen" if ta.get("head_only") else "whole model"
        teacher = (
            f"Teacher: `{report.get('teacher_source', '?')}`, given a masked-LM head in "
            f"{ta.get('steps')} steps ({how}): held-out MLM loss "
            f"**{_f(held.get('mlm_loss'), '.3f')}**, accuracy "
            f"**{_f(held.get('mlm_accuracy'), '.3f')}** on masked positions."
        )
    data = report.get("data", {})
    if data:
        teacher += (
            f" Distillation data: {data['train']['sequences']:,} training sequences "
            f"({data['train']['tokens']:,} tokens), {data['validation']['sequences']:,} held out."
        )
    return [
        f"Generated by `distilkit ablate` (size `{report.get('size', '?')}`) on "
        f"{env.get('date', '?')}.",
        "",
        f"- Command: `{env.get('command') or 'distilkit ablate'}`",
        f"- Machine: {machine}",
        f"- Sub-runs in `{report.get('out', '?')}`; settings: `configs/ablation.yaml`, "
        "section of this size.",
        "",
        teacher,
        "",
    ]


def _table4(report: dict[str, Any], has_speed: bool) -> list[str]:
    """The main table and its notes."""
    from distilkit.tasks import get_task

    tasks, rows = report["tasks"], report["rows"]
    titles = [get_task(t).title for t in tasks]
    has_zs = any(r.get("zeroshot") is not None for r in rows)
    head = ["", "model", "params", *titles, "Score", "retention", "Δ vs (i)", "paper Δ"]
    head += ["STS-B 0-shot"] if has_zs else []
    head += ["ms / pair", "speed-up"] if has_speed else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"({r['key']})" if r["key"] != "teacher" else "",
            r["title"],
            _f(r["parameters"] and r["parameters"] / 1e6, ".1f", "M"),
            *(f"{100 * r['scores'][t]:.1f}" for t in tasks),
            f"**{100 * r['macro']:.1f}**",
            _f(r["retention"], ".1f", "%"),
            _signed(r["delta_vs_i"]),
            _signed(r["paper_delta"]),
        ]
        if has_zs:
            cells.append(_f(r.get("zeroshot") and 100 * r["zeroshot"]))
        if has_speed:
            cells += [_f(r.get("latency_ms"), ".2f"), _f(r.get("speedup"), ".2f", "×")]
        lines.append("| " + " | ".join(cells) + " |")

    seeds = "/".join(map(str, sorted({n for r in rows for n in r["seeds"].values()})))
    notes = [
        f"Scores ×100 on the GLUE dev sets, medians over {seeds} fine-tuning seed(s). Score = "
        f"mean of {', '.join(titles)} (CoLA Matthews corr., SST-2 accuracy, STS-B mean of "
        "Pearson and Spearman), the paper's GLUE macro score restricted to these tasks. "
        "Retention = Score / teacher's Score. Δ vs (i) in Score points; paper Δ: its Table 4 "
        "(BERT-base teacher, 9 GLUE tasks). STS-B 0-shot: Spearman of cosine similarities of "
        "mean-pooled embeddings, no training."
    ]
    for t, title in zip(tasks, titles):
        n, avail = rows[0]["n_train"][t]
        if n and avail and n < avail:
            notes.append(
                f"{title} is fine-tuned on a random subset of {n:,} of its {avail:,} training "
                "examples (the same subset for every model and seed)."
            )
    if has_speed:
        notes.append(
            "Speed from `distilkit bench`: median ms per STS-B dev pair at batch size 1, "
            "encoder only, and speed-up over the teacher (details below)."
        )
    return [*lines, "", *(n + "\n" for n in notes)]


def _goal_lines(goals: dict[str, Any], names: dict[str, str]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    lines = []
    if "retention_i" in goals:
        lines.append(
            f"- (i) keeps **{_f(goals['retention_i'], '.1f', '%')}** of the teacher's Score "
            f"(goal ≥ 97%, reaching for 98%): {verdict(goals['retention_met'])}"
            + ("; 98% reached." if goals.get("retention_98") else "; 98% not reached.")
        )
    if "i_minus_vi" in goals:
        ranges = goals.get("seed_ranges")
        seeds = (
            ""
            if not ranges
            else f"; Score of the seeds: (i) [{ranges[0][0]:.1f}, {ranges[0][1]:.1f}], (vi) "
            f"[{ranges[1][0]:.1f}, {ranges[1][1]:.1f}]"
        )
        lines.append(
            f"- (i) − (vi) = **{goals['i_minus_vi']:+.2f}** points{seeds} (goal: clearly better, "
            "taken as > 1 point with every seed of (i) above every seed of (vi)): "
            f"{verdict(goals['beats_vi'])}."
        )
    if "E_zeroshot" in goals:
        e, vi, t = goals["E_zeroshot"]
        lines.append(
            f"- Embedding track: (E) zero-shot STS-B **{e:.2f}** = {100 * e / t:.1f}% of the "
            f"teacher's {t:.2f}, layer dropping (vi) {vi:.2f} (goal ≥ 98% and above (vi)): "
            f"{verdict(goals['E_zeroshot_met'])}."
        )
    if "E_minus_vi" in goals:
        sep = goals.get("E_separated")
        seeds = (
            ""
            if sep is None
            else ("; every seed above every seed of (vi)" if sep else "; seed ranges overlap")
        )
        lines.append(
            f"- Embedding track, fine-tuned: (E) − (vi) = **{goals['E_minus_vi']:+.2f}** "
            f"Score points{seeds}."
        )
    if "order" in goals:
        exact = " (same full order as the paper)" if goals["order_exact"] else ""
        lines.append(
            f"- Harm, most first: {' > '.join(names[k] for k in goals['order'])}. Paper: "
            f"{' > '.join(names[k] for k in goals['paper_order'])}. Goal (random init and no "
            f"L_ce hurt most, no L_mlm least): {verdict(goals['order_met'])}{exact}."
        )
    return lines or ["- not enough finished models to check a goal"]


def _gate_lines(gates: list[dict[str, Any]]) -> list[str]:
    if not gates:
        return ["- no gate could be checked"]
    from distilkit.compare import render_gates

    return render_gates(gates).splitlines()


def _distill_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per distilled student: the paper track's held-out MLM figures, the embedding
    track's held-out sentence-embedding figures (each n/a for the other track)."""
    lines = [
        "| | student | steps | tokens | wall time | held-out MLM loss | MLM acc. | "
        "agreement with teacher | cosine loss | embedding cosine | neighbour agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["distilled"]:
            continue
        d = r.get("distill") or {}
        h = d.get("held_out", {})
        lines.append(
            f"| ({r['key']}) | {r['title']} | {d.get('steps', 'n/a')} | "
            f"{_f(d.get('tokens'), ',.0f')} | {_dur(d.get('train_seconds'))} | "
            f"{_f(h.get('student_mlm_loss'), '.3f')} | {_f(h.get('student_accuracy'), '.3f')} | "
            f"{_f(h.get('agreement'), '.3f')} | {_f(h.get('cosine_loss'), '.3f')} | "
            f"{_f(h.get('embedding_cosine'), '.3f')} | {_f(h.get('neighbour_agreement'), '.3f')} |"
        )
    return lines


def _spread_table(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    from distilkit.tasks import get_task

    by_seed = all(r.get("macro_by_seed") for r in rows)
    lines = [
        "| model | "
        + " | ".join(get_task(t).title for t in tasks)
        + (" | Score of each seed |" if by_seed else " |"),
        "|---|" + "---|" * (len(tasks) + by_seed),
    ]
    for r in rows:
        cells = [
            f"{100 * r['scores'][t]:.1f} [{100 * r['spread'][t]['min']:.1f}, "
            f"{100 * r['spread'][t]['max']:.1f}]"
            for t in tasks
        ]
        if by_seed:
            cells.append(", ".join(f"{100 * x:.1f}" for x in r["macro_by_seed"]))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines


def render_scores(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: Score and each task, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distilkit.tasks import get_task

    tasks = report["tasks"]
    rows = report["rows"]
    groups = ["Score"] + [get_task(t).title for t in tasks]
    with_zs = any(r.get("zeroshot") is not None for r in rows)
    if with_zs:
        groups.append("STS-B 0-shot")
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(groups) + 3), 4.4))
    cmap = plt.get_cmap("tab10")
    for j, r in enumerate(rows):
        values = [100 * r["macro"]] + [100 * r["scores"][t] for t in tasks]
        if with_zs:
            values.append(100 * (r.get("zeroshot") or 0.0))
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
        name = r["label"] if r["key"] == "teacher" else f"({r['key']}) {r['title']}"
        ax.bar(xs, values, width, label=name, color=cmap(j % 10))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel("dev score (×100)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title("Teacher and students (median over seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_curves(runs: dict[str, Path], path: Path) -> None:
    """Loss parts and held-out metrics of every distillation, against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train", "loss_ce", "L_ce (train)"),
        ("train", "loss_mlm", "L_mlm (train)"),
        ("train", "loss_cos", "L_cos (train)"),
        ("eval", "student_mlm_loss", "held-out student MLM loss"),
        ("eval", "agreement", "held-out top-1 agreement with teacher"),
        ("eval", "cosine_loss", "held-out cosine loss"),
        ("train", "loss_emb", "L_emb (train, embedding track)"),
        ("train", "loss_tok", "L_tok (train, embedding track)"),
        ("train", "loss_layers", "L_layers (train, embedding track)"),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(14, 10))
    cmap = plt.get_cmap("tab10")
    for j, (slug, folder) in enumerate(runs.items()):
        f = folder / "metrics.jsonl"
        if not f.is_file():
            continue
        records = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        for ax, (kind, key, title) in zip(axes.flat, panels):
            pts = [(r["step"], r[key]) for r in records if r["kind"] == kind and key in r]
            if pts:
                style = "-" if kind == "train" else "o-"
                ax.plot(*zip(*pts), style, label=slug, color=cmap(j % 10), markersize=3)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("optimizer step")
    # One legend in variant order (a panel lacks the variants that do not train its loss).
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=cmap(j % 10)) for j in range(len(runs))]
    fig.legend(handles, list(runs), loc="lower center", ncol=max(1, len(runs)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_delta(report: dict[str, Any], path: Path) -> None:
    """Table 4 as bars: change of the Score against (i), measured here and in the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["key"] not in ("teacher", "i")]
    names = [f"({r['key']}) {r['title']}" for r in rows]
    ys = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    measured = [r["delta_vs_i"] or 0.0 for r in rows]
    ax.barh([y - 0.2 for y in ys], measured, 0.4, label="measured here", color="#4C72B0")
    paper = [(y, r["paper_delta"]) for y, r in zip(ys, rows) if r["paper_delta"] is not None]
    if paper:
        ax.barh(
            [y + 0.2 for y, _ in paper],
            [d for _, d in paper],
            0.4,
            label="paper (Table 4)",
            color="#C44E52",
        )
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("Δ Score against (i), points")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TITLE = "# Ablation: what each part of the DistilBERT recipe is worth (paper Table 4)"
_FIGURE_FILES = ("ablation.json", "scores.png", "curves.png", "delta.png", "speed.png", "bench.md")


def check_report_target(md: Path) -> None:
    """Refuse, before any work, a report path that would overwrite what ``write_report`` did
    not write: a file without the report's title, or a figure folder beside it that holds
    other files. A study runs for hours; a careless ``--report README.md`` must not end it
    by replacing the user's file."""
    from distilkit.errors import DistilkitError

    if md.suffix != ".md":
        raise DistilkitError(f"--report {md}: give a markdown path ending in .md")
    if md.exists():
        if not md.is_file():
            raise DistilkitError(f"--report {md} exists and is not a file")
        with md.open(encoding="utf-8", errors="replace") as f:
            first = f.readline().rstrip("\n")
        if first != TITLE:
            raise DistilkitError(
                f"--report {md} exists and was not written by distilkit ablate; give another path"
            )
    figures = md.with_suffix("")
    if figures.exists():
        if not figures.is_dir():
            raise DistilkitError(
                f"{figures} (the report's figure folder) exists and is not a folder"
            )
        ours = set(_FIGURE_FILES) | {"subruns"}
        others = sorted(p.name for p in figures.iterdir() if p.name not in ours)
        if others and not (figures / "ablation.json").is_file():
            raise DistilkitError(
                f"{figures} (the report's figure folder) holds files distilkit did not write "
                f"({', '.join(others[:3])}); give another --report"
            )


def write_report(
    report: dict[str, Any], md: Path, runs: dict[str, Path], bench_dir: Path
) -> dict[str, Path]:
    """``md`` plus, in the folder ``md``'s stem beside it: ablation.json, scores.png,
    curves.png, delta.png and (when benched) speed.png and bench.md."""
    fig_dir = md.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": md,
        "json": fig_dir / "ablation.json",
        "scores": fig_dir / "scores.png",
        "curves": fig_dir / "curves.png",
        "delta": fig_dir / "delta.png",
    }
    render_scores(report, files["scores"])
    render_delta(report, files["delta"])
    render_curves(runs, files["curves"])
    if (bench_dir / "bench.png").is_file():
        files["speed"] = fig_dir / "speed.png"
        shutil.copyfile(bench_dir / "bench.png", files["speed"])
        shutil.copyfile(bench_dir / "bench.md", fig_dir / "bench.md")
        files["bench"] = fig_dir / "bench.md"
    files["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md.write_text(render_markdown(report, fig_dir.name), encoding="utf-8")
    log.info("report written to %s", md)
    return files
