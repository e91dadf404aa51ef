"""distilkit adapt-teacher: continued masked-LM training of a teacher."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, config_from_args, print_config

NAME = "adapt-teacher"
HELP = "continue masked-LM training of a teacher (domain adaptation, or fit a missing LM head)"
CONFIG = "distilkit.adapt:AdaptConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "teacher": "teacher",
    "data": "data",
    "out": "out_dir",
    "head_only": "head_only",
    "whole_model": "whole_model",
    "max_steps": "train.max_steps",
    "overwrite": "overwrite",
}


def add_arguments(p) -> None:
    p.add_argument("--teacher", help="folder, hub id, or 'minilm'")
    p.add_argument("--data", help="folder written by `distilkit prepare`")
    p.add_argument("--out", help="output folder")
    p.add_argument("--head-only", action="store_true", help="train only the masked-LM head")
    p.add_argument(
        "--whole-model", action="store_true", help="train every weight even when the head is new"
    )
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --out",
    )
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    add_config_arguments(p, CONFIG, FLAGS, example="head_lr=2e-3 train.batch_size=16")


def run(args) -> int:
    from distilkit.adapt import AdaptConfig, adapt_teacher

    cfg = config_from_args(AdaptConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    r = adapt_teacher(cfg, resume=args.resume_from or args.resume)
    if r.halted:
        print(
            f"halted after step {r.steps} with a checkpoint in {r.out_dir}; continue with --resume"
        )
        return 0
    ev = ", ".join(f"{k} {v:.4f}" for k, v in r.final_eval.items())
    print(f"adapted teacher saved to {r.out_dir} after {r.steps} steps ({ev})")
    return 0
