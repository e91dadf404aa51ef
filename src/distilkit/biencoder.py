"""STS-B fine-tuning as a bi-encoder: each sentence embedded alone, the pair scored by cosine.

GLUE's protocol (``finetune.form=cross``) puts both sentences into one input and trains a new
regression head. A sentence encoder is not used that way: it embeds each text alone and
compares vectors. Fine-tuned as a cross-encoder it can score below its own zero-shot cosine,
which the study's sanity gate then flags (docs/ablation.md). ``form=bi`` fine-tunes it the way
it is used: the model's own pooling (a sentence-transformers folder's; mean pooling otherwise),
cosine similarity x the task's score range as the prediction, mean squared error to the gold
score. That is sentence-transformers' CosineSimilarityLoss up to a constant factor, which Adam
does not see. No weights are added, so a saved model is a sentence encoder again.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from distilkit.errors import DistilkitError
from distilkit.sentence import SentenceSpec, pool_embeddings, write_sentence_modules
from distilkit.tasks import Example, get_task

BI_SUFFIX = "-bi"
"""A bi-encoder result's task name is the task's and this: ``stsb-bi`` (metrics.json, compare)."""

# Tasks a bi-encoder can be fine-tuned on: sentence-pair regression, gold scores in [0, top].
SCORE_RANGE = {"stsb": 5.0}

MEAN_POOLING = SentenceSpec("mean", normalize=False, max_seq_length=None, pooling_dir="")


def check_task(task: str) -> None:
    """Refuse, before any work, a task a bi-encoder cannot be fine-tuned on."""
    try:
        name = get_task(task).name
    except DistilkitError:  # classification files, or a name load_task will refuse itself
        name = task
    if name not in SCORE_RANGE:
        raise DistilkitError(
            f"finetune form=bi fine-tunes a sentence-pair similarity task "
            f"({', '.join(SCORE_RANGE)}), not {task}; use form=cross"
        )


class BiEncoder(nn.Module):
    """An encoder (``AutoModel``) whose prediction for a pair is ``top * cos(pool(a), pool(b))``."""

    def __init__(self, encoder: nn.Module, spec: SentenceSpec | None, top: float, ref: str):
        super().__init__()
        self.encoder = encoder
        self.spec = spec or MEAN_POOLING
        self.top = top
        self.ref = ref  # the folder the pooling config is copied from when saving
        self.is_sentence_transformer = spec is not None

    @property
    def base_model(self) -> nn.Module:  # what the parameter count reports, as for a classifier
        return self.encoder

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, L, H)
        return pool_embeddings(hidden, attention_mask, self.spec)  # (B, H) float32

    def forward(
        self,
        a_input_ids: torch.Tensor,
        a_attention_mask: torch.Tensor,
        b_input_ids: torch.Tensor,
        b_attention_mask: torch.Tensor,
    ) -> SimpleNamespace:
        a = self.embed(a_input_ids, a_attention_mask)  # (B, H)
        b = self.embed(b_input_ids, b_attention_mask)  # (B, H)
        cos = F.cosine_similarity(a, b, dim=-1)  # (B,)
        return SimpleNamespace(logits=(self.top * cos)[:, None])  # (B, 1), as a regression head

    def save_pretrained(self, out: Path) -> None:
        """The encoder in Hugging Face format; with the sentence-transformers files when the
        model came as a sentence encoder, so ``SentenceTransformer(out)`` loads it."""
        out = Path(out)
        self.encoder.save_pretrained(out, safe_serialization=True)
        if self.is_sentence_transformer:
            write_sentence_modules(self.encoder, out, self.ref, self.spec)


def tokenize_pairs(
    tokenizer, examples: list[Example], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Each side of each pair tokenised alone: ``a_input_ids``, ``b_input_ids`` ... of (B, L)."""
    batch = {}
    for side, texts in (
        ("a", [e.text_a for e in examples]),
        ("b", [e.text_b or "" for e in examples]),
    ):
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch[f"{side}_input_ids"] = enc["input_ids"].to(device)
        batch[f"{side}_attention_mask"] = enc["attention_mask"].to(device)
    return batch
