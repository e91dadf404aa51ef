"""distilkit demo: offline end-to-end run on the packaged MiniLM and Python's own docs."""

from __future__ import annotations

NAME = "demo"
HELP = "run prepare -> init-student -> distill -> held-out quality offline on embedded data"


def add_arguments(p) -> None:
    p.add_argument("--out", default="distilkit-demo", help="folder for everything the demo writes")
    p.add_argument("--distill-steps", type=int, default=150, help="distillation steps")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument(
        "--glue-dir", default="", help="GLUE folder with STS-B/dev.tsv: adds zero-shot STS-B"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the folder of an earlier demo run"
    )


def run(args) -> int:
    from distilkit.demo import DemoConfig, format_summary, run_demo

    summary = run_demo(
        DemoConfig(
            out_dir=args.out,
            distill_steps=args.distill_steps,
            batch_size=args.batch_size,
            glue_dir=args.glue_dir,
            overwrite=args.overwrite,
        )
    )
    print(format_summary(summary))
    return 0
