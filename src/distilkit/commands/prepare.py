"""distilkit prepare: corpus -> packed, memory-mapped token shards."""

from __future__ import annotations

import logging

from distilkit.commands._common import add_config_arguments, config_from_args, print_config
from distilkit.plan import log_plan

NAME = "prepare"
HELP = "tokenise and pack a corpus into memory-mapped shards with token counts"
CONFIG = "distilkit.data:PrepareConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "sources": "sources",
    "tokenizer": "tokenizer",
    "out": "out_dir",
    "max_length": "max_length",
    "overwrite": "overwrite",
}


def add_arguments(p) -> None:
    p.add_argument(
        "--source",
        "-s",
        action="append",
        dest="sources",
        default=[],
        help="a .txt/.txt.gz/.jsonl file, a folder of them, or hf:NAME[:CONFIG[:SPLIT]]"
        " (repeatable)",
    )
    p.add_argument(
        "--teacher",
        "--tokenizer",
        dest="tokenizer",
        help="model whose tokenizer to use (folder, hub id, or 'minilm')",
    )
    p.add_argument("--out", help="output folder")
    p.add_argument("--max-length", type=int, help="longest packed sequence")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_config_arguments(p, CONFIG, FLAGS, example="validation_fraction=0.05 max_documents=1000")


def run(args) -> int:
    from distilkit.data import PrepareConfig, prepare

    cfg = config_from_args(PrepareConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    log_plan(
        logging.getLogger("distilkit.prepare"),
        "prepare",
        {
            "sources": ", ".join(cfg.sources),
            "tokenizer": cfg.tokenizer,
            "documents": f"the first {cfg.max_documents:,}" if cfg.max_documents else "all",
            "sequences": f"{cfg.min_length}-{cfg.max_length} tokens, "
            f"{100 * cfg.validation_fraction:g}% of the documents held out",
            "output": cfg.out_dir,
        },
    )
    result = prepare(cfg)
    s = result.manifest["splits"]
    print(
        f"prepared {s['train']['sequences']:,} train and {s['validation']['sequences']:,} "
        f"validation sequences ({s['train']['tokens']:,} train tokens) in {result.out_dir}"
    )
    return 0
