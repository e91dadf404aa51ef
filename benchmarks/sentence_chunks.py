"""Speed of the sentence-embedding objective with and without length-sorted chunks.

    python benchmarks/sentence_chunks.py DATA [--steps N] [--threads T]

DATA: a folder from `distilkit prepare` with the packaged MiniLM tokenizer. Runs the objective
(student = layer-dropped MiniLM, teacher = MiniLM, spans=sentences) forward and backward on the
same batches, once with distilkit's chunks (``sentence._CHUNK``) and once as one padded batch,
alternating per step, and prints the median seconds per step of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import distilkit.sentence as sentence
from distilkit.data import TokenDataset
from distilkit.modeling import load_mlm, load_tokenizer, packaged_minilm_path
from distilkit.sentence import EmbeddingLossConfig, EmbeddingObjective, sentence_ends, sentence_spec
from distilkit.student import init_student


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher_dir = packaged_minilm_path()
    init_student(teacher_dir, "/tmp/sentence-chunks-student", num_layers=3, overwrite=True)
    student = load_mlm("/tmp/sentence-chunks-student")[0].base_model
    teacher = load_mlm(str(teacher_dir))[0].base_model.eval()
    data = TokenDataset(args.data, "train")
    obj = EmbeddingObjective(
        student,
        teacher,
        sentence_spec(teacher_dir),
        EmbeddingLossConfig(),
        data.special_ids,
        sentence_ends(load_tokenizer(str(teacher_dir))),
    )
    times: dict[str, list[float]] = {"chunks of 32": [], "one padded batch": []}
    for step in range(args.steps + 1):
        rows = [torch.from_numpy(data[step * args.batch + i]) for i in range(args.batch)]
        longest = max(len(r) for r in rows)
        ids = torch.zeros(args.batch, longest, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], att[i, : len(r)] = r, 1
        b = obj.prepare_batch({"original_ids": ids, "attention_mask": att})
        norms = {k: float(v) for k, v in obj.rows(b).items()}
        for name, chunk in (("chunks of 32", 32), ("one padded batch", 10**9)):
            sentence._CHUNK = chunk
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = sum(obj.losses(student, b, norms).values())
            loss.backward()
            student.zero_grad(set_to_none=True)
            if step:  # step 0 warms up
                times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:18s} median {statistics.median(ts):.3f} s/step over {len(ts)} steps")


if __name__ == "__main__":
    main()
