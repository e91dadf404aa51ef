"""distilkit export: ONNX (and int8) export with parity checks against PyTorch."""

from __future__ import annotations

import logging

from distilkit.commands._common import add_config_arguments, config_from_args, print_config
from distilkit.plan import log_plan

NAME = "export"
HELP = "export a model to ONNX (optionally int8), checked against PyTorch"
CONFIG = "distilkit.export:ExportConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "model": "model",
    "out": "out",
    "format": "format",
    "quantize": "quantize",
    "head": "head",
    "task": "task",
    "data_dir": "data_dir",
    "atol": "atol",
    "int8_rtol": "int8_rtol",
    "threads": "threads",
    "overwrite": "overwrite",
}


def add_arguments(p) -> None:
    p.add_argument("--model", help="model folder, 'minilm', or a hub id")
    p.add_argument("--out", help="output folder (written only if every check passes)")
    p.add_argument("--format", choices=["onnx"], help="export format")
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        help="also write model.int8.onnx (onnxruntime dynamic quantisation)",
    )
    p.add_argument(
        "--head",
        choices=["auto", "encoder", "sequence-classification", "question-answering", "masked-lm"],
        help="graph to export (auto: the checkpoint's own head)",
    )
    p.add_argument("--task", help="GLUE task for the dev-set metric check (classifiers)")
    p.add_argument("--data-dir", help="GLUE root or task folder for --task")
    p.add_argument("--atol", type=float, help="fp32 parity tolerance (max abs diff)")
    p.add_argument(
        "--int8-rtol",
        type=float,
        help="int8 parity tolerance (max abs diff / max |PyTorch output|)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for the checks")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_arguments(p, CONFIG, FLAGS, example="opset=18 int8_keep_ffn_output=true")


def run(args) -> int:
    from distilkit.export import ExportConfig, export

    cfg = config_from_args(ExportConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    int8 = cfg.quantize == "int8"
    log_plan(
        logging.getLogger("distilkit.export"),
        "export",
        {
            "model": cfg.model,
            "head": cfg.head,
            "files": f"model.onnx{' and model.int8.onnx' if int8 else ''} (opset {cfg.opset})",
            "checks": f"fp32 max |diff| <= {cfg.atol:g}"
            + (f", int8 relative <= {cfg.int8_rtol:g}" if int8 else "")
            + (f", {cfg.task} dev metric" if cfg.task else ""),
            "threads": cfg.threads or "default",
            "output": cfg.out,
        },
    )
    r = export(cfg)
    print(f"{r.head} exported to {r.out_dir}")
    for name, size in r.files.items():
        precision = "int8" if "int8" in name else "fp32"
        p = r.parity[precision]
        print(
            f"  {name}: {size / 1e6:.1f} MB, max |diff| vs PyTorch {p['max_abs_diff']:.3g} "
            f"({100 * p['relative_max_diff']:.2g}% of max |output|)"
        )
    if r.metric:
        scores = r.metric["scores"]
        line = ", ".join(f"{k} {100 * v['score']:.2f}" for k, v in scores.items())
        print(
            f"  {r.metric['task']} {r.metric['split']} score ({r.metric['n_examples']} "
            f"examples): {line}"
        )
    return 0
