"""distilkit compare: teacher vs student table (markdown), bar chart (PNG) and JSON."""

from __future__ import annotations

from distilkit.commands._common import add_config_arguments, config_from_args, print_config

NAME = "compare"
HELP = "teacher vs student report like the paper's Table 1 (runs or collects evaluations)"
CONFIG = "distilkit.compare:CompareConfig"
# argparse destination -> the config key the flag sets
FLAGS = {
    "teacher": "teacher",
    "student": "student",
    "tasks": "tasks",
    "data_dir": "data_dir",
    "out": "out",
    "teacher_runs": "teacher_runs",
    "student_runs": "student_runs",
    "recipes": "recipes",
    "ft_overrides": "overrides",
}


def add_arguments(p) -> None:
    p.add_argument("--teacher", required=True, help="teacher model: folder, 'minilm', hub id")
    p.add_argument("--student", required=True, help="student model folder")
    p.add_argument(
        "--tasks",
        help="comma-separated, e.g. cola,sst2,stsb,stsb-zeroshot,stsb-bi,squad "
        "(stsb-bi: STS-B fine-tuned as a bi-encoder)",
    )
    p.add_argument("--data-dir", help="GLUE root (needed for runs that are not collected)")
    p.add_argument("--out", required=True, help="report folder (report.md/png/json)")
    p.add_argument("--teacher-runs", help="folder with <task>/metrics.json (default OUT/teacher)")
    p.add_argument("--student-runs", help="folder with <task>/metrics.json (default OUT/student)")
    p.add_argument(
        "--no-run",
        action="store_true",
        help="only collect; fail if a result is missing (sets run_missing=false)",
    )
    p.add_argument("--recipes", help="per-task defaults YAML for runs")
    p.add_argument(
        "--ft",
        dest="ft_overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override for every fine-tuning run, e.g. --ft max_train_examples=8000 (repeatable)",
    )
    add_config_arguments(p, CONFIG, FLAGS, example="teacher_label=BERT-base")


def run(args) -> int:
    from distilkit.compare import CompareConfig, compare

    if args.tasks:
        args.tasks = [t for t in args.tasks.split(",") if t.strip()]
    cfg = config_from_args(CompareConfig, args, FLAGS)
    if args.no_run:
        cfg.run_missing = False
    if args.print_config:
        return print_config(args, cfg)
    report = compare(cfg)
    t, s = report["teacher"], report["student"]
    ret = report["retention"]["macro"]
    print(
        f"macro score: teacher {100 * t['macro']:.1f}, student {100 * s['macro']:.1f}"
        f" ({'n/a' if ret is None else f'{ret:.1f}%'} retained) -> {args.out}/report.md"
    )
    return 0
