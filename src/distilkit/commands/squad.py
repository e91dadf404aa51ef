"""distilkit squad: SQuAD v1.1 fine-tuning, optionally with the second distillation step."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, print_config

NAME = "squad"
HELP = (
    "fine-tune on SQuAD v1.1 (EM/F1); with --teacher, add the KL term towards a "
    "SQuAD-fine-tuned teacher (the paper's DistilBERT (D))"
)
CONFIG = "distilkit.squad:SquadConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "model": "model",
    "train_file": "train_file",
    "dev_file": "dev_file",
    "out": "out",
    "teacher": "teacher",
    "alpha_kd": "alpha_kd",
    "temperature": "temperature",
}


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model to fine-tune: folder, 'minilm', hub id")
    p.add_argument("--train-file", required=True, help="SQuAD v1.1 JSON")
    p.add_argument("--dev-file", help="SQuAD v1.1 dev JSON (unset: hold out paragraphs)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, model/)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output of distilkit in --out (never a folder holding an input)",
    )
    p.add_argument("--teacher", help="QA model already fine-tuned on SQuAD (its out/model)")
    p.add_argument("--alpha-kd", type=float, help="weight of the KL term")
    p.add_argument("--temperature", type=float, help="softmax temperature T")
    add_config_arguments(
        p,
        CONFIG,
        FLAGS,
        file_help="recipes YAML whose `squad` section holds any of the keys below "
        "(default: configs/finetune.yaml when found)",
        example="max_length=256 doc_stride=64 epochs=1",
        note="The defaults shown are the dataclass's; the `squad` section of the recipes file "
        "(configs/finetune.yaml) sets its own, and --print-config shows the result.",
    )


def run(args) -> int:
    from distilkit.finetune import default_recipes_path
    from distilkit.squad import build_squad_config, finetune_squad

    cfg = build_squad_config(
        args.config or default_recipes_path(),
        args.overrides,
        **{key: getattr(args, dest) for dest, key in FLAGS.items()},
    )
    if args.print_config:
        # As a recipes file with only its squad section, so that it loads back with --config.
        return print_config(args, cfg, under=("squad",))
    r = finetune_squad(cfg, overwrite=args.overwrite)
    print(
        f"SQuAD dev EM {100 * r['metrics']['exact_match']:.2f} F1 "
        f"{100 * r['metrics']['f1']:.2f} on {r['n_dev']['dev']} questions -> {args.out}"
    )
    return 0
