"""distilkit prepare: corpus -> packed, memory-mapped token shards."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, config_from_args

NAME = "prepare"
HELP = "tokenise and pack a corpus into memory-mapped shards with token counts"


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
    p.add_argument("--max-length", type=int, help="longest packed sequence (default 512)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_config_arguments(p)


def run(args) -> int:
    from distilkit.data import PrepareConfig, prepare

    cfg = config_from_args(
        PrepareConfig,
        args,
        {
            "sources": "sources",
            "tokenizer": "tokenizer",
            "out": "out_dir",
            "max_length": "max_length",
            "overwrite": "overwrite",
        },
    )
    result = prepare(cfg)
    s = result.manifest["splits"]
    print(
        f"prepared {s['train']['sequences']:,} train and {s['validation']['sequences']:,} "
        f"validation sequences ({s['train']['tokens']:,} train tokens) in {result.out_dir}"
    )
    return 0
