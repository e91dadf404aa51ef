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
from collections.abc import Callable

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


class _HelpFormatter(argparse.HelpFormatter):
    """Show a default once, and only a real one.

    Flags that stand for config keys default to None so that an unset flag keeps the config
    file's value; their real default is listed with the key (``_common.describe_config``), so
    None, False and empty defaults are not shown, nor a default the help text already states.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False  # not 0, which is a value
        if unset or action.default in ([], "", argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A parser whose help ends with the stage's config keys, built only when help is shown
    (listing them imports the stage, and with it torch)."""

    config_help: Callable[[], str] | None = None

    def format_help(self) -> str:
        text = super().format_help()
        return f"{text}\n{self.config_help()}" if self.config_help else text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distilkit",
        description="Distil BERT-family encoders into smaller, faster students (DistilBERT recipe).",
        formatter_class=_HelpFormatter,
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
            formatter_class=_HelpFormatter,
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
    # Idle OpenMP threads sleep instead of spinning: on cores shared with other work, threads
    # spinning for a descheduled peer waste CPU (docs/speed.md). Read when torch loads OpenMP,
    # so set before any import of torch; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
        return getattr(exc, "exit_code", 2)  # 75 for a run stopped by SIGTERM: resumable
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
