"""Shared CLI glue: ``--config FILE`` plus ``key.sub=value`` overrides plus convenience flags,
and the two ways a user discovers a stage's options: every config key in ``--help`` and the
resolved configuration from ``--print-config``."""

from __future__ import annotations

import argparse
import importlib
import shutil
import textwrap
from typing import Any

from distilkit.config import config_keys, dump_config, load_config, yaml_value

PRINT_CONFIG_HELP = (
    "print the resolved configuration (config file, flags and KEY=VALUE overrides) as YAML "
    "and exit; it loads back with --config"
)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config: str,
    flags: dict[str, str] | None = None,
    *,
    file_help: str = "YAML config file holding any of the config keys below",
    example: str = "",
    note: str = "",
) -> None:
    """``--config FILE``, ``--print-config``, ``KEY=VALUE`` overrides and the key listing.

    ``config`` names the config dataclass as ``"module:Class"``; it is imported only when help
    is shown, so that ``distilkit --help`` does not pay for torch. ``flags`` maps argparse
    destinations to the dotted keys they set.
    """
    parser.add_argument("--config", metavar="FILE", help=file_help)
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="set any config key listed below" + (f", e.g. {example}" if example else ""),
    )
    describe_config(parser, config, flags or {}, note)


def describe_config(
    parser: argparse.ArgumentParser, config: str, flags: dict[str, str], note: str = ""
) -> None:
    """Point each flag at its key, and list every key of ``config`` at the end of the help."""
    flag_of = {}
    for action in parser._actions:
        key = flags.get(action.dest)
        if key and action.option_strings:
            # The flag's default is None (an unset flag keeps the file's value); the real
            # default is shown once, with the key.
            action.help = f"{action.help} (sets {key})" if action.help else f"(sets {key})"
            flag_of[key] = next(o for o in action.option_strings if o.startswith("--"))
    parser.config_help = lambda: config_help(_import(config), flag_of, note)


def _import(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def config_help(cls: type, flag_of: dict[str, str], note: str = "") -> str:
    """Every key of ``cls`` grouped by section: ``key: type = default (--flag)``, then its doc."""
    width = max(60, min(shutil.get_terminal_size().columns - 2, 100))
    intro = (
        "Config keys: set them in the --config file (a section is a nested mapping) or as "
        "KEY=VALUE; later wins: defaults < --config < flags < KEY=VALUE. --print-config shows "
        "the result. " + note
    )
    lines = textwrap.wrap(intro, width)
    section = None
    for k in config_keys(cls):
        if k.section != section:
            section = k.section
            lines += ["", f"config keys in {section}:" if section else "config keys:"]
        flag = f"  ({flag_of[k.key]})" if k.key in flag_of else ""
        lines.append(f"  {k.key}: {k.type} = {yaml_value(k.default)}{flag}")
        lines += textwrap.wrap(k.doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"


def config_from_args(cls, args: argparse.Namespace, flags: dict[str, str]) -> Any:
    """Build ``cls`` from ``--config``, the flags actually given, then the overrides.

    ``flags`` maps argparse destinations to dotted config keys; unset flags (None, False, [])
    leave the file's value alone.
    """
    given = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is None or value is False or value == []:
            continue
        given[key] = value
    return load_config(cls, args.config, args.overrides, flags=given)


def print_config(args: argparse.Namespace, cfg: Any, under: tuple[str, ...] = ()) -> int:
    """Write ``cfg`` as YAML to stdout (``--print-config``); ``under`` nests it in sections for
    the stages whose --config file holds more than one config (finetune, squad, ablate)."""
    header = (
        f"Resolved configuration of `distilkit {args.command}`; load it with --config FILE.\n"
        "'set at run time' marks values the stage settles when it starts."
    )
    print(dump_config(cfg, under, header), end="")
    return 0
