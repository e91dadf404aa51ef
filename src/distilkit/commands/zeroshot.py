"""distilkit zeroshot: STS-B similarity from mean-pooled embeddings, no fine-tuning."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, config_from_args, print_config

NAME = "zeroshot"
HELP = "zero-shot STS-B: cosine of mean-pooled embeddings vs gold scores (Spearman)"
CONFIG = "distilkit.zeroshot:ZeroShotConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "model": "model",
    "data_dir": "data_dir",
    "out": "out",
    "task": "task",
    "split": "split",
    "pooling": "pooling",
}


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model folder, 'minilm', or a hub id")
    p.add_argument("--data-dir", required=True, help="GLUE root or STS-B folder, or 'hf'")
    p.add_argument("--out", required=True, help="output folder (metrics.json)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output of distilkit in --out (never a folder holding an input)",
    )
    p.add_argument("--task", help="sentence-pair regression task")
    p.add_argument("--split", help="split to score")
    p.add_argument("--pooling", choices=["mean", "cls"], help="how tokens become one vector")
    add_config_arguments(p, CONFIG, FLAGS, example="max_length=128 batch_size=64")


def run(args) -> int:
    from distilkit.zeroshot import ZeroShotConfig, zeroshot

    cfg = config_from_args(ZeroShotConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    r = zeroshot(cfg, overwrite=args.overwrite)
    print(
        f"{r['title']}: Spearman {100 * r['metrics']['spearman']:.2f}, Pearson "
        f"{100 * r['metrics']['pearson']:.2f} on {sum(r['n_dev'].values())} pairs "
        f"-> {args.out}/metrics.json"
    )
    return 0
