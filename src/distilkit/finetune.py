"""Fine-tune an encoder on a GLUE task (or a classification file) and report dev metrics.

One explicit loop and one evaluation path for every task: a sequence-classification head (one
output and MSE for STS-B, cross-entropy otherwise), AdamW with linear warm-up and decay, and
``compute_metrics`` on each dev split. ``--seeds N`` repeats the run with seeds ``seed .. seed+N-1``
and reports the median (the paper's protocol: median of 5) and the spread.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import platform
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilkit.biencoder import BI_SUFFIX, SCORE_RANGE, BiEncoder, check_task, tokenize_pairs
from distilkit.config import ConfigError, from_dict, load_config, to_dict
from distilkit.errors import DistilkitError
from distilkit.metrics import compute_metrics, result_json
from distilkit.modeling import count_parameters, load_tokenizer, quiet_transformers, resolve_model
from distilkit.plan import batch_text, log_plan
from distilkit.runfolder import claim_folder
from distilkit.sentence import sentence_spec
from distilkit.tasks import ClassificationOptions, Example, TaskSpec, get_task, load_task

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """One fine-tuning job. Per-task defaults come from ``configs/finetune.yaml``."""

    model: str = ""
    """Model folder (a distilkit student, BERT, RoBERTa, ...), 'minilm', or a hub id."""
    task: str = ""
    """A GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli) or classification."""
    data_dir: str = ""
    """GLUE root or task folder; 'hf' for the Hugging Face hub; a file/folder for classification."""
    out: str = ""
    """Output folder: metrics.json (and seed-N/model with save_model)."""
    seeds: int = 1
    """Number of runs; the report gives their median and spread."""
    seed: int = 42
    """First seed; run i uses seed + i."""
    lr: float = 2e-5
    """Peak learning rate (AdamW; linear warm-up, then linear decay)."""
    epochs: int = 3
    """Passes over the training set."""
    batch_size: int = 32
    """Training examples per step."""
    eval_batch_size: int = 128
    """Examples per forward pass in evaluation."""
    max_length: int = 128
    """Longest input in tokens; longer ones are truncated. At most the model's position table
    (a larger value is lowered to it, with a warning)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Share of the steps with linear warm-up."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0: off)."""
    dropout: float | None = None
    """Override the model's hidden dropout (None keeps the checkpoint's)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs); for smoke tests."""
    max_train_examples: int = 0
    """Train on a fixed random subset of this size (0 = all); the same subset for every seed."""
    max_eval_examples: int = 0
    """Evaluate on the first N dev examples (0 = all)."""
    subset_seed: int = 0
    """Seed choosing the max_train_examples subset."""
    bf16: bool = False
    """bf16 autocast (CPU or GPU); weights and optimiser stay fp32."""
    device: str = "auto"
    """'auto': cuda when available, else cpu."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    log_every: int = 50
    """Log the training loss every N steps."""
    save_model: bool = False
    """Also save each seed's model to out/seed-N/model."""
    form: str = "cross"
    """'cross': both texts in one input and a new task head (GLUE's protocol, the paper's).
    'bi' (STS-B): a bi-encoder, each sentence embedded alone with the model's own pooling and
    the pair scored by cosine (distilkit.biencoder): how a sentence encoder is used."""
    classification: ClassificationOptions = field(default_factory=ClassificationOptions)

    def validate(self) -> None:
        for name in ("seeds", "epochs", "batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key '{name}' must be at least 1")
        # NaN passes every comparison that is meant to catch a bad value (`nan <= 0` is
        # False), so finiteness is checked first: a NaN lr or clip norm trains NaN weights.
        check_number("lr", self.lr, low=0.0, strict=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("grad_clip", self.grad_clip, low=0.0)
        check_number("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0, open_high=True)
        if self.dropout is not None:
            check_number("dropout", self.dropout, low=0.0, high=1.0, open_high=True)
        for name in ("max_steps", "max_train_examples", "max_eval_examples", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key '{name}' must be >= 0")
        if self.form not in ("cross", "bi"):
            raise ConfigError(f"config key 'form' must be 'cross' or 'bi', got {self.form!r}")


def check_number(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    strict: bool = False,
    open_high: bool = False,
) -> None:
    """``value`` must be finite and within ``[low, high]`` (``strict``: ``> low``;
    ``open_high``: ``< high``); else one line naming the config key."""
    ok = math.isfinite(value)
    ok = ok and (low is None or (value > low if strict else value >= low))
    ok = ok and (high is None or (value < high if open_high else value <= high))
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if strict else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        elif low is not None:
            where = f" {'>' if strict else '>='} {low:g}"
        elif high is not None:
            where = f" {'<' if open_high else '<='} {high:g}"
        else:
            where = ""
        raise ConfigError(f"config key '{key}' must be a finite number{where}, got {value!r}")


@dataclass
class FinetuneRecipes:
    """The shipped per-task defaults file: ``defaults``, then ``tasks.<name>`` on top."""

    defaults: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    squad: dict[str, Any] = field(default_factory=dict)
    """Defaults for ``distilkit squad`` (fields of ``distilkit.squad.SquadConfig``)."""

    def validate(self) -> None:
        # Check every task section now, so a typo fails when the file is loaded, not when that
        # task is first run.
        for name, section in self.tasks.items():
            get_task(name)
            if not isinstance(section, dict):
                raise ConfigError(f"config section 'tasks.{name}' must be a mapping")
            from_dict(FinetuneConfig, {**self.defaults, **section}, prefix=f"tasks.{name}.")
        from_dict(FinetuneConfig, dict(self.defaults), prefix="defaults.")
        if self.squad:
            from distilkit.squad import SquadConfig

            from_dict(SquadConfig, dict(self.squad), prefix="squad.")


def default_recipes_path() -> Path | None:
    """``configs/finetune.yaml`` in the working directory, else next to a source checkout."""
    for candidate in (
        Path.cwd() / "configs" / "finetune.yaml",
        Path(__file__).resolve().parents[2] / "configs" / "finetune.yaml",
    ):
        if candidate.is_file():
            return candidate
    return None


def load_recipes(path: str | Path | None) -> FinetuneRecipes:
    if path is None:
        return FinetuneRecipes()
    return load_config(FinetuneRecipes, path)


def build_config(
    task: str,
    recipes: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **fields: Any,
) -> FinetuneConfig:
    """Config for one task: dataclass defaults < recipes defaults < recipes task < fields < overrides.

    ``fields`` are run settings such as ``model=``, ``data_dir=``, ``out=`` (None values ignored).
    """
    spec = get_task(task)
    rec = load_recipes(recipes)
    tree = {**rec.defaults, **rec.tasks.get(spec.name, {})}
    tree.update({k: v for k, v in fields.items() if v is not None})
    tree["task"] = spec.name
    return load_config(FinetuneConfig, None, overrides, tree)  # tree as flags: below the overrides


# ----------------------------------------------------------------------------- model helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DistilkitError(f"bad device '{name}': {exc}") from exc
    # Checked now: moving the model there would fail only after the data is read.
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistilkitError(f"device '{name}' is not available: torch sees no CUDA GPU")
    return device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def forward_kwargs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the inputs ``model.forward`` takes: DistilBERT students have no token types."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in accepted}


def tokenize(
    tokenizer, examples: list[Example], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Tokenise one batch, padded to its longest member: ``input_ids`` etc. of shape (B, L)."""
    text_a = [e.text_a for e in examples]
    text_b = [e.text_b or "" for e in examples] if examples[0].text_b is not None else None
    enc = tokenizer(
        text_a,
        text_b,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=True,
        return_tensors="pt",
    )
    return {k: v.to(device) for k, v in enc.items()}


# Files transformers builds a tokenizer from. A folder holding none of them still "loads": as a
# tokenizer of the special tokens alone, which turns every word into [UNK] and trains on nothing.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")
_TOKENIZER_JSON = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
)


def position_limit(config) -> int | None:
    """Longest input the model's position table takes (RoBERTa-style tables start after the
    padding index, so they hold two positions fewer than their size)."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "camembert"):
        n -= (config.pad_token_id or 0) + 1
    return int(n)


def open_model(name: str, role: str = "model") -> tuple[str, Any, Any]:
    """Check a model before any work and return ``(ref, config, tokenizer)``.

    The weights must be present and whole (``resolve_model``), the config and tokenizer files
    readable, and the tokenizer within the embedding table. Each of these would otherwise end
    in a loader's traceback, or (a missing tokenizer) in a run that trains on ``[UNK]`` alone.
    """
    from transformers import AutoConfig

    ref = resolve_model(name)
    folder = Path(ref)
    if folder.is_dir():
        for file in _TOKENIZER_JSON:
            if (folder / file).is_file():
                try:
                    json.loads((folder / file).read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise DistilkitError(
                        f"{role} folder {name}: {file} is not valid JSON ({exc}); the file is "
                        "damaged or truncated"
                    ) from None
        if not any((folder / f).is_file() for f in _TOKENIZER_FILES) and not any(
            folder.glob("*.model")
        ):
            raise DistilkitError(
                f"{role} folder {name} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}, "
                "*.model); copy in the tokenizer files of the model it was made from"
            )
    try:
        config = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError, KeyError) as exc:
        raise DistilkitError(f"cannot read the config of {role} '{name}': {exc}") from exc
    try:
        tokenizer = load_tokenizer(name)
    except DistilkitError:
        raise
    except Exception as exc:  # tokenizers' own errors derive from Exception only
        raise DistilkitError(f"cannot load the tokenizer of {role} '{name}': {exc}") from exc
    vocab = getattr(config, "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        raise DistilkitError(
            f"the tokenizer in {name} has {len(tokenizer):,} entries but the {role}'s embedding "
            f"table only {vocab:,}; the tokenizer belongs to another model"
        )
    return ref, config, tokenizer


def fit_max_length(max_length: int, config, name: str) -> int:
    """``max_length``, or the model's position table if that is shorter.

    A longer input would crash the model with an index error at the first long example. Cutting
    inputs at the table's size is what ``max_length`` means anyway (longer inputs are
    truncated), and changes nothing when every input is shorter; the caller records the value
    it used.
    """
    limit = position_limit(config)
    if limit is None or max_length <= limit:
        return max_length
    log.warning(
        "max_length %d is longer than the position table of %s (%d tokens); inputs are cut at "
        "%d tokens",
        max_length,
        name,
        limit,
        limit,
    )
    return limit


def load_error(role: str, name: str, purpose: str, exc: Exception) -> DistilkitError:
    """One line for a model that ``from_pretrained`` refused."""
    text = str(exc)
    if "ignore_mismatched_sizes" in text:
        # transformers points at a report that quiet_transformers kept quiet: say it instead.
        text = (
            "its weights do not have the shapes its config.json gives (config.json edited, or "
            "taken from another model?)"
        )
    return DistilkitError(f"cannot load {role} '{name}' for {purpose}: {text}")


def check_finite_weights(model: nn.Module, name: str) -> None:
    """A model file of NaN/inf weights (bytes damaged in place, or a diverged run) loads
    without complaint; every output would then be NaN."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise DistilkitError(
            f"model '{name}' holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); its "
            "weight file is damaged, or it was saved from a run that diverged"
        )


def check_loading_info(name: str, info: dict, head_prefixes: tuple[str, ...]) -> None:
    """Fail if encoder weights were freshly initialised (wrong architecture or a broken folder);
    a new task head (and BERT's pooler, which DistilBERT-style students lack) is expected."""
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    encoder_missing = [k for k in missing if not k.startswith(head_prefixes) and "pooler" not in k]
    if encoder_missing:
        raise DistilkitError(
            f"model '{name}' is missing encoder weights (e.g. {encoder_missing[0]}); "
            "is it the right architecture?"
        )
    if missing:
        log.info("newly initialised: %s", ", ".join(sorted(missing)))


def _load_classifier(ref: str, name: str, spec: TaskSpec, dropout: float | None) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": spec.num_labels}
    if spec.kind == "regression":
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(spec.labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(spec.labels)}
    try:
        config = _config(ref, dropout, **kwargs)
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                ref, config=config, output_loading_info=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise load_error("model", name, "sequence classification", exc) from exc
    check_loading_info(name, info, ("classifier", "pre_classifier", "score"))
    check_finite_weights(model, name)
    return model


def _config(ref: str, dropout: float | None, **kwargs):
    """The model's config, with the hidden dropout overridden when ``dropout`` is set."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ref, **kwargs)
    if dropout is not None:
        for key in ("hidden_dropout_prob", "dropout", "seq_classif_dropout"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    return config


def _load_biencoder(ref: str, name: str, spec: TaskSpec, dropout: float | None = None) -> BiEncoder:
    from transformers import AutoModel

    try:
        config = _config(ref, dropout)
        with quiet_transformers():
            encoder, info = AutoModel.from_pretrained(ref, config=config, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise load_error("model", name, "a sentence encoder", exc) from exc
    check_loading_info(name, info, ())
    check_finite_weights(encoder, name)
    pooling = sentence_spec(ref) if Path(ref).is_dir() else None
    if pooling is None:  # said once per seed: a hub sentence encoder may pool otherwise
        log.info("bi-encoder: %s has no sentence-transformers pooling config; mean pooling", name)
    else:
        log.info(
            "bi-encoder: %s pooling of %s%s",
            pooling.pooling,
            name,
            ", normalised" * pooling.normalize,
        )
    return BiEncoder(encoder, pooling, SCORE_RANGE[spec.name], ref)


def _inputs(model: nn.Module, tokenizer, examples: list[Example], max_length: int, device):
    """One batch of model inputs: a pair in one sequence, or (bi-encoder) each side alone."""
    if isinstance(model, BiEncoder):
        return tokenize_pairs(tokenizer, examples, max_length, device)
    return tokenize(tokenizer, examples, max_length, device)


# ----------------------------------------------------------------------------- train / evaluate


def _loss(logits: torch.Tensor, labels: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """logits (B, C) float; labels (B,) class indices, or (B,) scores for regression."""
    if spec.kind == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def _label_tensor(examples: list[Example], spec: TaskSpec, device: torch.device) -> torch.Tensor:
    dtype = torch.float32 if spec.kind == "regression" else torch.long
    return torch.tensor([e.label for e in examples], dtype=dtype, device=device)


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    max_length: int,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
) -> np.ndarray:
    """Logits ``(N, C)`` in the order of ``examples`` (``C`` = 1 for regression).

    Batches are formed from length-sorted examples, which cuts padding (and CPU time) a lot on
    GLUE's mixed-length dev sets; the order is restored before returning.
    """
    model.eval()
    order = sorted(
        range(len(examples)), key=lambda i: len(examples[i].text_a) + len(examples[i].text_b or "")
    )
    out: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        batch = _inputs(model, tokenizer, chunk, max_length, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**forward_kwargs(model, batch)).logits  # (B, C)
        out.append(logits.float().cpu().numpy())
    logits = np.concatenate(out)
    restored = np.empty_like(logits)
    restored[np.asarray(order)] = logits
    return restored


def evaluate(
    model: nn.Module,
    tokenizer,
    spec: TaskSpec,
    dev: dict[str, list[Example]],
    cfg: FinetuneConfig,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """The one evaluation path: logits on each dev split, then ``compute_metrics``."""
    results = {}
    for split, examples in dev.items():
        logits = predict(
            model, tokenizer, examples, cfg.max_length, cfg.eval_batch_size, device, cfg.bf16
        )
        bad = int((~np.isfinite(logits)).any(-1).sum())
        if bad:
            raise DistilkitError(
                f"the fine-tuned model's outputs are not finite (NaN or inf) for {bad} of "
                f"{len(examples)} examples of {split}; training diverged (try a lower lr)"
            )
        gold = np.array([e.label for e in examples])
        results[split] = compute_metrics(spec.name, logits, gold)
    return results


def _train_one(
    cfg: FinetuneConfig,
    spec: TaskSpec,
    ref: str,
    tokenizer,
    train: list[Example],
    dev: dict[str, list[Example]],
    seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], nn.Module]:
    set_seed(seed)  # before loading: the new head's initialisation depends on it
    if cfg.form == "bi":
        model = _load_biencoder(ref, cfg.model, spec, cfg.dropout).to(device)
    else:
        model = _load_classifier(ref, cfg.model, spec, cfg.dropout).to(device)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    gen = torch.Generator().manual_seed(seed)
    step, losses, t0 = 0, [], time.perf_counter()
    model.train()
    while step < total:
        for idx in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            chunk = [train[i] for i in idx.tolist()]
            batch = _inputs(model, tokenizer, chunk, cfg.max_length, device)
            labels = _label_tensor(chunk, spec, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(**forward_kwargs(model, batch)).logits  # (B, C)
            loss = _loss(logits, labels, spec)
            if not torch.isfinite(loss):
                raise DistilkitError(f"seed {seed}: loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if cfg.log_every and step % cfg.log_every == 0:
                recent = losses[-cfg.log_every :]
                log.info(
                    "seed %d step %d/%d loss %.4f lr %.2e",
                    seed,
                    step,
                    total,
                    sum(recent) / len(recent),
                    scheduler.get_last_lr()[0],
                )
            if step >= total:
                break
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate(model, tokenizer, spec, dev, cfg, device)
    run = {
        "seed": seed,
        "steps": step,
        "train_loss_first": losses[0],
        "train_loss_last": float(np.mean(losses[-max(1, min(50, len(losses) // 10)) :])),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "dev": metrics,
    }
    main = next(iter(metrics))
    log.info("seed %d: %s %s", seed, main, _fmt(metrics[main]))
    return run, model


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per split and metric: median (the headline), mean, std, min, max and every value."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in runs[0]["dev"]:
        out[split] = {}
        for metric in runs[0]["dev"][split]:
            values = [r["dev"][split][metric] for r in runs]
            out[split][metric] = {
                "median": statistics.median(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
                "values": values,
            }
    return out


def environment() -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


SCRATCH = ".tmp-results"
"""Where finetune, zeroshot and squad build their output before moving it into ``out``."""


def only_scratch(claim) -> bool:
    """An output folder that holds only the scratch folder of a killed run: no results, so it
    is cleared without --overwrite."""
    return all(p.name == SCRATCH for p in claim.contents())


def finetune(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.task`` for ``cfg.seeds`` seeds; write ``out/metrics.json``.

    Returns the same dict as the JSON: ``score`` (median of the main dev split's score),
    ``metrics`` (medians of the main split), ``summary`` (every split and metric with spread),
    ``runs`` (per seed), ``parameters`` (of the encoder, without the task head), ``config``.

    ``out`` is claimed like every stage's output folder (``runfolder.claim_folder``): one
    process at a time, ``overwrite`` replaces only an earlier output of distilkit that holds
    none of the inputs, and the results are built in a scratch folder and moved in whole at
    the end, so a failed or interrupted run leaves nothing that looks like a result.
    """
    cfg.validate()
    if not cfg.model or not cfg.task or not cfg.data_dir or not cfg.out:
        raise DistilkitError("finetune needs model, task, data_dir and out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    # Every input is checked before the folder is claimed and before any training: a bad file
    # costs seconds and one line, not a run.
    if cfg.form == "bi":
        check_task(cfg.task)
    data = load_task(cfg.task, cfg.data_dir, cfg.classification)
    spec = data.spec
    train = data.train
    if cfg.max_train_examples and cfg.max_train_examples < len(train):
        rng = random.Random(cfg.subset_seed)
        keep = sorted(rng.sample(range(len(train)), cfg.max_train_examples))
        train = [train[i] for i in keep]
    dev = {
        split: ex[: cfg.max_eval_examples] if cfg.max_eval_examples else ex
        for split, ex in data.dev.items()
    }
    ref, config, tokenizer = open_model(cfg.model)
    if cfg.form == "bi" and Path(ref).is_dir():
        sentence_spec(ref)  # a broken pooling config fails here, not after the claim
    # The value used is the one recorded in metrics.json (a copy: the caller's cfg is theirs).
    cfg = dataclasses.replace(cfg, max_length=fit_max_length(cfg.max_length, config, cfg.model))
    inputs = {
        "the model": cfg.model,
        "the data": cfg.data_dir,
        "the training file": cfg.classification.train_file,
        "the dev file": cfg.classification.dev_file,
    }
    with claim_folder(
        cfg.out, "finetune", overwrite=overwrite, inputs=inputs, is_residue=only_scratch
    ) as claim:
        tmp = claim.scratch(SCRATCH)
        try:
            result = _finetune_into(cfg, spec, data, train, dev, ref, tokenizer, device, tmp)
            claim.publish(tmp, last="metrics.json")
        except BaseException:  # Ctrl-C included: no half-written results stay behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    spread = result["summary"][result["main_split"]]["score"]
    log.info(
        "%s score median %.4f (min %.4f, max %.4f over %d seeds) -> %s",
        spec.title,
        spread["median"],
        spread["min"],
        spread["max"],
        len(result["runs"]),
        Path(cfg.out) / "metrics.json",
    )
    return result


def _finetune_into(
    cfg: FinetuneConfig,
    spec: TaskSpec,
    data,
    train: list[Example],
    dev: dict[str, list[Example]],
    ref: str,
    tokenizer,
    device: torch.device,
    tmp: Path,
) -> dict[str, Any]:
    """Train every seed and write the results into ``tmp``: metrics.json and (save_model)
    seed-N/model."""
    log_plan(
        log,
        "finetune",
        {
            "task": f"{spec.title} from {cfg.data_dir}"
            + (" (bi-encoder: cosine of each sentence's embedding)" if cfg.form == "bi" else ""),
            "model": cfg.model,
            "data": f"{len(train):,} train examples (of {len(data.train):,}); dev "
            + ", ".join(f"{split} {len(ex):,}" for split, ex in dev.items()),
            "epochs": f"{cfg.epochs}"
            + (f", at most {cfg.max_steps} steps" if cfg.max_steps else "")
            + f"; {cfg.seeds} seed(s) from {cfg.seed}",
            "batch": batch_text(cfg.batch_size),
            "lr": cfg.lr,
            "precision": "bf16 autocast" if cfg.bf16 else "fp32",
            "device": f"{device}, threads {torch.get_num_threads()}",
            "output": Path(cfg.out),
        },
    )
    runs, parameters = [], None
    for i in range(cfg.seeds):
        seed = cfg.seed + i
        run, model = _train_one(cfg, spec, ref, tokenizer, train, dev, seed, device)
        runs.append(run)
        if parameters is None:
            parameters = count_parameters(model.base_model)
        if cfg.save_model:
            model_dir = tmp / f"seed-{seed}" / "model"
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        del model

    summary = summarise(runs)
    main = next(iter(summary))
    bi = cfg.form == "bi"  # a different measurement from the GLUE protocol's: named apart
    result = {
        "task": spec.name + BI_SUFFIX * bi,
        "title": spec.title + " (bi-encoder)" * bi,
        "kind": "finetune",
        "model": cfg.model,
        "parameters": parameters,
        "n_train": len(train),
        "n_train_available": len(data.train),
        "n_dev": {k: len(v) for k, v in dev.items()},
        "main_split": main,
        "score": summary[main]["score"]["median"],
        "metrics": {k: v["median"] for k, v in summary[main].items()},
        "summary": summary,
        "runs": runs,
        "config": to_dict(cfg),
        "environment": environment(),
    }
    (tmp / "metrics.json").write_text(result_json(result), encoding="utf-8")
    return result
