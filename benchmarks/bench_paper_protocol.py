"""The paper's Table 3 protocol on MiniLM: teacher (6 layers) vs half-depth student, fp32 vs int8.

Steps, all written under ``--out``:

1. ``student/``: a 3-layer student from ``init_student`` (teacher layers [0, 3, 5]). Speed and size
   do not depend on whether it has been distilled yet, so the initialised student is measured.
2. ``onnx-teacher/``, ``onnx-student/``: encoder exports, fp32 and int8 (the default recipe:
   per-channel weights), parity-checked. The teacher's own ONNX rows separate the runtime's gain
   from the gain of distillation. ``onnx-student-pt/`` (per-tensor weights, the default before
   issue 13) and ``onnx-student-ffn/`` (FFN output projections kept fp32): the other recipes.
3. ``bench/``: ``distilkit bench`` over the eight models (STS-B dev, batch 1, interleaved passes),
   each row naming the file it timed, with zero-shot STS-B quality next to speed and size.
4. ``sst2/``: the student fine-tuned on an SST-2 training subset (``distilkit finetune``), exported
   as a classifier to ONNX and int8 with the dev-set metric check: PyTorch vs fp32 ONNX vs int8
   on the full SST-2 dev set (872 sentences). Variants of the int8 recipe are measured too.

Run from the repository root::

    nice python benchmarks/bench_paper_protocol.py --data-dir ../shared/data/glue --out runs/bench

Prints the numbers that go into docs/results/bench-minilm.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from distilkit.bench import BenchConfig, bench
from distilkit.errors import DistilkitError
from distilkit.export import FP32_FILE, INT8_FILE, ExportConfig, export

log = logging.getLogger("bench_paper_protocol")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True, help="GLUE root (STS-B and SST-2 inside)")
    ap.add_argument("--out", default="runs/bench-minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-examples", type=int, default=0, help="STS-B pairs (0 = all 1,500)")
    ap.add_argument("--train-examples", type=int, default=8000, help="SST-2 training subset")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-task", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    student = out / "student"
    if not (student / "config.json").is_file():
        from distilkit.student import init_student

        init_student("minilm", student, num_layers=3, overwrite=True)

    summary: dict = {}
    if not args.skip_speed:
        summary["speed"] = speed(args, out, student)
    if not args.skip_task:
        summary["task"] = task(args, out, student)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _export_once(model: str, folder: Path, **kw) -> None:
    if (folder / "export.json").is_file():
        return
    export(ExportConfig(model=model, out=str(folder), overwrite=True, **kw))


def speed(args, out: Path, student: Path) -> dict:
    _export_once("minilm", out / "onnx-teacher", head="encoder", quantize="int8")
    _export_once(str(student), out / "onnx-student", head="encoder", quantize="int8")
    # The other int8 recipes: per-tensor (faster on some CPUs, less accurate) and FFN output
    # kept fp32 (more accurate, larger), to show what each costs and gains.
    _export_once(
        str(student),
        out / "onnx-student-pt",
        head="encoder",
        quantize="int8",
        int8_per_channel=False,
    )
    _export_once(
        str(student),
        out / "onnx-student-ffn",
        head="encoder",
        quantize="int8",
        int8_keep_ffn_output=True,
    )
    cfg = BenchConfig(
        models=[
            "teacher fp32 (PyTorch)=minilm",
            f"student fp32 (PyTorch)={student}",
            f"teacher fp32 (ONNX)={out / 'onnx-teacher' / FP32_FILE}",
            f"student fp32 (ONNX)={out / 'onnx-student' / FP32_FILE}",
            f"teacher int8 (ONNX)={out / 'onnx-teacher' / INT8_FILE}",
            f"student int8 (ONNX)={out / 'onnx-student' / INT8_FILE}",
            f"student int8 per-tensor (ONNX)={out / 'onnx-student-pt' / INT8_FILE}",
            f"student int8 keep-FFN (ONNX)={out / 'onnx-student-ffn' / INT8_FILE}",
        ],
        out=str(out / "bench"),
        data_dir=args.data_dir,
        max_examples=args.max_examples,
        repeats=args.repeats,
        threads=args.threads,
        device="cpu",
    )
    t0 = time.time()
    r = bench(cfg)
    print((out / "bench" / "bench.md").read_text())
    rows = {m["label"]: m for m in r.models}
    t_fp32 = rows["teacher fp32 (PyTorch)"]
    s_fp32 = rows["student fp32 (PyTorch)"]
    s_int8 = rows["student int8 (ONNX)"]
    return {
        "wall_s": time.time() - t0,
        "student_vs_teacher_pytorch_speedup": s_fp32["ratios"]["speedup_latency"],
        "student_int8_vs_teacher_fp32_speedup": s_int8["ratios"]["speedup_latency"],
        "student_vs_teacher_pytorch_speedup_median": s_fp32["ratios"]["speedup_latency_median"],
        "student_int8_vs_teacher_fp32_speedup_median": s_int8["ratios"]["speedup_latency_median"],
        "student_int8_size_vs_teacher": s_int8["ratios"]["size_ratio"],
        "stsb_zeroshot_spearman": {
            label: (row["quality"] or {}).get("spearman") for label, row in rows.items()
        },
        "teacher_pass_s": t_fp32["latency"]["total_s"],
        "student_pass_s": s_fp32["latency"]["total_s"],
        "student_int8_pass_s": s_int8["latency"]["total_s"],
    }


def task(args, out: Path, student: Path) -> dict:
    from distilkit.finetune import FinetuneConfig, finetune

    ft_dir = out / "sst2"
    model_dir = ft_dir / "seed-42" / "model"
    if not (model_dir / "config.json").is_file():
        t0 = time.time()
        res = finetune(
            FinetuneConfig(
                model=str(student),
                task="sst2",
                data_dir=args.data_dir,
                out=str(ft_dir),
                max_train_examples=args.train_examples,
                epochs=args.epochs,
                max_length=64,
                batch_size=32,
                lr=5e-5,
                seed=42,
                save_model=True,
                threads=2,
            )
        )
        log.info("fine-tuned in %.0fs: SST-2 dev %.4f", time.time() - t0, res["score"])

    results = {}
    # The shipped default (per-channel) first, then the other recipes, each checked on the full
    # dev set.
    variants = {
        "int8 (default)": {},
        "int8 per-tensor": {"int8_per_channel": False},
        "int8 keep FFN output fp32": {"int8_keep_ffn_output": True},
    }
    for name, extra in variants.items():
        folder = out / ("onnx-sst2-" + name.split("(")[0].strip().replace(" ", "-"))
        try:
            # A generous drop limit here: this script reports the drop; the default (1 point)
            # is what `distilkit export` enforces.
            _export_once(
                str(model_dir),
                folder,
                quantize="int8",
                task="sst2",
                data_dir=args.data_dir,
                max_metric_drop=100.0,
                **extra,
            )
        except DistilkitError as exc:
            results[name] = {"error": str(exc)}
            continue
        manifest = json.loads((folder / "export.json").read_text())
        m = manifest["metric"]
        results[name] = {
            "pytorch": m["scores"]["pytorch"]["score"],
            "onnx_fp32": m["scores"]["model.onnx"]["score"],
            "onnx_int8": m["scores"][INT8_FILE]["score"],
            "drop_points_int8": m["drop_points"][INT8_FILE],
            "int8_prediction_agreement": (m.get("prediction_agreement") or {}).get(INT8_FILE),
            "int8_bytes": manifest["files"][INT8_FILE]["bytes"],
            "parity_int8_relative_max_diff": manifest["parity"]["int8"]["relative_max_diff"],
            "folder": str(folder),
        }
        log.info("%s: %s", name, results[name])
    return results


if __name__ == "__main__":  # bench workers are spawned processes: keep the guard
    main()
