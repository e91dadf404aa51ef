"""distilkit init-student: half-depth student initialised from teacher layers."""

from __future__ import annotations

NAME = "init-student"
HELP = "build a student with fewer layers, initialised from the teacher's layers"


def _layers(text: str) -> list[int]:
    import argparse

    try:
        return [int(x) for x in text.replace(" ", "").strip("[]").split(",") if x != ""]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--layers must be integers like 0,2,4: {text}") from exc


def add_arguments(p) -> None:
    p.add_argument("--teacher", required=True, help="folder, hub id, or 'minilm'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--layers",
        type=_layers,
        help="teacher layers to copy, e.g. 0,2,4,7,9,11 (default: evenly spaced, "
        "first and last included, half depth)",
    )
    p.add_argument("--num-layers", type=int, help="student depth when --layers is not given")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from distilkit.student import init_student

    r = init_student(
        args.teacher,
        args.out,
        layers=args.layers,
        num_layers=args.num_layers,
        overwrite=args.overwrite,
    )
    head = "copied from the teacher" if r.head_from_teacher else "freshly initialised"
    print(
        f"{r.architecture} with teacher layers {r.layers} saved to {r.out_dir} "
        f"(masked-LM head {head})"
    )
    return 0
