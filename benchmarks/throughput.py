"""Distillation throughput: distilkit's path (a) against the reference computation (b).

Same teacher, student, data, batch size, sequence length and number of steps for both:

(a) ``distilkit.distill.distill`` itself: the real loop (length-grouped batches masked in the
    DataLoader, vocabulary logits only at the rows a loss reads, AdamW, clipping, logging).
    A thin subclass of ``DistillObjective`` only reads the clock; nothing is copied.
(b) A re-implementation of the reference research code's step (Hugging Face
    ``examples/research_projects/distillation/distiller.py``) as its ``train.py`` runs by
    default: batches grouped by length (``group_by_size``: random order, then batches of
    sequences whose lengths fall in the same 4-token bin), padded to their longest sequence,
    masking in the step, full-vocabulary logits at every position of both models,
    ``masked_select`` of the selected rows, ``KLDivLoss(batchmean)``,
    ``CrossEntropyLoss(ignore_index=-100)`` over every position, ``CosineEmbeddingLoss``,
    per-parameter AdamW, clipping, ``loss.item()`` bookkeeping; fp32 unless asked otherwise.
    Both of its L_ce modes run: over every real token (its default) and, with
    ``restrict_ce_to_mask``, over the masked targets only (distilkit's default objective).

Ratios are taken against the reference's faster mode (``--baseline best``), so that the
speed-up is never inflated by running the reference slower than it can run.

Before timing, both compute the losses of one batch with dropout off and must agree, in both
L_ce modes.

Each measurement runs in its own process (clean peak RSS / CUDA peak), variants interleaved
and repeated; medians and ratios are printed. Tokens are real (non-padding) tokens.

Variants are ``PATH:PRECISION[+FLAG...]``: path ``a`` (distilkit) or ``b`` (reference);
flags ``compile`` (a only), ``ce-all`` (L_ce over every real token: ``restrict_ce_to_mask``
off) and ``random-batches`` (b only: the reference with ``--group_by_size`` turned off).

Examples (from the repository root)::

    # 4-layer/256 random teacher -> 2-layer student, Wikipedia sample packed to 128 tokens
    python benchmarks/throughput.py --pair small \
        --corpus /work/shared/data/corpus/enwiki2015_sample.txt.gz --work /tmp/dk/small
    # all-MiniLM-L6-v2 (random MLM head) -> 3-layer student
    python benchmarks/throughput.py --pair minilm --data /tmp/dk/small/data-128 --work /tmp/dk/mini
    # where the time goes: one profiled run per path
    python benchmarks/throughput.py --pair small --data ... --profile
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Random teachers: (layers, hidden, heads, intermediate, max positions).
RANDOM_TEACHERS = {
    "small": (4, 256, 4, 1024, 512),
    "bert-base": (12, 768, 12, 3072, 512),
    "tiny": (2, 32, 2, 64, 128),
}
PAIRS = (*RANDOM_TEACHERS, "minilm")
ALPHAS = {"alpha_ce": 5.0, "alpha_mlm": 2.0, "alpha_cos": 1.0, "temperature": 2.0}


# ---------------------------------------------------------------------------------------------
# Setup: models and data


def synthetic_tokenizer(folder: Path, vocab_size: int):
    """A word-level ``BertTokenizerFast``: 5 specials, then words ``w5 .. w{V-1}``."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(5, vocab_size)]
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)


def synthetic_corpus(path: Path, vocab_size: int, n_tokens: int, seed: int = 0) -> Path:
    """A .txt corpus of about ``n_tokens`` words with a Zipf-like frequency profile.

    Documents have a geometric number of paragraphs of log-normal length, so packed sequences
    mix full chunks with shorter document ends, as real text does.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_words = vocab_size - 5
    docs, total = [], 0
    while total < n_tokens:
        paras = []
        for _ in range(int(rng.geometric(1 / 6))):
            n = int(np.clip(rng.lognormal(3.8, 0.6), 4, 400))
            ids = 5 + np.minimum((n_words * rng.random(n) ** 4).astype(np.int64), n_words - 1)
            paras.append(" ".join(f"w{i}" for i in ids))
            total += n
        docs.append("\n".join(paras))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def random_teacher(folder: Path, tok, pair: str, seed: int = 0) -> Path:
    """A randomly initialised ``BertForMaskedLM`` of the size named by ``pair``, dropout 0.1."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    layers, hidden, heads, ffn, max_pos = RANDOM_TEACHERS[pair]
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_pos,
    )
    BertForMaskedLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_pair(pair: str, work: Path, synthetic: bool, seed: int = 0) -> tuple[Path, Path]:
    """``(teacher_dir, student_dir)`` under ``work``; reused when already built for ``pair``."""
    import torch

    from distilkit.modeling import load_mlm, load_tokenizer
    from distilkit.student import init_student

    marker = work / "pair.json"
    want = {"pair": pair, "synthetic": synthetic, "seed": seed}
    teacher, student = work / "teacher", work / "student"
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return teacher, student
    work.mkdir(parents=True, exist_ok=True)
    if pair == "minilm":
        if synthetic:
            raise SystemExit("--pair minilm needs its own tokenizer: give --corpus or --data")
        torch.manual_seed(seed)  # the missing MLM head is initialised randomly
        model, _ = load_mlm("minilm")
        model.save_pretrained(teacher)
        load_tokenizer("minilm").save_pretrained(teacher)
    else:
        vocab = 30522 if pair != "tiny" else 512
        tok = synthetic_tokenizer(work / "vocab", vocab) if synthetic else load_tokenizer("minilm")
        random_teacher(teacher, tok, pair, seed)
    init_student(teacher, student, overwrite=True)
    marker.write_text(json.dumps(want))
    return teacher, student


def build_data(
    teacher: Path, work: Path, max_length: int, corpus: str | None, synthetic_tokens: int
) -> Path:
    """Prepare ``corpus`` (or a synthetic one) with the teacher's tokenizer; reused if present."""
    from distilkit.data import PrepareConfig, prepare

    out = work / f"data-{max_length}"
    if (out / "manifest.json").is_file():
        return out
    if corpus is None:
        vocab = len((work / "vocab" / "vocab.txt").read_text().splitlines())
        corpus = str(synthetic_corpus(work / "corpus.txt", vocab, synthetic_tokens))
    prepare(
        PrepareConfig(
            sources=[corpus],
            tokenizer=str(teacher),
            out_dir=str(out),
            max_length=max_length,
            validation_fraction=0.02,
            overwrite=True,
        )
    )
    return out


# ---------------------------------------------------------------------------------------------
# Measuring


def _rss_mb() -> tuple[float | None, float | None]:
    """(current RSS, high-water RSS) of this process in MB, from /proc (Linux)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None, None


def _reset_rss_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Meter:
    """Clock, CPU clock and memory over the timed steps of one run.

    ``micro(batch)`` is called once per micro-batch, just before its forward pass; the first
    ``warmup`` calls are not timed. ``stop()`` ends the interval (the loop's final evaluation
    for (a), the end of the loop for (b)).
    """

    def __init__(self, warmup: int, device, profile: bool = False):
        self.warmup, self.device, self.profile = warmup, device, profile
        self.calls = self.tokens = self.slots = 0
        self.t0 = self.c0 = self.t1 = self.c1 = None
        self.rss_base = None
        self.rss_reset = False
        self.prof = None
        self.warmup_start = None

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def micro(self, input_ids, n_tokens: int) -> None:
        import torch

        if self.calls == 0:
            self.warmup_start = time.perf_counter()
            self.rss_reset = _reset_rss_peak()
            self.rss_base = _rss_mb()[0]
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
                self.cuda_base = torch.cuda.memory_allocated(self.device) / 2**20
        if self.calls == self.warmup:
            self._sync()
            if self.profile:
                self.prof = torch.profiler.profile(record_shapes=True)
                self.prof.start()
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        if self.calls >= self.warmup:
            self.tokens += int(n_tokens)
            self.slots += int(input_ids.numel())
        self.calls += 1

    def stop(self) -> None:
        if self.t1 is not None or self.t0 is None:
            return
        self._sync()
        self.t1, self.c1 = time.perf_counter(), time.process_time()
        self.rss_end = _rss_mb()[1]  # high-water mark of the training, before any saving
        if self.prof is not None:
            self.prof.stop()

    def result(self, vocab_size: int) -> dict:
        import torch

        if self.t1 is None:
            raise RuntimeError("the timed interval never ended (no validation data?)")
        wall, cpu = self.t1 - self.t0, self.c1 - self.c0
        rss, hwm = _rss_mb()[0], self.rss_end
        out = {
            "timed_steps": self.calls - self.warmup,
            "tokens": self.tokens,
            "slots": self.slots,
            "padding": 1 - self.tokens / max(self.slots, 1),
            "wall_s": wall,
            "cpu_s": cpu,
            "warmup_s": self.t0 - self.warmup_start,
            "tokens_per_s": self.tokens / wall,
            "tokens_per_cpu_s": self.tokens / cpu,
            "rss_base_mb": self.rss_base,
            "rss_peak_mb": hwm if self.rss_reset else None,
            "rss_train_mb": hwm - self.rss_base if self.rss_reset and self.rss_base else None,
            "rss_now_mb": rss,
        }
        if self.device.type == "cuda":
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["cuda_train_mb"] = out["cuda_peak_mb"] - self.cuda_base
            out["cuda_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        if self.prof is not None:
            out["profile"] = profile_summary(self.prof, vocab_size, self.device.type)
        return out


def profile_summary(prof, vocab_size: int, device_type: str) -> dict:
    """Where the time goes: top operators by self time, and operators touching the vocabulary.

    An operator counts as "vocabulary-sized" when one of its inputs has a dimension equal to the
    vocabulary size: the logits matmuls, their softmaxes, their gradients and their copies.
    """
    key = "self_device_time_total" if device_type == "cuda" else "self_cpu_time_total"
    by_shape = prof.key_averages(group_by_input_shape=True)
    total = sum(getattr(e, key) for e in by_shape) or 1.0
    vocab = sum(
        getattr(e, key)
        for e in by_shape
        if any(vocab_size in (s if isinstance(s, (list, tuple)) else []) for s in e.input_shapes)
    )
    plain = prof.key_averages()
    rows = sorted(plain, key=lambda e: getattr(e, key), reverse=True)[:20]
    top = [
        {"op": e.key, "share": getattr(e, key) / total, "calls": e.count}
        for e in rows
        if getattr(e, key) > 0
    ]
    ranges = {}
    for e in plain:  # labelled ranges (record_function): their total, children included
        if e.key.startswith(("Optimizer.step", "enumerate(DataLoader)", "reference::")):
            ranges[e.key] = e.cpu_time_total / total
    return {"vocab_share": vocab / total, "top": top, "ranges": ranges, "total_us": total}


# ---------------------------------------------------------------------------------------------
# (a) distilkit's path


def run_distilkit(spec: dict) -> dict:
    """Run ``distill`` for ``warmup + steps`` optimizer steps and time the last ``steps``."""
    import torch

    import distilkit.distill as dd
    from distilkit.loop import OptimConfig, TrainConfig, resolve_precision

    device = torch.device(spec["device"])
    meter = Meter(spec["warmup"], device, spec.get("profile", False))

    class TimedObjective(dd.DistillObjective):
        def losses(self, module, b, norms):
            meter.micro(b["input_ids"], b["n_tokens"])
            return super().losses(module, b, norms)

        def evaluate(self, batches):
            meter.stop()
            return super().evaluate(batches)

    _stand_ins_for_missing_optional_modules(dd)
    compile_fn = torch.compile
    if spec.get("compile_backend"):  # dry runs: trace with dynamo, skip code generation
        import functools

        torch.compile = functools.partial(compile_fn, backend=spec["compile_backend"])
    cfg = dd.DistillConfig(
        teacher=spec["teacher"],
        student=spec["student"],
        data=spec["data"],
        out_dir=spec["out_dir"],
        overwrite=True,
        loss=dd.LossConfig(**ALPHAS, restrict_ce_to_mask=spec["restrict_ce_to_mask"]),
        train=TrainConfig(
            batch_size=spec["batch_size"],
            max_steps=spec["warmup"] + spec["steps"],
            log_every=spec["warmup"] + spec["steps"],
            eval_batches=1,
            precision=spec["precision"],
            compile=spec["compile"],
            threads=spec["threads"],
            num_workers=spec.get("num_workers", 0),
            seed=spec["seed"],
            optim=OptimConfig(),
        ),
    )
    original = dd.DistillObjective
    dd.DistillObjective = TimedObjective
    try:
        dd.distill(cfg)
    finally:
        dd.DistillObjective = original
        torch.compile = compile_fn
    vocab = json.loads((Path(spec["data"]) / "manifest.json").read_text())["vocab_size"]
    return meter.result(vocab) | {"precision": resolve_precision(spec["precision"], device)}


def _stand_ins_for_missing_optional_modules(dd) -> None:
    """A bare GPU machine may lack TensorBoard and matplotlib (the loop's logging and the loss
    plot, both outside the timed steps): log nowhere and skip the plot rather than fail."""
    import types

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:

        class NullWriter:
            def __init__(self, *args, **kwargs):
                pass

            def add_scalar(self, *args, **kwargs):
                pass

            def flush(self):
                pass

            def close(self):
                pass

        sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=NullWriter)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        dd.plot_curves = lambda out: None


# ---------------------------------------------------------------------------------------------
# (b) the reference computation


class ReferenceDistiller:
    """The reference ``Distiller``'s masking and step (MLM students), written out again.

    Shapes: ``token_ids`` (B, L) padded, ``lengths`` (B,). Full-vocabulary logits (B, L, V) are
    computed for both models at every position; rows are then chosen with ``masked_select``.
    """

    def __init__(
        self,
        student,
        teacher,
        token_probs,
        special,
        vocab_size: int,
        restrict_ce_to_mask: bool = False,  # the reference's default (a store_true flag)
    ):
        import torch
        from torch import nn

        self.student, self.teacher = student, teacher
        self.restrict_ce_to_mask = restrict_ce_to_mask
        self.token_probs, self.special, self.vocab_size = token_probs, special, vocab_size
        self.pred_probs = torch.tensor([0.8, 0.1, 0.1], device=token_probs.device)
        self.temperature = ALPHAS["temperature"]
        self.ce_loss_fct = nn.KLDivLoss(reduction="batchmean")
        self.lm_loss_fct = nn.CrossEntropyLoss(ignore_index=-100)
        self.cosine_loss_fct = nn.CosineEmbeddingLoss(reduction="mean")

    def prepare_batch_mlm(self, token_ids, lengths):
        """``prepare_batch_mlm``: masked ids, attention mask, labels (-100 where not a target)."""
        import torch

        attn_mask = torch.arange(token_ids.size(1), device=lengths.device) < lengths[:, None]
        bs, max_seq_len = token_ids.size()
        mlm_labels = token_ids.new(token_ids.size()).copy_(token_ids)
        x_prob = self.token_probs[token_ids.flatten()]
        n_tgt = math.ceil(0.15 * lengths.sum().item())
        tgt_ids = torch.multinomial(x_prob / x_prob.sum(), n_tgt, replacement=False)
        pred_mask = torch.zeros(bs * max_seq_len, dtype=torch.bool, device=token_ids.device)
        pred_mask[tgt_ids] = 1
        pred_mask = pred_mask.view(bs, max_seq_len)
        pred_mask[token_ids == self.special["pad"]] = 0
        _token_ids_real = token_ids[pred_mask]
        _token_ids_rand = _token_ids_real.clone().random_(self.vocab_size)
        _token_ids_mask = _token_ids_real.clone().fill_(self.special["mask"])
        probs = torch.multinomial(self.pred_probs, len(_token_ids_real), replacement=True)
        _token_ids = (
            _token_ids_mask * (probs == 0).long()
            + _token_ids_real * (probs == 1).long()
            + _token_ids_rand * (probs == 2).long()
        )
        token_ids = token_ids.masked_scatter(pred_mask, _token_ids)
        mlm_labels[~pred_mask] = -100
        return token_ids, attn_mask, mlm_labels

    def losses(self, input_ids, attention_mask, lm_labels) -> dict:
        """``Distiller.step`` up to the loss, in either ``restrict_ce_to_mask`` mode."""
        import torch
        from torch import nn

        s_out = self.student(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        with torch.no_grad():
            t_out = self.teacher(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
            )
        s_logits, s_hidden_states = s_out["logits"], s_out["hidden_states"]  # (B, L, V)
        t_logits, t_hidden_states = t_out["logits"], t_out["hidden_states"]
        if self.restrict_ce_to_mask:
            mask = (lm_labels > -1).unsqueeze(-1).expand_as(s_logits)  # (B, L, V)
        else:
            mask = attention_mask.unsqueeze(-1).expand_as(s_logits)  # (B, L, V)
        s_logits_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
        t_logits_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
        t = self.temperature
        loss_ce = self.ce_loss_fct(
            nn.functional.log_softmax(s_logits_slct / t, dim=-1),
            nn.functional.softmax(t_logits_slct / t, dim=-1),
        ) * (t**2)
        loss_mlm = self.lm_loss_fct(s_logits.view(-1, s_logits.size(-1)), lm_labels.view(-1))
        s_h, t_h = s_hidden_states[-1], t_hidden_states[-1]  # (B, L, H)
        mask = attention_mask.unsqueeze(-1).expand_as(s_h)
        dim = s_h.size(-1)
        s_h_slct = torch.masked_select(s_h, mask).view(-1, dim)
        t_h_slct = torch.masked_select(t_h, mask).view(-1, dim)
        target = s_h_slct.new(s_h_slct.size(0)).fill_(1)
        loss_cos = self.cosine_loss_fct(s_h_slct, t_h_slct, target)
        return {"ce": loss_ce, "mlm": loss_mlm, "cos": loss_cos}

    def total(self, parts: dict):
        return (
            ALPHAS["alpha_ce"] * parts["ce"]
            + ALPHAS["alpha_mlm"] * parts["mlm"]
            + ALPHAS["alpha_cos"] * parts["cos"]
        )


# The reference's length bins: ``create_lengths_groups(lengths, k=max_model_input_size)`` with
# bins 3, 7, 11, ..., k - 1 (k = 512 for BERT): a batch holds lengths within 4 tokens.
REFERENCE_BINS = list(range(3, 512, 4))


def _reference_batches(data, batch_size: int, pad_id: int, seed: int, group_by_size: bool = True):
    """The reference's batches, endless: ``GroupedBatchSampler`` over a ``RandomSampler``
    (``group_by_size``, its default) or plain random batches; padded to their longest sequence.

    Grouped: indices come in random order and go to the buffer of their length bin; a full
    buffer is a batch. At the end of an epoch the part-filled buffers are concatenated in bin
    order and cut into batches, as the reference does.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    groups = np.searchsorted(REFERENCE_BINS, data.lengths, side="right")  # bisect_right

    def epoch(perm):
        if not group_by_size:
            for start in range(0, len(perm), batch_size):
                yield perm[start : start + batch_size]
            return
        buffers: dict[int, list[int]] = {}
        for idx in perm:
            buf = buffers.setdefault(int(groups[idx]), [])
            buf.append(int(idx))
            if len(buf) == batch_size:
                yield buf
                buffers[int(groups[idx])] = []
        rest = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, len(rest), batch_size):
            yield rest[start : start + batch_size]

    while True:
        for batch in epoch(rng.permutation(len(data))):
            seqs = [data[j] for j in batch]
            lengths = torch.tensor([len(s) for s in seqs])
            ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.from_numpy(s)
            yield ids, lengths


def _load_reference_models(spec: dict, device):
    from transformers import AutoModelForMaskedLM

    # Reference: student in train mode, teacher in eval mode, both float32 weights.
    student = AutoModelForMaskedLM.from_pretrained(spec["student"]).to(device).train()
    teacher = AutoModelForMaskedLM.from_pretrained(spec["teacher"]).to(device).eval()
    return student, teacher


def run_reference(spec: dict) -> dict:
    """The reference loop for ``warmup + steps`` steps; the last ``steps`` timed."""
    import numpy as np
    import torch

    from distilkit.data import TokenDataset

    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    data = TokenDataset(spec["data"], "train")
    special = data.special_ids
    counts = np.maximum(data.token_counts(), 1) ** -0.7
    for idx in special.values():
        counts[idx] = 0.0
    token_probs = torch.from_numpy(counts).float().to(device)
    student, teacher = _load_reference_models(spec, device)
    ref = ReferenceDistiller(
        student,
        teacher,
        token_probs,
        special,
        data.vocab_size,
        restrict_ce_to_mask=spec["restrict_ce_to_mask"],
    )
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {
            "params": [
                p
                for n, p in student.named_parameters()
                if not any(nd in n for nd in no_decay) and p.requires_grad
            ],
            "weight_decay": 0.0,
        },
        {
            "params": [
                p
                for n, p in student.named_parameters()
                if any(nd in n for nd in no_decay) and p.requires_grad
            ],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=5e-4, eps=1e-6, betas=(0.9, 0.98), foreach=False)
    total = spec["warmup"] + spec["steps"]
    warm = math.ceil(0.05 * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: s / max(1, warm) if s < warm else max(0.0, (total - s) / (total - warm)),
    )
    precision = spec["precision"] if spec["precision"] != "auto" else "fp32"
    if precision == "fp32":
        amp = None
    elif device.type == "cuda":
        amp = torch.bfloat16 if precision == "bf16" else torch.float16
    else:
        amp = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    meter = Meter(spec["warmup"], device, spec.get("profile", False))
    batches = _reference_batches(
        data, spec["batch_size"], special["pad"], spec["seed"], spec["group_by_size"]
    )
    last_losses = []
    for _ in range(total):
        with torch.profiler.record_function("reference::batch"):
            token_ids, lengths = next(batches)
            token_ids, lengths = token_ids.to(device), lengths.to(device)
            input_ids, attn_mask, labels = ref.prepare_batch_mlm(token_ids, lengths)
        meter.micro(input_ids, int(attn_mask.sum()))
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            parts = ref.losses(input_ids, attn_mask, labels)
        loss = ref.total(parts)
        if (loss != loss).data.any():  # the reference's NaN check (a host sync)
            raise RuntimeError("NaN loss")
        last_losses.append(loss.item())
        (scaler.scale(loss) if scaler else loss).backward()
        with torch.profiler.record_function("reference::optimize"):
            if scaler:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
    meter.stop()
    return meter.result(data.vocab_size) | {"precision": precision}


# ---------------------------------------------------------------------------------------------
# Equivalence of the two computations


def check_same_losses(teacher: str, student: str, data_dir: str, batch_size: int) -> dict:
    """Losses of (a) and (b) on one masked batch, dropout off, in both L_ce modes; raises if
    they differ. Keys: ``ce``, ``mlm``, ``cos`` (L_ce on the masked targets) and ``ce-all``
    (L_ce over every real token)."""
    import torch

    from distilkit.data import TokenDataset
    from distilkit.distill import DistillObjective, LossConfig
    from distilkit.loop import collate
    from distilkit.masking import MaskingConfig, token_weights

    data = TokenDataset(data_dir, "train")
    special = data.special_ids
    weights = token_weights(data.token_counts(), list(special.values()), 0.7)
    seqs = [data[i] for i in range(min(batch_size, 4, len(data)))]  # full logits: keep it small
    b = collate(
        seqs,
        weights,
        MaskingConfig(),
        special["mask"],
        special["pad"],
        torch.Generator().manual_seed(0),
    )
    s, t = _load_reference_models({"student": student, "teacher": teacher}, torch.device("cpu"))
    s.eval()
    labels = torch.full((b["input_ids"].numel(),), -100, dtype=torch.long)
    labels[b["target_idx"]] = b["labels"]
    am = b["attention_mask"].bool()  # the reference's mask is boolean
    out = {}
    for restrict, keys in ((True, ("ce", "mlm", "cos")), (False, ("ce",))):
        obj = DistillObjective(s, t, LossConfig(**ALPHAS, restrict_ce_to_mask=restrict))
        ref = ReferenceDistiller(
            s, t, weights, special, data.vocab_size, restrict_ce_to_mask=restrict
        )
        with torch.no_grad():
            norms = {k: float(v) for k, v in obj.rows(b).items()}
            got = obj.losses(obj.student, b, norms)
            want = ref.losses(b["input_ids"], am, labels.view_as(b["input_ids"]))
        for k in keys:
            a, r = float(got[k]), float(want[k])
            name = k if restrict else k + "-all"
            out[name] = {"a": a, "b": r, "abs_diff": abs(a - r)}
            if not math.isclose(a, r, rel_tol=1e-4, abs_tol=1e-5):
                raise SystemExit(f"losses differ: L_{name} (a) {a!r} vs (b) {r!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Orchestration


VARIANT_FLAGS = {"compile": "a", "ce-all": "ab", "random-batches": "b"}


def parse_variant(text: str) -> dict:
    """``a:fp32``, ``a:bf16+compile``, ``b:fp32+ce-all`` -> path, precision and options."""
    path, _, rest = text.partition(":")
    precision, *flags = (rest or "auto").split("+")
    if path not in ("a", "b") or any(f not in VARIANT_FLAGS for f in flags):
        raise SystemExit(
            f"bad variant {text!r} (expected a|b:PRECISION[+FLAG...], flags "
            f"{', '.join(VARIANT_FLAGS)})"
        )
    for f in flags:
        if path not in VARIANT_FLAGS[f]:
            raise SystemExit(f"variant {text!r}: path {path} has no {f} option")
    return {
        "name": text,
        "path": path,
        "precision": precision,
        "compile": "compile" in flags,
        "restrict_ce_to_mask": "ce-all" not in flags,
        "group_by_size": "random-batches" not in flags,
    }


def run_one(
    spec: dict, in_process: bool, env: dict | None = None, timeout: float | None = None
) -> dict | None:
    """One measurement, in a fresh process unless ``in_process``; None when out of time."""
    if in_process:
        return (run_distilkit if spec["path"] == "a" else run_reference)(spec)
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=os.environ | {"TQDM_DISABLE": "1"} | (env or {}),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"worker {spec['name']} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine_info() -> dict:
    import torch

    from distilkit.bench import cpu_features, cpu_name

    info = {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def best_reference(results: list[dict], variants: list[dict]) -> str:
    """The reference (b) variant with the highest median tokens/s: the reference as fast as it
    can run here, so that no ratio is inflated by one of its slower modes."""
    refs = [v["name"] for v in variants if v["path"] == "b"]
    if not refs:
        raise SystemExit("no reference (b) variant was measured")
    speed = {n: _median([r["tokens_per_s"] for r in results if r["name"] == n]) for n in refs}
    return max(refs, key=lambda n: speed[n])


def summarise(results: list[dict], variants: list[dict], baseline: str) -> dict:
    """Medians per variant and ratios against ``baseline`` (median of per-repeat ratios too)."""
    keys = (
        "tokens_per_s",
        "tokens_per_cpu_s",
        "padding",
        "rss_peak_mb",
        "rss_train_mb",
        "cuda_peak_mb",
        "cuda_train_mb",
        "warmup_s",
    )
    rows = {}
    for v in variants:
        mine = [r for r in results if r["name"] == v["name"]]
        rows[v["name"]] = {k: _median([r.get(k) for r in mine]) for k in keys}
        rows[v["name"]]["precision"] = mine[0]["precision"]
        rows[v["name"]]["runs"] = len(mine)
    base = rows[baseline]
    for name, row in rows.items():
        ratios = {}
        for k in ("tokens_per_s", "tokens_per_cpu_s"):
            ratios[k] = row[k] / base[k]
            paired = [
                r[k] / rb[k]
                for r in results
                if r["name"] == name
                for rb in results
                if rb["name"] == baseline and rb["repeat"] == r["repeat"]
            ]
            ratios[k + "_paired_median"] = _median(paired)
        for k in ("rss_peak_mb", "rss_train_mb", "cuda_peak_mb", "cuda_train_mb"):
            if row[k] is not None and base[k]:
                ratios[k] = row[k] / base[k]
        row["vs_" + baseline] = ratios
    return rows


def print_table(rows: dict, baseline: str) -> None:
    cuda = any(r["cuda_peak_mb"] is not None for r in rows.values())
    head = f"{'variant':<24}{'prec':>6}{'tok/s':>10}{'tok/CPU-s':>11}{'pad':>6}"
    head += f"{'peak RSS MB':>13}{'train RSS MB':>14}"
    if cuda:
        head += f"{'CUDA peak MB':>14}"
    head += f"{'x tok/s':>9}{'x tok/CPU-s':>13}{'x train mem':>13}"
    print(head)
    for name, r in rows.items():
        x = r["vs_" + baseline]
        mem_key = "cuda_train_mb" if cuda else "rss_train_mb"
        line = f"{name:<24}{r['precision']:>6}{r['tokens_per_s']:>10.0f}"
        line += f"{r['tokens_per_cpu_s']:>11.0f}{r['padding']:>6.0%}"
        line += f"{_fmt(r['rss_peak_mb'])}{_fmt(r['rss_train_mb'], 14)}"
        if cuda:
            line += _fmt(r["cuda_peak_mb"], 14)
        line += f"{x['tokens_per_s']:>8.2f}x{x['tokens_per_cpu_s']:>12.2f}x"
        line += f"{x[mem_key]:>12.2f}x" if mem_key in x else f"{'-':>13}"
        print(line)


def _fmt(v, width: int = 13) -> str:
    return f"{v:>{width}.0f}" if v is not None else f"{'-':>{width}}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="small", choices=PAIRS, help="teacher -> student pair")
    ap.add_argument("--teacher", help="existing teacher folder (overrides --pair)")
    ap.add_argument("--student", help="existing student folder (with --teacher)")
    ap.add_argument("--data", help="folder from `distilkit prepare` (teacher's tokenizer)")
    ap.add_argument("--corpus", help="corpus to prepare when --data is not given")
    ap.add_argument("--synthetic-tokens", type=int, default=0, help="prepare a synthetic corpus")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--work", default="runs/throughput", help="models, data and run folders")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--num-workers", type=int, default=0, help="(a)'s DataLoader workers (train.num_workers)"
    )
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of the workers ('' leaves it unset). PASSIVE: idle OpenMP threads "
        "sleep instead of spinning; on a CPU shared with other jobs, spinning threads waiting "
        "for a descheduled peer cost several times the work itself",
    )
    ap.add_argument(
        "--variants",
        default="a:auto,b:fp32,b:fp32+ce-all",
        help="comma-separated PATH:PRECISION[+FLAG...]; the default is distilkit against the "
        "reference in both of its L_ce modes",
    )
    ap.add_argument(
        "--baseline",
        default="best",
        help="the variant ratios are taken against; 'best': the fastest reference (b) variant "
        "measured (median tokens/s)",
    )
    ap.add_argument("--compile-backend", help="torch.compile backend for +compile variants")
    ap.add_argument("--seed", type=int, default=56)
    ap.add_argument(
        "--budget", type=float, default=0, help="seconds for all runs; later ones skipped (0: none)"
    )
    ap.add_argument("--profile", action="store_true", help="one profiled run per variant")
    ap.add_argument("--in-process", action="store_true", help="no subprocess per run (tests)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    started = time.time()

    if args.worker:
        spec = json.loads(args.worker)
        logging.basicConfig(level=logging.WARNING)
        result = (run_distilkit if spec["path"] == "a" else run_reference)(spec)
        print("RESULT " + json.dumps(result | {"name": spec["name"], "repeat": spec["repeat"]}))
        return result

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work).resolve()
    synthetic = bool(args.synthetic_tokens) and not (args.data or args.corpus)
    if args.teacher:
        teacher = Path(args.teacher)
        student = Path(args.student) if args.student else work / "student"
        if not args.student and not (student / "config.json").is_file():
            from distilkit.student import init_student

            init_student(teacher, student, overwrite=True)
    else:
        teacher, student = build_pair(args.pair, work, synthetic, seed=0)
    if args.data:
        data = Path(args.data)
    elif args.corpus or synthetic:
        data = build_data(teacher, work, args.max_length, args.corpus, args.synthetic_tokens)
    else:
        raise SystemExit("give --data, --corpus or --synthetic-tokens")

    variants = [parse_variant(v) for v in args.variants.split(",")]
    if args.baseline == "best" and not any(v["path"] == "b" for v in variants):
        raise SystemExit("--baseline best needs a reference (b) variant")
    if args.baseline != "best" and args.baseline not in [v["name"] for v in variants]:
        raise SystemExit(f"--baseline {args.baseline} is not among --variants")
    info = machine_info()
    print(f"machine: {info}", flush=True)
    equal = check_same_losses(str(teacher), str(student), str(data), args.batch_size)
    print(
        "same batch, dropout off: "
        + ", ".join(f"L_{k} (a) {v['a']:.6f} (b) {v['b']:.6f}" for k, v in equal.items())
        + " (ce-all: L_ce over every real token)",
        flush=True,
    )

    env = {}
    if args.omp_wait_policy and "OMP_WAIT_POLICY" not in os.environ:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", env.get("OMP_WAIT_POLICY"))
    results, skipped = [], []
    repeats = 1 if args.profile else args.repeats
    for rep in range(repeats):
        order = variants if rep % 2 == 0 else variants[::-1]  # interleave, alternate order
        for v in order:
            spec = {
                **v,
                "repeat": rep,
                "teacher": str(teacher),
                "student": str(student),
                "data": str(data),
                "out_dir": str(work / f"run-{v['name'].replace(':', '-').replace('+', '-')}"),
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
                "threads": args.threads,
                "num_workers": args.num_workers,
                "device": args.device,
                "seed": args.seed,
                "profile": args.profile,
                "compile_backend": args.compile_backend,
            }
            left = args.budget - (time.time() - started) if args.budget else None
            r = (
                None
                if left is not None and left < 30
                else run_one(spec, args.in_process, env, left)
            )
            if r is None:
                skipped.append(f"{v['name']} (repeat {rep})")
                print(f"  repeat {rep} {v['name']:<22} skipped: out of time budget", flush=True)
                continue
            r |= {"name": v["name"], "repeat": rep}
            results.append(r)
            mem = r.get("cuda_peak_mb") or r.get("rss_peak_mb") or 0
            print(
                f"  repeat {rep} {v['name']:<22} {r['tokens_per_s']:9.0f} tok/s "
                f"{r['tokens_per_cpu_s']:9.0f} tok/CPU-s  padding {r['padding']:.0%}  "
                f"peak {mem:.0f} MB  (warm-up {r['warmup_s']:.1f} s)",
                flush=True,
            )
            if args.profile:
                _print_profile(v["name"], r["profile"])
    info["loadavg_end"] = os.getloadavg()
    measured = [v for v in variants if any(r["name"] == v["name"] for r in results)]
    baseline = args.baseline
    if baseline == "best":
        baseline = best_reference(results, measured)
    if baseline not in [v["name"] for v in measured]:
        raise SystemExit(f"the baseline {baseline} was not measured")
    rows = summarise(results, measured, baseline)
    print(
        f"\npair {args.teacher or args.pair}: batch {args.batch_size}, sequences <= "
        f"{json.loads((data / 'manifest.json').read_text())['max_length']} tokens, "
        f"{args.steps} timed steps after {args.warmup}, {repeats} repeat(s), "
        f"{args.threads} threads, {args.device}; medians"
    )
    print_table(rows, baseline)
    if args.baseline == "best":
        print(f"ratios against the reference's fastest mode here: {baseline}")
    print(f"machine: {info['cpu']} ({', '.join(info['cpu_features']) or 'features unknown'})")
    print(f"load average: start {info['loadavg']}, end {info['loadavg_end']}")
    if skipped:
        print("skipped (time budget): " + ", ".join(skipped))
    out = {
        "args": vars(args),
        "machine": info,
        "same_losses": equal,
        "baseline": baseline,
        "results": results,
        "summary": rows,
        "skipped": skipped,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def _print_profile(name: str, prof: dict) -> None:
    print(f"    profile {name}: vocabulary-sized operators {prof['vocab_share']:.0%} of self time")
    for label, share in sorted(prof["ranges"].items(), key=lambda kv: -kv[1]):
        print(f"      range {label:<60} {share:6.1%}")
    for row in prof["top"][:15]:
        print(f"      {row['op']:<60} {row['share']:6.1%}  x{row['calls']}")


if __name__ == "__main__":
    main()
