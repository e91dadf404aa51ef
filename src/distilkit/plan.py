"""The block a long stage logs when it starts: what it is about to do, on what, and where.

One format for every stage, so that a log (or a job's output file) always opens with the inputs,
sizes, steps, batch, precision, device, threads and output folder of the run it records.
"""

from __future__ import annotations

import logging
from typing import Any


def log_plan(logger: logging.Logger, stage: str, rows: dict[str, Any]) -> None:
    """Log ``rows`` (label -> value) as one INFO record; rows whose value is None or "" are
    left out, so callers can pass optional facts as they are."""
    rows = {k: v for k, v in rows.items() if v is not None and v != ""}
    width = max((len(k) for k in rows), default=0)
    lines = [f"{stage}: starting"] + [f"  {k:<{width}}  {v}" for k, v in rows.items()]
    logger.info("\n".join(lines))


def batch_text(batch_size: int, accumulation: int = 1, processes: int = 1) -> str:
    """``16 x 4 accumulation x 2 processes = 128 sequences per step`` (factors of 1 left out)."""
    parts = [str(batch_size)]
    if accumulation > 1:
        parts.append(f"{accumulation} accumulation")
    if processes > 1:
        parts.append(f"{processes} processes")
    total = batch_size * accumulation * processes
    return " x ".join(parts) + (f" = {total}" if len(parts) > 1 else "") + " per step"
