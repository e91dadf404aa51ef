"""distilkit: knowledge distillation of BERT-family encoders, DistilBERT-style."""

from __future__ import annotations

__version__ = "0.1.0"
