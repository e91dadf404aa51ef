"""``distilkit distill``: the DistilBERT triple loss, with vocabulary logits only where needed.

L = alpha_ce * L_ce + alpha_mlm * L_mlm + alpha_cos * L_cos (see ``losses``), teacher and
student fed the same dynamically masked batch. The vocabulary projection, the largest matrix
product of a small student, runs only on the rows a loss reads: the masked targets (or every real
token when ``restrict_ce_to_mask`` is off), never on padding.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from distilkit import __version__
from distilkit.checkpoints import finite_number, flatten
from distilkit.config import to_dict
from distilkit.data import TokenDataset, vocab_fingerprint
from distilkit.errors import DistilkitError
from distilkit.loop import (
    RUN_MARKER,
    TrainConfig,
    claim_run_folder,
    plot_curves,
    run,
    save_final,
    setup_runtime,
)
from distilkit.losses import hidden_cosine, mlm_cross_entropy, soft_target_kl
from distilkit.masking import MaskingConfig
from distilkit.modeling import (
    count_parameters,
    encoder_of,
    load_mlm,
    load_tokenizer,
    mlm_head_of,
    resolve_model,
)
from distilkit.runfolder import fingerprint
from distilkit.sentence import (
    EmbeddingLossConfig,
    EmbeddingObjective,
    save_sentence_transformer,
    sentence_ends,
    sentence_spec,
)

log = logging.getLogger(__name__)

DEFAULT_ALPHA_CE = 5.0


@dataclass
class LossConfig:
    """Weights of the triple loss (defaults: the reference's single-GPU recipe 5/2/1, T=2)."""

    objective: Literal["auto", "triple", "embedding"] = "auto"
    """triple: the paper's L_ce/L_mlm/L_cos on masked text. embedding: keep a sentence encoder's
    pooled sentence embeddings (loss.embedding). auto: embedding for a sentence-transformers
    teacher (modules.json with a Pooling module), triple otherwise."""
    alpha_ce: float | None = None
    """Soft-target KL weight; unset means 5.0, or 0 when the teacher has no masked-LM head."""
    alpha_mlm: float = 2.0
    """Masked-LM weight (L_mlm, the hard labels)."""
    alpha_cos: float = 1.0
    """Weight of L_cos: 1 - cos of student and teacher last hidden states."""
    temperature: float = 2.0
    """Softmax temperature T of L_ce (which is scaled by T^2)."""
    restrict_ce_to_mask: bool = True
    """L_ce on masked positions only (True) or on every real token."""
    embedding: EmbeddingLossConfig = field(default_factory=EmbeddingLossConfig)

    def validate(self) -> None:
        # NaN slips through `< 0` checks; every number must be finite.
        finite_number("loss.temperature", self.temperature)
        if self.temperature <= 0:
            raise DistilkitError("loss.temperature must be > 0")
        for name in ("alpha_ce", "alpha_mlm", "alpha_cos"):
            v = getattr(self, name)
            if v is not None:
                finite_number(f"loss.{name}", v, 0.0)


@dataclass
class DistillConfig:
    """Options of ``distilkit distill``."""

    teacher: str = ""
    """Teacher: folder, hub id, or 'minilm' (the packaged all-MiniLM-L6-v2)."""
    student: str = ""
    """Student folder from init-student; empty: build one from the teacher first."""
    student_layers: list[int] = field(default_factory=list)
    """Teacher layers for the student when it is built here (empty: the half-depth rule)."""
    data: str = ""
    """Folder written by ``distilkit prepare``."""
    out_dir: str = ""
    """Output folder: the student, checkpoints, metrics.jsonl, TensorBoard logs."""
    overwrite: bool = False
    """Replace an earlier run in out_dir."""
    freeze_word_embeddings: bool = False
    """Keep the student's word-embedding matrix as initialised (the teacher's rows). A small
    corpus moves only the rows of the tokens it contains; frozen, every token keeps the
    teacher's vector, and a CPU step of a 3-layer MiniLM student costs about half (the matrix
    is 11.7M of its 17.2M parameters, and AdamW updates all of it every step). Where the MLM
    vocabulary projection is tied to it (DistilBERT's default), that is frozen too, which
    matters for the triple loss."""
    loss: LossConfig = field(default_factory=LossConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DistillResult:
    out_dir: Path
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    final_eval: dict
    teacher_params: dict
    student_params: dict
    nonfinite_skipped: int
    halted: bool = False


class LMNet(nn.Module):
    """Encoder + vocabulary head of an MLM model, projecting only selected rows.

    ``forward(input_ids (B, L), attention_mask (B, L), rows (N,) | None)`` returns the last hidden
    states ``(B, L, H)`` and, when ``rows`` is given, logits ``(N, V)`` at those flat positions.
    Wrapping both in one module keeps DDP's gradient hooks on the path the loss uses.
    """

    def __init__(self, model: nn.Module, encoder_grad: bool = True):
        super().__init__()
        self.model = model
        self.encoder = encoder_of(model)
        self.head = mlm_head_of(model)
        self.encoder_grad = encoder_grad

    def forward(self, input_ids, attention_mask, rows=None):
        with torch.set_grad_enabled(self.encoder_grad and torch.is_grad_enabled()):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        logits = None
        if rows is not None:
            flat = hidden.reshape(-1, hidden.shape[-1])  # (B*L, H)
            logits = self.head(flat.index_select(0, rows))  # (N, V)
        return hidden, logits


class DistillObjective:
    """Triple loss between a trainable student and a frozen teacher."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: LossConfig,
        teacher_head: bool = True,
        student_head: bool = True,
    ):
        self.student = LMNet(student)
        self.teacher = LMNet(teacher)
        self.loss = loss
        # A headless teacher's vocabulary head is random: its accuracy and the student's
        # agreement with it mean nothing, so they are not reported.
        self.teacher_head = teacher_head
        # A fresh student head that no loss trains predicts nothing: no MLM metrics for it.
        self.student_head = student_head
        w = {"ce": loss.alpha_ce or 0.0, "mlm": loss.alpha_mlm, "cos": loss.alpha_cos}
        self.weights = {k: v for k, v in w.items() if v > 0}
        self.part_names = tuple(self.weights)
        # With no vocabulary loss the head gets no gradient; DDP must be told.
        self.find_unused = "ce" not in self.weights and "mlm" not in self.weights

    def train_module(self) -> nn.Module:
        return self.student

    def _logit_rows(self, batch: dict) -> torch.Tensor:
        full = "ce" in self.weights and not self.loss.restrict_ce_to_mask
        return batch["real_idx"] if full else batch["target_idx"]

    def rows(self, batch: dict) -> dict[str, int]:
        n = {
            "ce": len(self._logit_rows(batch)),
            "mlm": len(batch["target_idx"]),
            "cos": len(batch["real_idx"]),
        }
        return {k: n[k] for k in self.part_names}

    def losses(self, module: nn.Module, b: dict, norms: dict[str, float]) -> dict:
        needs_logits = "ce" in self.weights or "mlm" in self.weights
        rows = self._logit_rows(b) if needs_logits else None
        s_hidden, s_logits = module(b["input_ids"], b["attention_mask"], rows)
        with torch.no_grad():
            t_rows = rows if "ce" in self.weights else None
            t_hidden, t_logits = self.teacher(b["input_ids"], b["attention_mask"], t_rows)
        out = {}
        if "ce" in self.weights:
            out["ce"] = soft_target_kl(s_logits, t_logits, self.loss.temperature, norms["ce"])
        if "mlm" in self.weights:
            # When L_ce covers all real tokens, the targets are a subset of those rows.
            mlm_logits = s_logits if rows is b["target_idx"] else s_logits[b["target_in_real"]]
            out["mlm"] = mlm_cross_entropy(mlm_logits, b["labels"], norms["mlm"])
        if "cos" in self.weights:
            h = s_hidden.shape[-1]
            s_real = s_hidden.reshape(-1, h).index_select(0, b["real_idx"])  # (R, H)
            t_real = t_hidden.reshape(-1, h).index_select(0, b["real_idx"])  # (R, H)
            out["cos"] = hidden_cosine(s_real, t_real, norms["cos"])
        return out

    def evaluate(self, batches: list[dict]) -> dict[str, float]:
        """Student MLM loss/accuracy, teacher accuracy and top-1 agreement on masked positions."""
        ce_sum = n = correct_s = correct_t = agree = 0.0
        cos_sum = n_real = 0.0
        for b in batches:
            s_hidden, s_logits = self.student(b["input_ids"], b["attention_mask"], b["target_idx"])
            t_hidden, t_logits = self.teacher(b["input_ids"], b["attention_mask"], b["target_idx"])
            ce_sum += float(mlm_cross_entropy(s_logits, b["labels"], normalizer=1.0))
            s_top, t_top = s_logits.argmax(-1), t_logits.argmax(-1)
            correct_s += float((s_top == b["labels"]).sum())
            correct_t += float((t_top == b["labels"]).sum())
            agree += float((s_top == t_top).sum())
            n += len(b["labels"])
            if s_hidden.shape[-1] == t_hidden.shape[-1]:
                h = s_hidden.shape[-1]
                s_real = s_hidden.reshape(-1, h)[b["real_idx"]]
                t_real = t_hidden.reshape(-1, h)[b["real_idx"]]
                cos_sum += float(hidden_cosine(s_real, t_real, normalizer=1.0))
                n_real += len(b["real_idx"])
        n = max(n, 1.0)
        result = {}
        if self.student_head:
            result |= {"student_mlm_loss": ce_sum / n, "student_accuracy": correct_s / n}
        if self.teacher_head and self.student_head:
            result |= {"teacher_accuracy": correct_t / n, "agreement": agree / n}
        if n_real:
            result["cosine_loss"] = cos_sum / n_real
        return result


def distill(cfg: DistillConfig, resume: bool | str = False) -> DistillResult:
    """Distil ``cfg.teacher`` into a student; the result folder loads with AutoModelForMaskedLM."""
    for name in ("teacher", "data", "out_dir"):
        if not getattr(cfg, name):
            raise DistilkitError(f"no {name} given")
    cfg.loss.validate()
    cfg.train.validate()
    rt = setup_runtime(cfg.train.threads)
    out = Path(cfg.out_dir)
    data = TokenDataset(cfg.data, "train")  # fails early on a wrong folder
    inputs = {"the teacher": cfg.teacher, "the student": cfg.student, "the data": cfg.data}
    with claim_run_folder(out, "distill", bool(resume), cfg.overwrite, inputs, rt):
        if resume is True and not any((out / "checkpoints").glob("step-*")):
            # Before a student is built here: a refused resume leaves nothing behind.
            raise DistilkitError(
                f"--resume was given but {out}/checkpoints holds no usable checkpoint"
            )
        return _distill(cfg, resume, rt, out, data)


def _distill(cfg: DistillConfig, resume, rt, out: Path, data: TokenDataset) -> DistillResult:
    teacher, teacher_headless = load_mlm(cfg.teacher)
    t_tok = load_tokenizer(cfg.teacher)
    # Checks that need no student come before building one, so that a failure leaves no
    # student-init behind in the output folder.
    spec, kind = _objective_kind(cfg.loss, cfg.teacher)
    if kind == "embedding":
        loss = cfg.loss
        loss.embedding.validate()
        if rt.main:
            log.info(
                "teacher %s is a sentence encoder (%s pooling%s): distilling its sentence "
                "embeddings (L_emb %g, L_sim %g, L_rank %g, L_tok %g, L_layers %g on %s)",
                cfg.teacher,
                spec.pooling,
                ", normalised" if spec.normalize else "",
                loss.embedding.alpha_emb,
                loss.embedding.alpha_sim,
                loss.embedding.alpha_rank,
                loss.embedding.alpha_tok,
                loss.embedding.alpha_layers,
                loss.embedding.spans,
            )
    else:
        if teacher_headless and rt.main:
            log.info(
                "teacher %s has no masked-LM head (expected for a plain encoder): no L_ce, and "
                "no teacher accuracy in validation",
                cfg.teacher,
            )
        loss = _resolve_alphas(cfg.loss, teacher_headless, cfg.teacher)
    _check_data_vocabulary(data, t_tok)
    student_ref = cfg.student
    if not student_ref:
        student_ref = str(out / "student-init")
        if rt.main and not (out / "student-init" / "config.json").is_file():
            from distilkit.student import init_student

            init_student(
                cfg.teacher, student_ref, layers=cfg.student_layers or None, overwrite=True
            )
        if rt.world > 1:
            torch.distributed.barrier()
    student, _ = load_mlm(student_ref)
    s_tok = load_tokenizer(student_ref)

    _check_compatible(teacher, student, t_tok, s_tok, data, loss, kind)
    check_positions(data, {"teacher": teacher, "student": student})

    teacher.to(rt.device).eval().requires_grad_(False)
    student.to(rt.device).train()
    if cfg.freeze_word_embeddings:
        words = student.get_input_embeddings().weight  # (V, H); the MLM projection if tied
        words.requires_grad_(False)
        log.info("student word embeddings frozen (%s parameters)", f"{words.numel():,}")
    if kind == "embedding":
        objective = EmbeddingObjective(
            encoder_of(student),
            encoder_of(teacher),
            spec,
            loss.embedding,
            data.special_ids,
            sentence_ends(t_tok),
            _layer_targets(student_ref, teacher) if loss.embedding.alpha_layers else None,
        )
    else:
        from distilkit.student import student_summary

        head_trained = bool(loss.alpha_mlm or loss.alpha_ce)
        head_copied = student_summary(student_ref).get("head_from_teacher", True)
        objective = DistillObjective(
            student,
            teacher,
            loss,
            teacher_head=not teacher_headless,
            student_head=head_trained or head_copied,
        )
    run_info = {
        "stage": "distill",
        "distilkit": __version__,
        "teacher": cfg.teacher,
        "student_init": student_ref,
        "data": cfg.data,
        "world_size": rt.world,
        "objective": kind,
        "config": to_dict(cfg) | {"loss": to_dict(loss)},
    }
    # What shapes the trajectory besides the loop's own settings: compared on --resume.
    settings = {
        "teacher": fingerprint(resolve_model(cfg.teacher)),
        "student_init": fingerprint(student_ref),
        "student_layers": list(cfg.student_layers),
        "objective": kind,
        **flatten("loss", to_dict(loss)),
        # Only when set, so that runs from before the option resume as they were.
        **({"freeze_word_embeddings": True} if cfg.freeze_word_embeddings else {}),
    }
    result = run(
        objective, student, cfg.data, cfg.masking, cfg.train, out, rt, resume, run_info, settings
    )
    if result.halted:
        return DistillResult(
            out,
            result.steps,
            result.tokens,
            result.seconds,
            0.0,
            {},
            {},
            {},
            result.nonfinite_skipped,
            halted=True,
        )
    if kind == "embedding":  # the encoders are what is used and saved
        t_params, s_params = (
            count_parameters(encoder_of(teacher)),
            count_parameters(encoder_of(student)),
        )
    else:
        t_params, s_params = count_parameters(teacher), count_parameters(student)
    tps = result.tokens / max(result.seconds, 1e-9)
    if rt.main:
        plot_curves(out)
        card = _model_card(cfg, loss, kind, student_ref, result, t_params, s_params, tps)
        if kind == "embedding":
            teacher_dir = resolve_model(cfg.teacher)

            def write(tmp: Path) -> None:
                save_sentence_transformer(encoder_of(student), s_tok, tmp, teacher_dir, spec)

            save_final(student, s_tok, out, card, write=write)
        else:
            save_final(student, s_tok, out, card)
        summary = {
            "objective": kind,
            "steps": result.steps,
            "tokens": result.tokens,
            "seconds": result.seconds,
            "tokens_per_second": tps,
            "final_eval": result.final_eval,
            "teacher_params": t_params,
            "student_params": s_params,
            "nonfinite_skipped": result.nonfinite_skipped,
        }
        if result.changes:
            summary["changed_on_resume"] = result.changes
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        marker = json.loads((out / RUN_MARKER).read_text())
        (out / RUN_MARKER).write_text(json.dumps(marker | {"finished": True}, indent=2) + "\n")
        log.info("student saved to %s", out)
    if rt.world > 1:
        torch.distributed.barrier()
    return DistillResult(
        out,
        result.steps,
        result.tokens,
        result.seconds,
        tps,
        result.final_eval,
        t_params,
        s_params,
        result.nonfinite_skipped,
    )


def _layer_targets(student_ref: str, teacher) -> list[int]:
    """Teacher ``hidden_states`` index each student layer's output is matched to (L_layers)."""
    from distilkit.student import aligned_targets, student_summary

    layers = student_summary(student_ref).get("layers")
    n_teacher = getattr(teacher.config, "num_hidden_layers", None) or teacher.config.n_layers
    if not layers:
        raise DistilkitError(
            f"L_layers needs to know which teacher layer each student layer copies, and "
            f"{student_ref} has no distilkit_student.json (make the student with init-student, "
            "or set loss.embedding.alpha_layers=0)"
        )
    return aligned_targets(list(layers), n_teacher)


def _objective_kind(loss: LossConfig, teacher: str):
    """``(sentence spec or None, "triple" | "embedding")`` for this teacher and setting."""
    spec = sentence_spec(resolve_model(teacher)) if Path(resolve_model(teacher)).is_dir() else None
    kind = loss.objective
    if kind == "auto":
        kind = "embedding" if spec is not None else "triple"
    if kind == "embedding" and spec is None:
        raise DistilkitError(
            f"loss.objective=embedding needs a sentence-transformers teacher (modules.json with a "
            f"Pooling module); {teacher} is not one"
        )
    return spec, kind


def _resolve_alphas(loss: LossConfig, teacher_headless: bool, teacher: str) -> LossConfig:
    from dataclasses import replace

    if teacher_headless:
        if loss.alpha_ce:
            raise DistilkitError(
                f"teacher {teacher} has no masked-LM head, so it cannot give L_ce "
                "(alpha_ce > 0); give it a head with `distilkit adapt-teacher`, or set "
                "loss.alpha_ce=0"
            )
        if loss.alpha_ce is None:
            log.warning("teacher %s has no masked-LM head: alpha_ce set to 0 (no L_ce)", teacher)
        loss = replace(loss, alpha_ce=0.0)
    elif loss.alpha_ce is None:
        loss = replace(loss, alpha_ce=DEFAULT_ALPHA_CE)
    if not (loss.alpha_ce or loss.alpha_mlm or loss.alpha_cos):
        raise DistilkitError("all loss weights are 0: nothing to train")
    return loss


def position_limit(model: nn.Module) -> int | None:
    """Longest input the model's position table takes (RoBERTa-style tables start after the
    padding index, so they hold two positions fewer than their size)."""
    c = model.config
    n = getattr(c, "max_position_embeddings", None)
    if n is None:
        return None
    if c.model_type in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
        n -= (c.pad_token_id or 0) + 1
    return int(n)


def check_positions(data: TokenDataset, models: dict[str, nn.Module]) -> None:
    """Refuse data with sequences longer than a model's position table before training: the
    run would otherwise crash with an index error at the first long batch."""
    longest = max(data.longest, TokenDataset(data.root, "validation").longest)
    for name, model in models.items():
        limit = position_limit(model)
        if limit is not None and longest > limit:
            raise DistilkitError(
                f"dataset {data.root} holds sequences of up to {longest} tokens, but the {name} "
                f"takes at most {limit} (its position table); prepare the data again with "
                f"--max-length {limit}"
            )


def _check_data_vocabulary(data: TokenDataset, t_tok) -> None:
    if data.manifest.get("vocab_fingerprint") != vocab_fingerprint(t_tok):
        raise DistilkitError(
            f"dataset {data.root} was tokenised with a different vocabulary than the teacher's "
            f"(prepared with {data.manifest.get('tokenizer')}); run `distilkit prepare` again"
        )


def _check_compatible(teacher, student, t_tok, s_tok, data, loss, kind="triple") -> None:
    tv, sv = teacher.config.vocab_size, student.config.vocab_size
    if tv != sv:
        raise DistilkitError(f"teacher and student vocabularies differ ({tv} vs {sv} entries)")
    t_fp, s_fp = vocab_fingerprint(t_tok), vocab_fingerprint(s_tok)
    if t_fp != s_fp:
        raise DistilkitError("teacher and student tokenizers have different vocabularies")
    _check_data_vocabulary(data, t_tok)
    th = getattr(teacher.config, "hidden_size", None) or teacher.config.dim
    sh = getattr(student.config, "hidden_size", None) or student.config.dim
    if kind == "embedding" and th != sh:
        raise DistilkitError(
            f"the embedding objective needs equal hidden sizes (teacher {th}, student {sh})"
        )
    if kind == "triple" and loss.alpha_cos and th != sh:
        raise DistilkitError(
            f"L_cos needs equal hidden sizes (teacher {th}, student {sh}); set loss.alpha_cos=0"
        )


def _model_card(cfg, loss, kind, student_ref, result, t_params, s_params, tps) -> str:
    ev = "\n".join(f"| {k} | {v:.4f} |" for k, v in result.final_eval.items()) or "| - | - |"
    if kind == "embedding":
        e = loss.embedding
        losses = (
            f"sentence-embedding objective: alpha_emb={e.alpha_emb}, alpha_sim={e.alpha_sim}, "
            f"alpha_rank={e.alpha_rank} (T {e.rank_temperature}), alpha_tok={e.alpha_tok}, alpha_layers={e.alpha_layers}, spans={e.spans} "
            f"({e.min_tokens}-{e.max_tokens} tokens)"
        )
        tags, where = "[distilkit, distillation, sentence-transformers]", "held-out sentences"
        usage = (
            "Load with `sentence_transformers.SentenceTransformer(path)` (the teacher's pooling "
            "and normalisation) or `AutoModel.from_pretrained(path)`."
        )
    else:
        losses = (
            f"alpha_ce={loss.alpha_ce}, alpha_mlm={loss.alpha_mlm}, alpha_cos={loss.alpha_cos},\n"
            f"  temperature={loss.temperature}, restrict_ce_to_mask={loss.restrict_ce_to_mask}"
        )
        tags, where = "[distilkit, distillation, fill-mask]", "masked positions, uniform 15%"
        usage = 'Load with `AutoModelForMaskedLM.from_pretrained(path)`; works in `pipeline("fill-mask")`.'
    return f"""---
library_name: transformers
tags: {tags}
---
# Student distilled with distilkit

- Teacher: `{cfg.teacher}` ({t_params["total"] / 1e6:.1f}M parameters)
- Student: initialised from `{student_ref}` ({s_params["total"] / 1e6:.1f}M parameters,
  {100 * s_params["total"] / t_params["total"]:.0f}% of the teacher)
- Data: `{cfg.data}`
- Losses: {losses}
- Training: {result.steps} optimizer steps, {result.tokens:,} tokens, {result.seconds:.0f} s
  ({tps:,.0f} tokens/s), batch {cfg.train.batch_size} x accumulation
  {cfg.train.grad_accumulation}, precision {cfg.train.precision}, seed {cfg.train.seed}

## Final validation (held-out split, {where})

| metric | value |
|---|---|
{ev}

{usage}
"""
