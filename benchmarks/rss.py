"""Resident memory over a long CPU distillation: does anything grow with the step count?

Runs ``distilkit.distill.distill`` for ``--steps`` optimizer steps with everything that could
accumulate switched on: a log record every step (tqdm, JSONL, TensorBoard), validation every
``--eval-every`` steps, checkpoints every ``--checkpoint-every`` steps (keeping 2), several
epochs over a small corpus (a fresh DataLoader per epoch). A global optimizer-step hook reads
the process's RSS from /proc every ``--every`` steps; the table and a least-squares slope over
the second half of the run are printed. Nothing is asserted: the numbers go to
docs/results/robustness.md.

Teacher: a random BERT (``--layers`` x ``--hidden``) with the vocabulary and tokenizer of the
packaged all-MiniLM-L6-v2 (30,522 word pieces); corpus: the English prose embedded in the
Python installation (pydoc topics, standard-library docstrings), as in the offline demo. So it
runs offline.

    python benchmarks/rss.py --steps 3000 --every 250 --work /tmp/dk/rss
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import shutil
import time
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def setup(work: Path, layers: int, hidden: int, max_length: int) -> tuple[Path, Path]:
    """Random teacher with the MiniLM tokenizer, and the demo corpus prepared with it."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from distilkit.data import PrepareConfig, prepare
    from distilkit.demo import write_demo_corpus
    from distilkit.modeling import packaged_minilm_path

    teacher, data = work / "teacher", work / "data"
    if not (teacher / "config.json").is_file():
        import torch

        tok = AutoTokenizer.from_pretrained(packaged_minilm_path())
        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
            max_position_embeddings=max_length,
        )
        BertForMaskedLM(cfg).save_pretrained(teacher)
        tok.save_pretrained(teacher)
    if not (data / "manifest.json").is_file():
        corpus = work / "corpus.txt"
        write_demo_corpus(corpus)
        prepare(
            PrepareConfig(
                sources=[str(corpus)],
                tokenizer=str(teacher),
                out_dir=str(data),
                max_length=max_length,
                validation_fraction=0.02,
                overwrite=True,
            )
        )
    return teacher, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=250, help="report RSS every N steps")
    ap.add_argument("--work", default="/tmp/dk/rss")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from distilkit.data import TokenDataset
    from distilkit.distill import DistillConfig, distill
    from distilkit.loop import OptimConfig, TrainConfig

    work = Path(args.work)
    teacher, data = setup(work, args.layers, args.hidden, args.max_length)
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    n_train = len(TokenDataset(data, "train"))

    rows: list[tuple[int, float, int, float]] = []
    state = {"step": 0, "t0": time.time()}

    def sample(optimizer, *_):
        state["step"] += 1
        if state["step"] % args.every == 0 or state["step"] == 1:
            rows.append(
                (state["step"], rss_mib(), len(gc.get_objects()), time.time() - state["t0"])
            )
            step, rss, objs, secs = rows[-1]
            print(f"{step:>7} {rss:>9.1f} {objs:>10,} {secs:>8.0f}", flush=True)

    register_optimizer_step_post_hook(sample)
    train = TrainConfig(
        batch_size=args.batch_size,
        max_steps=args.steps,
        precision="fp32",
        log_every=1,
        eval_every=args.eval_every,
        eval_batches=10,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=2,
        num_workers=args.num_workers,
        threads=args.threads,
        optim=OptimConfig(lr=5e-4),
    )
    cfg = DistillConfig(teacher=str(teacher), data=str(data), out_dir=str(out), train=train)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} thread(s), {args.num_workers} loader workers"
    )
    print(
        f"# teacher {args.layers}x{args.hidden} (vocab 30,522), {n_train:,} train sequences of "
        f"<= {args.max_length} tokens, batch {args.batch_size}: "
        f"{args.steps * args.batch_size / n_train:.1f} epochs; log every step, eval every "
        f"{args.eval_every}, checkpoint every {args.checkpoint_every}"
    )
    print(f"{'step':>7} {'RSS MiB':>9} {'py objects':>10} {'seconds':>8}", flush=True)
    result = distill(cfg)
    print(f"# after the final save: RSS {rss_mib():.1f} MiB")

    half = [r for r in rows if r[0] >= args.steps // 2]
    if len(half) >= 2:
        xs, ys = [r[0] for r in half], [r[1] for r in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        print(
            f"# second half (steps {xs[0]}-{xs[-1]}): RSS {min(ys):.1f}-{max(ys):.1f} MiB, "
            f"slope {1000 * slope:+.2f} MiB per 1000 steps"
        )
    first_after_warmup = next((r for r in rows if r[0] >= args.every), rows[0])
    print(
        f"# from step {first_after_warmup[0]} to {rows[-1][0]}: RSS "
        f"{rows[-1][1] - first_after_warmup[1]:+.1f} MiB, Python objects "
        f"{rows[-1][2] - first_after_warmup[2]:+,}; {result.tokens_per_second:,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
