"""Is the demo student's doc-search gap capacity or generalisation? Distil it on a split's own
texts (no labels: the teacher's embeddings only) and score both splits.

    python benchmarks/demo_fit_probe.py DEMO_DIR OUT SOURCE '{"steps": 150}'

SOURCE: "dev" (the dev split's summaries and bodies, one document per documented object) or
"train-modules" (the same layout, built from the demo corpus's own modules, demo._DOC_MODULES:
a legitimate training corpus). The student starts from DEMO_DIR's layer-searched
`student-init/` and is distilled with the demo's recipe (benchmarks/demo_recipe_probe.py; the
JSON is passed to it). Prints one JSON line per split: doc-search MRR and top-1.

If the student reaches the teacher's ranking on texts it was distilled on but not on unseen
ones, 3 layers can represent the ranking and what is missing is generalisation, not capacity.
Distilling on "dev" makes the dev figure transductive by construction: it is a diagnostic, never
a score.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModel

from distilkit.data import PrepareConfig, prepare
from distilkit.demo import _DOC_MODULES
from distilkit.docsearch import docstring_pairs, encoder_fn, search_scores
from distilkit.modeling import load_tokenizer, resolve_model
from distilkit.sentence import pool_embeddings, sentence_spec


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    demo, out, source, change = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if source not in ("dev", "train-modules"):
        sys.exit("SOURCE must be 'dev' or 'train-modules'")
    if out.exists():
        sys.exit(f"{out} exists; choose a new folder")
    corpus = (demo / "corpus.txt").read_text("utf-8")
    pairs = docstring_pairs("dev", corpus) if source == "dev" else docstring_pairs(_DOC_MODULES)
    # One document per object: its summary paragraph, then its body as one paragraph.
    text = "\n\n".join(f"{p.query}\n{p.answer}".replace("\r", " ") for p in pairs) + "\n"
    work = out / "probe-input"
    work.mkdir(parents=True)
    shutil.copytree(demo / "student-init", work / "student-init")
    (work / "corpus.txt").write_text(corpus, "utf-8")  # the pairs' exclusion stays the demo's
    (work / "texts.txt").write_text(text, "utf-8")
    prepare(
        PrepareConfig(
            sources=[str(work / "texts.txt")],
            tokenizer=str(resolve_model("minilm")),
            out_dir=str(work / "data"),
            max_length=128,
            validation_fraction=0.05,
            seed=1,
        )
    )
    probe = Path(__file__).with_name("demo_recipe_probe.py")
    student = out / "student"
    subprocess.run([sys.executable, str(probe), str(work), str(student), change], check=True)
    spec = sentence_spec(student)
    enc = AutoModel.from_pretrained(student).eval()
    encode = encoder_fn(enc, load_tokenizer(student), lambda h, m: pool_embeddings(h, m, spec))
    with torch.inference_mode():
        for split in ("dev", "test"):
            r = search_scores(encode, docstring_pairs(split, corpus))
            line = {"source": source, "split": split, "n_pairs": r["n_pairs"]}
            line |= {"mrr": round(r["mrr"], 4), "top1": round(r["top1"], 4), "texts": len(pairs)}
            print(json.dumps(line))


if __name__ == "__main__":
    main()
