"""distilkit distill: the triple-loss distillation."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, config_from_args, print_config

NAME = "distill"
HELP = "distil a teacher into a student with the DistilBERT triple loss"
CONFIG = "distilkit.distill:DistillConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "teacher": "teacher",
    "student": "student",
    "data": "data",
    "out": "out_dir",
    "max_steps": "train.max_steps",
    "overwrite": "overwrite",
}


def add_arguments(p) -> None:
    p.add_argument("--teacher", help="folder, hub id, or 'minilm'")
    p.add_argument("--student", help="student folder from init-student (unset: build one)")
    p.add_argument("--data", help="folder written by `distilkit prepare`")
    p.add_argument("--out", help="output folder")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --out",
    )
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    add_config_arguments(p, CONFIG, FLAGS, example="train.optim.lr=3e-4 loss.alpha_cos=0")


def run(args) -> int:
    from distilkit.distill import DistillConfig, distill

    cfg = config_from_args(DistillConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    r = distill(cfg, resume=args.resume_from or args.resume)
    if r.halted:
        print(
            f"halted after step {r.steps} with a checkpoint in {r.out_dir}; continue with --resume"
        )
        return 0
    ev = ", ".join(f"{k} {v:.4f}" for k, v in r.final_eval.items())
    print(
        f"student saved to {r.out_dir}: {r.steps} steps, {r.tokens_per_second:,.0f} tokens/s; {ev}"
    )
    return 0
