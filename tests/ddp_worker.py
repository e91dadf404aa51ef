"""Worker for tests/test_multiprocess.py: one distillation rank under torchrun (or alone).

    torchrun --nproc-per-node 2 tests/ddp_worker.py DUMP_DIR distill --teacher T ... [KEY=VALUE]

Runs ``distilkit.cli.main`` on the arguments after DUMP_DIR and, once training ends, saves this
rank's student weights (fp32, CPU) to ``DUMP_DIR/rank{RANK}.pt``: only rank 0 writes the output
folder, so this is how the test sees what every rank ended with.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import distilkit.distill
from distilkit import cli


def main() -> int:
    torch.set_num_threads(1)
    dump = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    train_loop = distilkit.distill.run

    def run_and_dump(objective, model_to_save, *args, **kwargs):
        result = train_loop(objective, model_to_save, *args, **kwargs)
        weights = {k: v.detach().cpu().clone() for k, v in model_to_save.state_dict().items()}
        torch.save({"weights": weights, "steps": result.steps}, dump / f"rank{rank}.pt")
        return result

    distilkit.distill.run = run_and_dump
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
