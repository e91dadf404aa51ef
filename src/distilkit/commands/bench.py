"""distilkit bench: size and speed of PyTorch and ONNX models on the paper's Table 3 protocol."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, config_from_args

NAME = "bench"
HELP = "compare size, latency (STS-B dev, batch 1), throughput and memory of models"


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
    p.add_argument("--max-examples", type=int, help="first N STS-B dev pairs (default all)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    add_config_arguments(p)


def run(args) -> int:
    from distilkit.bench import BenchConfig, bench

    cfg = config_from_args(
        BenchConfig,
        args,
        {
            "models": "models",
            "out": "out",
            "data_dir": "data_dir",
            "threads": "threads",
            "repeats": "repeats",
            "max_examples": "max_examples",
            "device": "device",
        },
    )
    r = bench(cfg)
    print(r.files["markdown"].read_text(encoding="utf-8"), end="")
    print("results: " + ", ".join(str(p) for p in r.files.values()))
    return 0
