"""distilkit ablate: the paper's Table 4 study (what each loss and the teacher init are worth)."""

from __future__ import annotations

import shlex
import sys

from distilkit.commands._common import PRINT_CONFIG_HELP, describe_config, print_config

NAME = "ablate"
HELP = "run the ablation study of the paper's Table 4 end to end (resumable) and write the report"
# The KEY=VALUE overrides set keys of one size of configs/ablation.yaml.
CONFIG = "distilkit.ablate_sizes:AblationSize"
FLAGS = {"report": "report"}


def add_arguments(p) -> None:
    p.add_argument(
        "--size",
        choices=["tiny", "cpu", "gpu"],
        default="tiny",
        help="tiny: CI smoke run (< 1 min); cpu: the real study on a CPU (many hours); gpu: "
        "longer budgets for one GPU. Numbers: configs/ablation.yaml",
    )
    p.add_argument("--out", help="folder for every sub-run (unset: runs/ablation-SIZE)")
    p.add_argument(
        "--report",
        help="markdown report path (unset: the size's, e.g. "
        "docs/results/ablation.md; PNG/JSON go into a folder beside it)",
    )
    p.add_argument(
        "--sizes",
        "--config",
        dest="sizes",
        metavar="FILE",
        help="sizes YAML: a mapping from size name to the keys below "
        "(default: configs/ablation.yaml)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the report from the sub-runs finished so far (safe while "
        "the study runs), listing the models not finished yet",
    )
    p.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="set any key of the size listed below, e.g. distill.steps=1000 evaluate.seeds=5",
    )
    describe_config(
        p,
        CONFIG,
        FLAGS,
        note="The defaults shown are the dataclass's; each size of configs/ablation.yaml sets "
        "its own, and --size SIZE --print-config shows them.",
    )


def run(args) -> int:
    from distilkit.ablate import AblateConfig, ablate, load_size

    if args.print_config:
        size = load_size(args.size, args.sizes, args.overrides)
        if args.report:
            size.report = args.report
        # As a sizes file with this one size, so that it loads back with --config.
        return print_config(args, size, under=(args.size,))
    command = "distilkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = ablate(
        AblateConfig(
            size=args.size,
            out=args.out or "",
            sizes_file=args.sizes or "",
            overrides=list(args.overrides),
            report=args.report or "",
            command=command,
            report_only=args.report_only,
        )
    )
    rows = result.report["rows"]
    print(f"\n{'model':<22}{'Score':>7}{'retention':>11}{'Δ vs (i)':>10}")
    for r in rows:
        ret = "n/a" if r["retention"] is None else f"{r['retention']:.1f}%"
        delta = "" if r["delta_vs_i"] is None else f"{r['delta_vs_i']:+.2f}"
        print(f"{r['label']:<22}{100 * r['macro']:>7.1f}{ret:>11}{delta:>10}")
    for p in result.report.get("pending", []):
        print(f"{p['label']:<22}{'not finished':>28}")
    reused = "all sub-runs reused" if not result.ran else f"{len(result.ran)} sub-runs run now"
    print(f"\n{reused}; report: {result.report_md}")
    return 0
