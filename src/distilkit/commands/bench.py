"""distilkit bench: size and speed of PyTorch and ONNX models on the paper's Table 3 protocol."""

from __future__ import annotations

import logging

from distilkit.commands._common import add_config_arguments, config_from_args, print_config
from distilkit.plan import log_plan

NAME = "bench"
HELP = "compare size, latency (STS-B dev, batch 1), throughput and memory of models"
CONFIG = "distilkit.bench:BenchConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "models": "models",
    "out": "out",
    "data_dir": "data_dir",
    "threads": "threads",
    "repeats": "repeats",
    "max_examples": "max_examples",
    "device": "device",
    "overwrite": "overwrite",
}


def add_arguments(p) -> None:
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="[LABEL=]MODEL",
        help="PyTorch folder, 'minilm', .onnx file or export folder; repeat for "
        "each row (the first is the baseline of every ratio)",
    )
    p.add_argument("--out", help="folder for bench.json, bench.md and bench.png")
    p.add_argument("--data-dir", help="GLUE root or STS-B folder (the latency pass)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime")
    p.add_argument("--repeats", type=int, help="full latency passes per model")
    p.add_argument("--max-examples", type=int, help="first N STS-B dev pairs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the models run")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output of distilkit in --out (never a folder holding an input)",
    )
    add_config_arguments(p, CONFIG, FLAGS, example="isolate=false throughput_iters=20")


def run(args) -> int:
    from distilkit.bench import BenchConfig, bench

    cfg = config_from_args(BenchConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    import torch

    device = cfg.device
    if device == "auto":
        device = ("cuda" if torch.cuda.is_available() else "cpu") + " (auto)"
    log_plan(
        logging.getLogger("distilkit.bench"),
        "bench",
        {
            "models": ", ".join(cfg.models),
            "latency": f"STS-B dev pairs of {cfg.data_dir}"
            + (f" (the first {cfg.max_examples:,})" if cfg.max_examples else "")
            + f" at batch 1, {cfg.repeats} passes after {cfg.warmup} warm-up pairs",
            "throughput": f"batch {cfg.throughput_batch} x {cfg.throughput_seq} tokens, "
            f"{cfg.throughput_iters} passes",
            "device": f"{device}, threads {cfg.threads or 'default'}"
            + (", one process per model" if cfg.isolate else ""),
            "output": cfg.out,
        },
    )
    r = bench(cfg)
    print(r.files["markdown"].read_text(encoding="utf-8"), end="")
    print("results: " + ", ".join(str(p) for p in r.files.values()))
    return 0
