"""One-shot GPU throughput benchmark for a lent GPU: bert-base-sized teacher -> 6-layer student.

A random 12-layer/768 BERT teacher (vocabulary 30,522) and its 6-layer DistilBERT student
(``init_student``), on a synthetic corpus packed to 512 tokens (word-level vocabulary with a
Zipf-like profile: no network, no corpus file needed). Variants, each in its own process:

- ``b:fp32``: the reference computation (full-vocabulary logits everywhere), float32;
- ``b:fp16``: the same under fp16 autocast (the reference's apex O1 mode, for an honest
  algorithm-only ratio);
- ``a:bf16``, ``a:fp16``: distilkit's loop; ``+compile`` with ``train.compile``.

Prints tokens/s, peak CUDA memory and the ratios against ``b:fp32``. A time budget (default
420 s, setup included) skips or stops the variants that would not fit, so the whole script
ends in under 8 minutes. ``--dry-run`` runs the same code on the CPU with a tiny model in seconds
(compile variants traced with the ``eager`` backend).

Run with ``bash benchmarks/gpu.sh`` (needs only torch, transformers, accelerate and ``src/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402 (the benchmarks folder is not a package)

GPU_VARIANTS = "b:fp32,b:fp16,a:bf16,a:fp16,a:bf16+compile,a:fp16+compile"
DRY_VARIANTS = "b:fp32,a:fp32,a:bf16,a:fp32+compile"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, seconds")
    ap.add_argument("--work", default="runs/gpu-bench")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps (compilation)")
    ap.add_argument("--variants", default=None)
    ap.add_argument(
        "--budget", type=float, default=420.0, help="seconds for setup and all measurements"
    )
    ap.add_argument("--json", default=None, help="results file (default WORK/gpu_bench.json)")
    args = ap.parse_args(argv)

    start = time.time()
    work = Path(args.work)
    if args.dry_run:
        common = shlex.split(
            "--pair tiny --synthetic-tokens 20000 --max-length 64 --device cpu --threads 1 "
            "--batch-size 4 --steps 2 --warmup 1 --compile-backend eager --in-process"
        )
        variants = args.variants or DRY_VARIANTS
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; use --dry-run to check the script on a CPU")
        common = shlex.split(
            f"--pair bert-base --synthetic-tokens 1500000 --max-length {args.max_length} "
            f"--device cuda --threads 0 --num-workers 2 --batch-size {args.batch_size} "
            f"--steps {args.steps} --warmup {args.warmup}"
        )
        variants = args.variants or GPU_VARIANTS
    out_json = args.json or str(work / "gpu_bench.json")
    result = throughput.main(
        [
            *common,
            *("--work", str(work), "--variants", variants, "--baseline", variants.split(",")[0]),
            *("--repeats", "1", "--budget", str(args.budget), "--json", out_json),
        ]
    )
    print(f"total {time.time() - start:.0f} s; results in {out_json}")
    out_dir = os.environ.get("OUT")
    if out_dir and not args.dry_run:
        Path(out_dir, "gpu_bench.json").write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
