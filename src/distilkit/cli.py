"""The ``distilkit`` command: one subcommand per stage.

Each subcommand lives in ``distilkit.commands.<name>`` and exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Errors of type ``DistilkitError`` become one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from distilkit.errors import DistilkitError

# Order is the order shown in --help.
COMMANDS = [
    "prepare",
    "init_student",
    "adapt_teacher",
    "distill",
    "demo",
    "finetune",
    "zeroshot",
    "squad",
    "compare",
    "export",
    "bench",
    "ablate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilkit",
        description="Distil BERT-family encoders into smaller, faster students (DistilBERT recipe).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMANDS:
        module = importlib.import_module(f"distilkit.commands.{module_name}")
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _close_progress_bars() -> None:
    """End bars an error interrupted, so that the error line starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    # Offline by default for anything that looks like a local path; hub ids still work online.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args._run(args) or 0)
    except DistilkitError as exc:
        _close_progress_bars()
        # One line, even when the message wraps another library's multi-line error.
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"distilkit {args.command}: error: {text}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full anywhere (stages clean up their temporary folders before this).
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _close_progress_bars()
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"distilkit {args.command}: error: no space left on device{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distilkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
