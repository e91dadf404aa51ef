"""distilkit finetune: fine-tune on a GLUE task or classification files; dev metrics to JSON."""

from __future__ import annotations

NAME = "finetune"
HELP = "fine-tune a model on a GLUE task (or classification files) and report dev metrics"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model folder, 'minilm', or a hub id")
    p.add_argument(
        "--task",
        required=True,
        help="cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli, or classification",
    )
    p.add_argument(
        "--data-dir",
        required=True,
        help="GLUE root or task folder; 'hf' for the Hugging Face hub; for "
        "classification a file or a folder with train.* (and dev.*)",
    )
    p.add_argument("--out", required=True, help="output folder (metrics.json)")
    p.add_argument("--seeds", type=int, help="number of seeds; the median is reported")
    p.add_argument(
        "--max-train-examples", type=int, help="train on a fixed random subset of this size"
    )
    p.add_argument(
        "--config", help="per-task defaults YAML (default: configs/finetune.yaml when found)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, e.g. lr=3.0e-5 epochs=2 bf16=true classification.text_column=review",
    )


def run(args) -> int:
    from distilkit.finetune import build_config, default_recipes_path, finetune

    cfg = build_config(
        args.task,
        args.config or default_recipes_path(),
        args.overrides,
        model=args.model,
        data_dir=args.data_dir,
        out=args.out,
        seeds=args.seeds,
        max_train_examples=args.max_train_examples,
    )
    result = finetune(cfg)
    spread = result["summary"][result["main_split"]]["score"]
    metrics = " ".join(f"{k}={100 * v:.2f}" for k, v in result["metrics"].items())
    print(
        f"{result['title']} {result['main_split']} ({len(result['runs'])} seed(s), median): "
        f"{metrics} [score min {100 * spread['min']:.2f} max {100 * spread['max']:.2f}] "
        f"-> {args.out}/metrics.json"
    )
    return 0
