"""Fine-tune a sentence encoder on STS-B as a *bi-encoder* and compare with its zero-shot score.

    python benchmarks/stsb_biencoder.py GLUE_DIR [--model minilm] [--epochs 4] [--lr 2e-5]

Why: `distilkit finetune stsb` trains a cross-encoder (both sentences in one input, a regression
head). For all-MiniLM-L6-v2 that scores below the model's zero-shot bi-encoder STS-B, which the
study's sanity gate flags. If fine-tuning the same model *as the bi-encoder it was trained to be*
(cosine of mean-pooled embeddings regressed on the gold score / 5, as sentence-transformers'
CosineSimilarityLoss does) beats zero-shot, the gate's failure comes from the cross-encoder
form, not from broken fine-tuning. Prints the dev Spearman (x100) before and after each epoch.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel

from distilkit.metrics import compute_metrics
from distilkit.modeling import load_tokenizer, resolve_model
from distilkit.tasks import read_task
from distilkit.zeroshot import embed


def mean_pool(model, tok, texts: list[str]) -> torch.Tensor:
    """(N, H) mean-pooled last states, with gradients (training side)."""
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    h = model(**enc)[0]  # (N, L, H)
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (N, L, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def dev_spearman(model, tok, dev) -> float:
    model.eval()
    a = embed(model, tok, [e.text_a for e in dev])
    b = embed(model, tok, [e.text_b or "" for e in dev])
    model.train()
    gold = np.array([e.label for e in dev])
    pred = F.cosine_similarity(a, b, dim=-1).numpy()
    return 100 * compute_metrics("stsb", pred, gold)["spearman"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("glue_dir")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    model = AutoModel.from_pretrained(path).train()
    train = read_task("stsb", "train", args.glue_dir)
    dev = read_task("stsb", "dev", args.glue_dir)
    steps = args.epochs * ((len(train) + args.batch - 1) // args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / (0.1 * steps), max(0.0, (steps - s) / (0.9 * steps)))
    )
    print(f"{args.model}: zero-shot dev Spearman {dev_spearman(model, tok, dev):.2f}", flush=True)
    for epoch in range(args.epochs):
        order = list(range(len(train)))
        random.shuffle(order)
        for k in range(0, len(order), args.batch):
            batch = [train[i] for i in order[k : k + args.batch]]
            a = mean_pool(model, tok, [e.text_a for e in batch])
            b = mean_pool(model, tok, [e.text_b or "" for e in batch])
            gold = torch.tensor([e.label / 5.0 for e in batch])
            loss = F.mse_loss(F.cosine_similarity(a, b, dim=-1), gold)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        score = dev_spearman(model, tok, dev)
        print(f"epoch {epoch + 1}: bi-encoder fine-tuned dev Spearman {score:.2f}", flush=True)


if __name__ == "__main__":
    main()
