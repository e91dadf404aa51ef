"""distilkit demo: offline end-to-end run on the packaged MiniLM and Python's own docs."""

from __future__ import annotations

import logging

from distilkit.commands._common import add_config_arguments, config_from_args, print_config
from distilkit.plan import batch_text, log_plan

NAME = "demo"
HELP = "run prepare -> init-student -> distill -> held-out quality offline on embedded data"
CONFIG = "distilkit.demo:DemoConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "out": "out_dir",
    "distill_steps": "distill_steps",
    "batch_size": "batch_size",
    "glue_dir": "glue_dir",
    "overwrite": "overwrite",
}


def add_arguments(p) -> None:
    p.add_argument("--out", help="folder for everything the demo writes")
    p.add_argument("--distill-steps", type=int, help="distillation steps")
    p.add_argument("--batch-size", type=int, help="sequences per step")
    p.add_argument("--glue-dir", help="GLUE folder with STS-B/dev.tsv: adds zero-shot STS-B")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the folder of an earlier demo run"
    )
    add_config_arguments(p, CONFIG, FLAGS, example="lr=1e-4 student_layers=2")


def run(args) -> int:
    from distilkit.demo import DemoConfig, format_summary, run_demo

    cfg = config_from_args(DemoConfig, args, FLAGS)
    if args.print_config:
        return print_config(args, cfg)
    log_plan(
        logging.getLogger("distilkit.demo"),
        "demo",
        {
            "teacher": "the packaged all-MiniLM-L6-v2",
            "corpus": "Python's own documentation",
            "student": f"{cfg.student_layers} of the teacher's layers",
            "distill": f"{cfg.distill_steps} steps, {batch_text(cfg.batch_size)}, lr {cfg.lr:g}, "
            f"max length {cfg.max_length}",
            "zero-shot": cfg.glue_dir and f"STS-B from {cfg.glue_dir}",
            "output": cfg.out_dir,
        },
    )
    print(format_summary(run_demo(cfg)))
    return 0
