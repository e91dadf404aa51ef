"""GLUE metrics as GLUE defines them, and SQuAD v1.1 EM/F1 with the official normalisation.

All values are fractions (accuracy 0.913, not 91.3); reports multiply by 100. Every GLUE result
carries a ``score``: the number that enters the macro average, following the GLUE leaderboard
(the mean of a task's metrics where it has two: MRPC/QQP accuracy and F1, STS-B Pearson and
Spearman; CoLA Matthews correlation; the others accuracy).
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from distilkit.errors import DistilkitError
from distilkit.tasks import get_task


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean())


def binary_f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP F1); 0 when there are no true positives."""
    tp = int(((pred == positive) & (gold == positive)).sum())
    fp = int(((pred == positive) & (gold != positive)).sum())
    fn = int(((pred != positive) & (gold == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    classes = np.union1d(pred, gold)
    return float(np.mean([binary_f1(pred, gold, int(c)) for c in classes]))


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation (binary); 0 when a row or column of the confusion matrix is empty."""
    tp = float(((pred == 1) & (gold == 1)).sum())
    tn = float(((pred == 0) & (gold == 0)).sum())
    fp = float(((pred == 1) & (gold == 0)).sum())
    fn = float(((pred == 0) & (gold == 1)).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    # A constant predictor has an undefined MCC; sklearn and GLUE both report 0 for it.
    return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 (not NaN) when either side is constant, so JSON stays valid."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return 0.0 if denom == 0 else float((xc * yc).sum() / denom)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation: Pearson on average ranks (ties share their mean rank)."""
    from scipy.stats import rankdata

    return pearson(rankdata(x), rankdata(y))


def compute_metrics(
    task: str, predictions: Sequence | np.ndarray, labels: Sequence | np.ndarray
) -> dict:
    """Metrics of one task, plus ``score`` (its entry in the macro average).

    ``predictions``: class indices ``(N,)``, or logits ``(N, C)`` (argmax is taken), or for a
    regression task scores ``(N,)`` / ``(N, 1)``. ``labels``: ``(N,)`` gold indices or scores.
    """
    spec = get_task(task)
    pred = np.asarray(predictions)
    gold = np.asarray(labels)
    if pred.ndim == 2:
        pred = pred[:, 0] if spec.kind == "regression" and pred.shape[1] == 1 else pred.argmax(-1)
    if pred.ndim != 1 or gold.ndim != 1 or len(pred) != len(gold):
        raise DistilkitError(
            f"compute_metrics({spec.name}): predictions {np.shape(predictions)} and labels "
            f"{np.shape(labels)} do not match"
        )
    if len(gold) == 0:
        raise DistilkitError(f"compute_metrics({spec.name}): no examples")
    # NaN logits still have an argmax (0), so a broken model would score like a constant
    # predictor, and a NaN score would make the correlations NaN: refuse both instead.
    for what, values in (("predictions", np.asarray(predictions)), ("labels", gold)):
        if values.dtype.kind in "fc":
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise DistilkitError(
                    f"compute_metrics({spec.name}): {bad} of {values.size} {what} are not finite "
                    "(NaN or inf)"
                )

    out: dict[str, float] = {}
    if spec.kind == "regression":
        out["pearson"] = pearson(pred, gold)
        out["spearman"] = spearman(pred, gold)
    else:
        pred = pred.astype(np.int64)
        gold = gold.astype(np.int64)
        for name in spec.metrics:
            if name == "accuracy":
                out["accuracy"] = accuracy(pred, gold)
            elif name == "f1":
                out["f1"] = binary_f1(pred, gold)
            elif name == "macro_f1":
                out["macro_f1"] = macro_f1(pred, gold)
            elif name == "mcc":
                out["mcc"] = matthews(pred, gold)
    if spec.name == "classification":
        out["score"] = out["accuracy"]  # the paper's IMDb number is accuracy
    else:
        out["score"] = float(np.mean([out[m] for m in spec.metrics]))
    return out


def result_json(result: Any, name: str = "metrics.json") -> str:
    """``result`` as indented JSON text, refusing NaN and Infinity.

    Python's ``json`` writes them as bare ``NaN``/``Infinity``, which is not JSON: the file
    would fail in every other reader (jq, JavaScript, strict parsers) or pass a NaN score on
    into tables. A non-finite value is an error naming where it sits, so nothing is written.
    """
    where = _first_nonfinite(result, "")
    if where is not None:
        path, value = where
        raise DistilkitError(
            f"{name} would hold a non-finite value ({path or 'the result'} = {value}); "
            "nothing was written"
        )
    return json.dumps(result, indent=2, allow_nan=False) + "\n"


def _first_nonfinite(value: Any, path: str) -> tuple[str, float] | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub, v in items:
        found = _first_nonfinite(v, sub)
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------- SQuAD v1.1


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, drop punctuation and the articles
    a/an/the, collapse white space (applied in the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict:
    """EM and F1 over questions, each the max over that question's gold answers.

    ``answers`` maps question id -> gold answer texts; a question without a prediction scores 0,
    as in the official script.
    """
    if not answers:
        raise DistilkitError("squad_metrics: no questions")
    em = f1 = 0.0
    for qid, golds in answers.items():
        if not golds:
            raise DistilkitError(f"squad_metrics: question {qid} has no gold answer")
        pred = predictions.get(qid)
        if pred is None:
            continue
        em += max(squad_exact(pred, g) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    n = len(answers)
    return {"exact_match": em / n, "f1": f1 / n, "score": (em + f1) / (2 * n)}
