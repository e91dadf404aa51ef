"""distilkit zeroshot: STS-B similarity from mean-pooled embeddings, no fine-tuning."""

from __future__ import annotations

NAME = "zeroshot"
HELP = "zero-shot STS-B: cosine of mean-pooled embeddings vs gold scores (Spearman)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model folder, 'minilm', or a hub id")
    p.add_argument("--data-dir", required=True, help="GLUE root or STS-B folder, or 'hf'")
    p.add_argument("--out", required=True, help="output folder (metrics.json)")
    p.add_argument("--task", help="sentence-pair regression task (default stsb)")
    p.add_argument("--split", help="split to score (default dev)")
    p.add_argument("--pooling", choices=["mean", "cls"], help="default mean")
    p.add_argument("--config", help="YAML with ZeroShotConfig fields")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, e.g. max_length=128 batch_size=64",
    )


def run(args) -> int:
    from distilkit.commands._common import config_from_args
    from distilkit.zeroshot import ZeroShotConfig, zeroshot

    cfg = config_from_args(
        ZeroShotConfig,
        args,
        {
            "model": "model",
            "data_dir": "data_dir",
            "out": "out",
            "task": "task",
            "split": "split",
            "pooling": "pooling",
        },
    )
    r = zeroshot(cfg)
    print(
        f"{r['title']}: Spearman {100 * r['metrics']['spearman']:.2f}, Pearson "
        f"{100 * r['metrics']['pearson']:.2f} on {sum(r['n_dev'].values())} pairs "
        f"-> {args.out}/metrics.json"
    )
    return 0
