"""Build a half-depth student from a teacher, initialised from the teacher's own layers.

A BERT teacher gives a DistilBERT student (no token-type embeddings, no pooler), the paper's
architecture. RoBERTa, DistilBERT and other encoders whose layers sit in one ``ModuleList`` give a
student of the same class with fewer layers.

Layer rule: for a teacher of ``n`` layers and a student of ``k``, student layer ``i`` copies teacher
layer ``floor(i * (n - 1) / (k - 1) + 0.5)``: evenly spaced, always including the first and last
layer. For 12 -> 6 this is the paper's ``[0, 2, 4, 7, 9, 11]``; for 6 -> 3 it is ``[0, 3, 5]``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distilkit.errors import DistilkitError
from distilkit.modeling import load_mlm, load_tokenizer, resolve_model
from distilkit.runfolder import claim_folder, only_scratch

log = logging.getLogger(__name__)


def default_layers(n_teacher: int, n_student: int | None = None) -> list[int]:
    """Evenly spaced teacher layers including the first and last (paper: 12 -> [0,2,4,7,9,11])."""
    k = n_student if n_student is not None else max(1, n_teacher // 2)
    if not 1 <= k <= n_teacher:
        raise DistilkitError(f"student depth {k} must be between 1 and {n_teacher}")
    if k == 1:
        return [n_teacher - 1]
    return [math.floor(i * (n_teacher - 1) / (k - 1) + 0.5) for i in range(k)]


def check_layers(layers: list[int], n_teacher: int) -> list[int]:
    """Layers must be distinct, increasing and inside the teacher."""
    if not layers:
        raise DistilkitError("--layers is empty")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise DistilkitError(
            f"--layers {layers}: layer {bad[0]} is out of range for a {n_teacher}-layer teacher "
            f"(valid: 0..{n_teacher - 1})"
        )
    if len(set(layers)) != len(layers):
        raise DistilkitError(f"--layers {layers}: duplicated layer")
    if layers != sorted(layers):
        raise DistilkitError(f"--layers {layers}: layers must be in increasing order")
    return list(layers)


@dataclass
class StudentResult:
    out_dir: Path
    layers: list[int]
    architecture: str
    head_from_teacher: bool
    copied: list[str] = field(default_factory=list)


def init_student(
    teacher: str | Path,
    out_dir: str | Path,
    layers: list[int] | None = None,
    num_layers: int | None = None,
    overwrite: bool = False,
) -> StudentResult:
    """Create the student of ``teacher`` in ``out_dir`` (Hugging Face format with tokenizer)."""
    inputs = {"the teacher": teacher}
    with claim_folder(
        out_dir,
        "init-student",
        overwrite=overwrite,
        inputs=inputs,
        is_residue=only_scratch(".tmp-init"),
    ) as claim:
        return _init_student(claim, teacher, layers, num_layers)


def _init_student(claim, teacher, layers, num_layers) -> StudentResult:
    out = claim.folder
    tok = load_tokenizer(teacher)
    t_model, head_missing = load_mlm(teacher)
    cfg = t_model.config
    n_teacher = _num_layers(cfg)
    layers = check_layers(layers, n_teacher) if layers else default_layers(n_teacher, num_layers)
    if cfg.model_type == "bert":
        student, copied = _bert_to_distilbert(t_model, layers, copy_head=not head_missing)
    else:
        student, copied = _same_class_fewer_layers(t_model, layers, copy_head=not head_missing)
    if head_missing:
        from distilkit.sentence import sentence_spec

        ref = resolve_model(teacher)
        if Path(ref).is_dir() and sentence_spec(ref) is not None:
            # Expected: sentence encoders ship without one, and their objective needs none.
            log.info(
                "teacher %s is a sentence encoder without a masked-LM head (expected): the "
                "student gets a fresh vocabulary head, unused by the sentence-embedding objective",
                teacher,
            )
        else:
            log.warning(
                "teacher %s has no masked-LM head: the student's vocabulary head is freshly "
                "initialised (run `distilkit adapt-teacher` first to give the teacher one, so "
                "that L_ce can be used)",
                teacher,
            )
    meta = {
        "teacher": str(teacher),
        "teacher_layers": n_teacher,
        "layers": layers,
        "architecture": type(student).__name__,
        "head_from_teacher": not head_missing,
        "token_type_folded_into_positions": cfg.model_type == "bert",
    }
    # Built in a hidden sub-folder and moved in with config.json last: a partial folder with a
    # config.json would look like a model (disk full, kill, ...).
    tmp = claim.scratch(".tmp-init")
    try:
        student.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "distilkit_student.json").write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    claim.publish(tmp, last="config.json")
    log.info("student with teacher layers %s saved to %s (%s)", layers, out, type(student).__name__)
    return StudentResult(out, layers, type(student).__name__, not head_missing, copied)


def _num_layers(cfg) -> int:
    for name in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(cfg, name):
            return int(getattr(cfg, name))
    raise DistilkitError(f"cannot find the number of layers of a {cfg.model_type} model")


# BERT layer parameter names -> DistilBERT names (same tensors, different module names).
_BERT_LAYER_MAP = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


def _bert_to_distilbert(teacher: nn.Module, layers: list[int], copy_head: bool):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tc = teacher.config
    if getattr(tc, "position_embedding_type", "absolute") != "absolute":
        raise DistilkitError("BERT teachers with relative position embeddings are not supported")
    sc = DistilBertConfig(
        vocab_size=tc.vocab_size,
        max_position_embeddings=tc.max_position_embeddings,
        n_layers=len(layers),
        n_heads=tc.num_attention_heads,
        dim=tc.hidden_size,
        hidden_dim=tc.intermediate_size,
        dropout=tc.hidden_dropout_prob,
        attention_dropout=tc.attention_probs_dropout_prob,
        activation=tc.hidden_act,
        initializer_range=tc.initializer_range,
        pad_token_id=tc.pad_token_id,
    )
    if abs(getattr(tc, "layer_norm_eps", 1e-12) - 1e-12) > 1e-15:
        # DistilBERT hard-codes eps=1e-12 in its LayerNorms.
        log.warning("teacher layer_norm_eps=%s; DistilBERT uses 1e-12", tc.layer_norm_eps)
    student = DistilBertForMaskedLM(sc)
    t = teacher.state_dict()
    s = student.state_dict()
    new: dict[str, torch.Tensor] = {}
    # BERT adds token_type_embeddings[0] to every token of a single-segment input. DistilBERT has
    # no token types, so fold that constant vector into the position table: the student's
    # embedding output then equals the teacher's exactly (the reference simply dropped it).
    type0 = t["bert.embeddings.token_type_embeddings.weight"][0]
    new["distilbert.embeddings.word_embeddings.weight"] = t[
        "bert.embeddings.word_embeddings.weight"
    ]
    new["distilbert.embeddings.position_embeddings.weight"] = (
        t["bert.embeddings.position_embeddings.weight"] + type0
    )
    for p in ("weight", "bias"):
        new[f"distilbert.embeddings.LayerNorm.{p}"] = t[f"bert.embeddings.LayerNorm.{p}"]
    for i, j in enumerate(layers):
        for bert_name, db_name in _BERT_LAYER_MAP.items():
            for p in ("weight", "bias"):
                new[f"distilbert.transformer.layer.{i}.{db_name}.{p}"] = t[
                    f"bert.encoder.layer.{j}.{bert_name}.{p}"
                ]
    if copy_head:
        for p in ("weight", "bias"):
            new[f"vocab_transform.{p}"] = t[f"cls.predictions.transform.dense.{p}"]
            new[f"vocab_layer_norm.{p}"] = t[f"cls.predictions.transform.LayerNorm.{p}"]
        bias_key = (
            "cls.predictions.bias"
            if "cls.predictions.bias" in t
            else ("cls.predictions.decoder.bias")
        )
        new["vocab_projector.bias"] = t[bias_key]
        # vocab_projector.weight is tied to the word embeddings, as in the teacher.
    for k, v in new.items():
        if k not in s or s[k].shape != v.shape:
            raise DistilkitError(f"internal: cannot map teacher weight to student key {k}")
    student.load_state_dict(new, strict=False)
    student.tie_weights()
    return student, sorted(new)


def _same_class_fewer_layers(teacher: nn.Module, layers: list[int], copy_head: bool):
    cfg = teacher.config.__class__.from_dict(teacher.config.to_dict())
    for name in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(cfg, name):
            setattr(cfg, name, len(layers))
            break
    student = type(teacher)(cfg)
    t = teacher.state_dict()
    s_keys = set(student.state_dict())
    pattern = re.compile(r"^(.*\.(?:layer|layers)\.)(\d+)\.(.*)$")
    index = {j: i for i, j in enumerate(layers)}
    new: dict[str, torch.Tensor] = {}
    found_layers = False
    for key, value in t.items():
        m = pattern.match(key)
        if m:
            found_layers = True
            j = int(m.group(2))
            if j in index:
                new[f"{m.group(1)}{index[j]}.{m.group(3)}"] = value
        elif copy_head or not _looks_like_head(key):
            new[key] = value
    if not found_layers:
        raise DistilkitError(
            f"cannot find the layer list of {type(teacher).__name__}; supported: BERT, RoBERTa, "
            "DistilBERT and encoders with `.layer.N.` / `.layers.N.` parameters"
        )
    unknown = sorted(set(new) - s_keys)
    if unknown:
        raise DistilkitError(f"internal: student has no parameter {unknown[0]}")
    student.load_state_dict(new, strict=False)
    student.tie_weights()
    return student, sorted(new)


def aligned_targets(layers: list[int], n_teacher: int) -> list[int]:
    """For each student layer i (a copy of teacher layer ``layers[i]``), the index into the
    teacher's ``hidden_states`` tuple (0 = embeddings, j = output of layer j-1) that its output
    should match: the input the *next* copied layer expects, ``layers[i + 1]``, and for the last
    layer the teacher's final output ``n_teacher``. For [0, 3, 5] of 6 that is [3, 5, 6]: layer
    0's output must stand in for teacher layers 1-2, which were dropped."""
    return [*layers[1:], n_teacher]


def _looks_like_head(key: str) -> bool:
    return key.startswith(("cls.", "lm_head.", "vocab_"))


def student_summary(path: str | Path) -> dict:
    """The metadata file init-student writes, if any."""
    meta = Path(resolve_model(path)) / "distilkit_student.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}
