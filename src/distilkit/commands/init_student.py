"""distilkit init-student: half-depth student initialised from teacher layers."""

from __future__ import annotations

NAME = "init-student"
HELP = "build a student with fewer layers, initialised from the teacher's layers"


def _layers(text: str) -> list[int] | str:
    import argparse

    if text.strip() == "search":
        return "search"
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
        "first and last included, half depth), or 'search': the layers whose copy keeps the "
        "teacher's sentence embeddings best on held-out text of --data",
    )
    p.add_argument(
        "--data",
        help="folder from `distilkit prepare` (teacher's tokenizer) for --layers search",
    )
    p.add_argument("--num-layers", type=int, help="student depth when --layers is not given")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from distilkit.errors import DistilkitError
    from distilkit.student import init_student

    layers, search = args.layers, None
    if layers == "search":
        from distilkit.layersearch import search_layers

        if not args.data:
            raise DistilkitError("--layers search needs --data (a folder from `distilkit prepare`)")
        search = search_layers(args.teacher, args.data, num_layers=args.num_layers)
        layers = search.layers
    elif args.data:
        raise DistilkitError("--data is only used with --layers search")
    r = init_student(
        args.teacher,
        args.out,
        layers=layers,
        num_layers=args.num_layers,
        overwrite=args.overwrite,
    )
    if search is not None:
        report = dataclasses.asdict(search) | {"data": str(args.data)}
        (Path(r.out_dir) / "layer_search.json").write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"layer search: {search.layers} keep fidelity {search.fidelity:.4f} on "
            f"{search.n_sentences} held-out sentences (default {search.default_layers}: "
            f"{search.default_fidelity:.4f})"
        )
    head = "copied from the teacher" if r.head_from_teacher else "freshly initialised"
    print(
        f"{r.architecture} with teacher layers {r.layers} saved to {r.out_dir} "
        f"(masked-LM head {head})"
    )
    return 0
