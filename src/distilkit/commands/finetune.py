"""distilkit finetune: fine-tune on a GLUE task or classification files; dev metrics to JSON."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, print_config

NAME = "finetune"
HELP = "fine-tune a model on a GLUE task (or classification files) and report dev metrics"
CONFIG = "distilkit.finetune:FinetuneConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "model": "model",
    "task": "task",
    "data_dir": "data_dir",
    "out": "out",
    "seeds": "seeds",
    "max_train_examples": "max_train_examples",
    "form": "form",
}


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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output of distilkit in --out (never a folder holding an input)",
    )
    p.add_argument("--seeds", type=int, help="number of seeds; the median is reported")
    p.add_argument(
        "--max-train-examples", type=int, help="train on a fixed random subset of this size"
    )
    p.add_argument(
        "--form",
        choices=["cross", "bi"],
        help="cross: the pair in one input, a new head (GLUE's protocol); bi (stsb): each "
        "sentence embedded alone, scored by cosine (how a sentence encoder is used)",
    )
    add_config_arguments(
        p,
        CONFIG,
        FLAGS,
        file_help="per-task recipes YAML: `defaults`, then `tasks.TASK` on top, with any of "
        "the keys below (default: configs/finetune.yaml when found)",
        example="lr=3.0e-5 epochs=2 bf16=true classification.text_column=review",
        note="The defaults shown are the dataclass's; the recipes file (configs/finetune.yaml) "
        "sets its own, per task, and --print-config shows what a task gets.",
    )


def run(args) -> int:
    from distilkit.finetune import build_config, default_recipes_path, finetune

    cfg = build_config(
        args.task,
        args.config or default_recipes_path(),
        args.overrides,
        **{key: getattr(args, dest) for dest, key in FLAGS.items() if key != "task"},
    )
    if args.print_config:
        # As a recipes file with this one task, so that it loads back with --config.
        return print_config(args, cfg, under=("tasks", cfg.task))
    result = finetune(cfg, overwrite=args.overwrite)
    spread = result["summary"][result["main_split"]]["score"]
    metrics = " ".join(f"{k}={100 * v:.2f}" for k, v in result["metrics"].items())
    print(
        f"{result['title']} {result['main_split']} ({len(result['runs'])} seed(s), median): "
        f"{metrics} [score min {100 * spread['min']:.2f} max {100 * spread['max']:.2f}] "
        f"-> {args.out}/metrics.json"
    )
    return 0
