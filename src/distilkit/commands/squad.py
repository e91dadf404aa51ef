"""distilkit squad: SQuAD v1.1 fine-tuning, optionally with the second distillation step."""

from __future__ import annotations

NAME = "squad"
HELP = (
    "fine-tune on SQuAD v1.1 (EM/F1); with --teacher, add the KL term towards a "
    "SQuAD-fine-tuned teacher (the paper's DistilBERT (D))"
)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model to fine-tune: folder, 'minilm', hub id")
    p.add_argument("--train-file", required=True, help="SQuAD v1.1 JSON")
    p.add_argument("--dev-file", help="SQuAD v1.1 dev JSON (default: hold out paragraphs)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, model/)")
    p.add_argument("--teacher", help="QA model already fine-tuned on SQuAD (its out/model)")
    p.add_argument("--alpha-kd", type=float, help="weight of the KL term (default 0.5)")
    p.add_argument("--temperature", type=float, help="softmax temperature T (default 2)")
    p.add_argument(
        "--config",
        help="recipes YAML; its squad: section is used (default: configs/finetune.yaml when found)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, e.g. max_length=256 doc_stride=64 epochs=1",
    )


def run(args) -> int:
    from distilkit.finetune import default_recipes_path
    from distilkit.squad import build_squad_config, finetune_squad

    cfg = build_squad_config(
        args.config or default_recipes_path(),
        args.overrides,
        model=args.model,
        train_file=args.train_file,
        dev_file=args.dev_file,
        out=args.out,
        teacher=args.teacher,
        alpha_kd=args.alpha_kd,
        temperature=args.temperature,
    )
    r = finetune_squad(cfg)
    print(
        f"SQuAD dev EM {100 * r['metrics']['exact_match']:.2f} F1 "
        f"{100 * r['metrics']['f1']:.2f} on {r['n_dev']['dev']} questions -> {args.out}"
    )
    return 0
