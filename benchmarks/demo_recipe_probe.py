"""One distillation of the demo's student with one recipe change, scored on held-out doc search.

    python benchmarks/demo_recipe_probe.py DEMO_DIR OUT '{"lr": 1e-4, "emb": {"rank_temperature": 0.1}}'

DEMO_DIR: a finished `distilkit demo --out DEMO_DIR` (its prepared `data/` and layer-searched
`student-init/` are reused, so every probe starts from the same student). The JSON sets
`steps` (150), `batch` (16), `lr` (2e-4), `seed` (56), `precision` ("auto"), `freeze` (true:
the demo's frozen word embeddings), `emb` (keys of loss.embedding on top of the demo's recipe:
L_rank 1 at temperature 0.1, spans=mixed) and `split` ("dev"). Prints one
JSON line: doc-search MRR and top-1 of the distilled student on that split (pairs sharing text
with the demo corpus dropped, as the demo does) and the wall seconds.

Choose recipes on the dev split only: the test split is the demo's untouched headline figure.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import AutoModel

from distilkit.distill import DistillConfig, LossConfig, distill
from distilkit.docsearch import docstring_pairs, encoder_fn, search_scores
from distilkit.loop import OptimConfig, TrainConfig
from distilkit.modeling import load_tokenizer, resolve_model
from distilkit.sentence import EmbeddingLossConfig, pool_embeddings, sentence_spec


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    demo, out, change = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    emb = {"alpha_rank": 1.0, "rank_temperature": 0.1, "spans": "mixed"} | change.pop("emb", {})
    split = change.pop("split", "dev")
    steps, batch = change.pop("steps", 150), change.pop("batch", 16)
    lr, seed = change.pop("lr", 2e-4), change.pop("seed", 56)
    precision = change.pop("precision", "auto")
    freeze = change.pop("freeze", True)
    if change:
        sys.exit(f"unknown keys: {', '.join(change)}")
    t0 = time.time()
    distill(
        DistillConfig(
            teacher=resolve_model("minilm"),
            student=str(demo / "student-init"),
            data=str(demo / "data"),
            out_dir=str(out),
            freeze_word_embeddings=freeze,
            loss=LossConfig(embedding=EmbeddingLossConfig(**emb)),
            train=TrainConfig(
                max_steps=steps,
                batch_size=batch,
                seed=seed,
                log_every=10,
                eval_every=0,
                eval_batches=0,
                threads=0,
                precision=precision,
                optim=OptimConfig(lr=lr, warmup_ratio=0.05, max_grad_norm=1.0),
            ),
        )
    )
    spec = sentence_spec(out)
    enc = AutoModel.from_pretrained(out).eval()
    pool = lambda h, m: pool_embeddings(h, m, spec)  # noqa: E731
    pairs = docstring_pairs(split, (demo / "corpus.txt").read_text("utf-8"))
    r = search_scores(encoder_fn(enc, load_tokenizer(out), pool), pairs)
    line = {"split": split, "mrr": round(r["mrr"], 4), "top1": round(r["top1"], 4)}
    line |= {"steps": steps, "precision": precision, "freeze": freeze}
    line |= {"batch": batch, "lr": lr, "seed": seed, "emb": emb, "s": round(time.time() - t0)}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
