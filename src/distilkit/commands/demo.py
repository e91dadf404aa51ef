"""distilkit demo: offline end-to-end run on the packaged MiniLM and Python's own docs."""

from __future__ import annotations

NAME = "demo"
HELP = "run prepare -> adapt-teacher -> init-student -> distill offline on embedded data"


def add_arguments(p) -> None:
    p.add_argument("--out", default="distilkit-demo", help="folder for everything the demo writes")
    p.add_argument("--adapt-steps", type=int, default=60)
    p.add_argument("--distill-steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from distilkit.demo import DemoConfig, format_summary, run_demo

    summary = run_demo(
        DemoConfig(
            out_dir=args.out,
            adapt_steps=args.adapt_steps,
            distill_steps=args.distill_steps,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
        )
    )
    print(format_summary(summary))
    return 0
