"""Shared CLI glue: ``--config FILE`` plus ``key.sub=value`` overrides plus convenience flags."""

from __future__ import annotations

import argparse
from typing import Any

from distilkit.config import load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.max_steps=100 loss.alpha_cos=0",
    )


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
