"""OpenMP wait policy: distilkit's distillation throughput with each policy, quiet and loaded.

``distilkit`` sets ``OMP_WAIT_POLICY=PASSIVE`` for its own processes unless the user set it
(``cli.main``). This script measures that choice: the real ``distill`` loop (path (a) of
``throughput.py``, one fresh process per run) with the variable unset (the OpenMP runtime's own
default) and with each policy named, on a quiet machine and while other processes load the
cores. It prints tokens/s and tokens per CPU-second (CPU time of the whole process, all threads:
a thread spinning while it waits for a descheduled peer costs CPU time and does no work).

Loads (``--loads``), started before a run and stopped after it:

- ``none``: nothing else runs (the machine must be quiet for this row to mean anything);
- ``spin``: ``--load-procs`` pure-Python busy loops (default: one per core), i.e. other
  single-threaded jobs;
- ``torch``: one process multiplying matrices on all cores with torch's default OpenMP
  settings, i.e. another multi-threaded training job.

Runs are interleaved (every policy under one load, then the next load; the policy order
alternates between repeats), and medians are reported. Example, from the repository root::

    python benchmarks/omp_wait_policy.py --pair small --data /tmp/dk/small/data-128 \\
        --work /tmp/dk/omp --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402 (the benchmarks folder is not a package)

DEFAULT = "default"  # the variable unset: the OpenMP runtime decides
LOADS = ("none", "spin", "torch")
_TORCH_LOAD = "import torch\nx = torch.randn(1024, 1024)\nwhile True:\n    x @ x\n"


@contextlib.contextmanager
def load(kind: str, procs: int):
    """Other work on the cores while the block runs (yields its processes); killed at the end."""
    if kind == "none":
        yield []
        return
    if kind == "spin":
        cmds = [[sys.executable, "-c", "while True: pass"]] * procs
    else:
        cmds = [[sys.executable, "-c", _TORCH_LOAD]]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # its own default
    started = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in cmds]
    try:
        time.sleep(2.0)  # let the load reach its steady state (torch: import and first matmul)
        yield started
    finally:
        for p in started:
            p.kill()
        for p in started:
            p.wait()


def summarise(results: list[dict], loads: list[str], policies: list[str]) -> dict:
    """``{load: {policy: medians, and ratios against the first policy under that load}}``."""
    keys = ("tokens_per_s", "tokens_per_cpu_s")
    summary: dict = {}
    for kind in loads:
        rows = {}
        for policy in policies:
            mine = [r for r in results if r["load"] == kind and r["policy"] == policy]
            rows[policy] = {k: statistics.median(r[k] for r in mine) for k in keys}
        base = rows[policies[0]]
        for row in rows.values():
            row["vs_" + policies[0]] = {k: row[k] / base[k] for k in keys}
        summary[kind] = rows
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="small", choices=throughput.PAIRS)
    ap.add_argument("--data", help="folder from `distilkit prepare` (teacher's tokenizer)")
    ap.add_argument("--corpus", help="corpus to prepare when --data is not given")
    ap.add_argument("--synthetic-tokens", type=int, default=0, help="prepare a synthetic corpus")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--work", default="runs/omp-wait-policy")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the measured run")
    ap.add_argument(
        "--policies",
        default=f"{DEFAULT},PASSIVE",
        help=f"comma-separated OMP_WAIT_POLICY values; '{DEFAULT}' leaves it unset",
    )
    ap.add_argument("--loads", default="none,spin", help=f"comma-separated, of {LOADS}")
    ap.add_argument("--load-procs", type=int, default=os.cpu_count() or 1, help="spin processes")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",")]
    loads = [x.strip() for x in args.loads.split(",")]
    if any(x not in LOADS for x in loads):
        raise SystemExit(f"--loads: each of {LOADS}")
    # The script sets the variable itself for every run; a value in this shell would make
    # "default" something else.
    user_value = os.environ.pop("OMP_WAIT_POLICY", None)

    work = Path(args.work).resolve()
    synthetic = bool(args.synthetic_tokens) and not (args.data or args.corpus)
    teacher, student = throughput.build_pair(args.pair, work, synthetic, seed=0)
    if args.data:
        data = Path(args.data)
    else:
        data = throughput.build_data(
            teacher, work, args.max_length, args.corpus, args.synthetic_tokens
        )
    info = throughput.machine_info()
    print(f"machine: {info}", flush=True)

    results = []
    for rep in range(args.repeats):
        for kind in loads:
            order = policies if rep % 2 == 0 else policies[::-1]
            for policy in order:
                spec = {
                    "name": f"{kind}/{policy}",
                    "path": "a",
                    "precision": "auto",
                    "compile": False,
                    "restrict_ce_to_mask": True,
                    "group_by_size": True,
                    "repeat": rep,
                    "teacher": str(teacher),
                    "student": str(student),
                    "data": str(data),
                    "out_dir": str(work / "run"),
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "threads": args.threads,
                    "num_workers": 0,
                    "device": "cpu",
                    "seed": 56,
                }
                env = {} if policy == DEFAULT else {"OMP_WAIT_POLICY": policy}
                with load(kind, args.load_procs):
                    r = throughput.run_one(spec, in_process=False, env=env)
                r |= {"load": kind, "policy": policy, "repeat": rep}
                results.append(r)
                print(
                    f"  repeat {rep} load {kind:<6} {policy:<8} {r['tokens_per_s']:8.0f} tok/s "
                    f"{r['tokens_per_cpu_s']:8.0f} tok/CPU-s",
                    flush=True,
                )

    summary = summarise(results, loads, policies)
    print(
        f"\n{args.pair}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
        f"{args.threads} threads, {args.repeats} repeat(s); medians"
    )
    print(
        f"{'load':<8}{'policy':<10}{'tok/s':>9}{'tok/CPU-s':>11}{'x tok/s':>9}{'x tok/CPU-s':>13}"
    )
    for kind, rows in summary.items():
        for policy, row in rows.items():
            x = row["vs_" + policies[0]]
            print(
                f"{kind:<8}{policy:<10}{row['tokens_per_s']:>9.0f}{row['tokens_per_cpu_s']:>11.0f}"
                f"{x['tokens_per_s']:>8.2f}x{x['tokens_per_cpu_s']:>12.2f}x"
            )
    print(
        f"ratios against {policies[0]}; machine: {info['cpu']} ({', '.join(info['cpu_features'])})"
    )
    print(f"load average at the end: {os.getloadavg()}")
    out = {
        "args": vars(args),
        "machine": info,
        "user_omp_wait_policy": user_value,
        "results": results,
        "summary": summary,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
