"""Metric functions against values computed by hand, and SQuAD normalisation cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distilkit.errors import DistilkitError
from distilkit.metrics import (
    compute_metrics,
    normalize_answer,
    result_json,
    squad_exact,
    squad_f1,
    squad_metrics,
)


def test_matthews_by_hand():
    # tp=2 tn=1 fp=1 fn=0 -> (2*1 - 1*0) / sqrt(3*2*2*1) = 2/sqrt(12)
    m = compute_metrics("cola", [1, 0, 1, 1], [1, 0, 0, 1])
    assert m["mcc"] == pytest.approx(2 / math.sqrt(12))
    assert m["score"] == m["mcc"]
    # Perfectly wrong is -1, a constant predictor 0 (undefined, reported as 0 like sklearn).
    assert compute_metrics("cola", [0, 1, 0, 1], [1, 0, 1, 0])["mcc"] == pytest.approx(-1.0)
    assert compute_metrics("cola", [1, 1, 1, 1], [1, 0, 1, 0])["mcc"] == 0.0


def test_matthews_agrees_with_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, gold, 1 - gold)
    assert compute_metrics("cola", pred, gold)["mcc"] == pytest.approx(
        sklearn.matthews_corrcoef(gold, pred)
    )


def test_accuracy_f1_and_pair_score():
    # pred 1 1 0 0 1, gold 1 0 0 1 1: acc 3/5; tp=2 fp=1 fn=1 -> F1 = 4/6
    m = compute_metrics("mrpc", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["score"] == pytest.approx((0.6 + 2 / 3) / 2)
    assert set(compute_metrics("qqp", [1], [1])) == {"accuracy", "f1", "score"}
    assert compute_metrics("qnli", [0, 1, 1], [0, 1, 0]) == {
        "accuracy": pytest.approx(2 / 3),
        "score": pytest.approx(2 / 3),
    }


def test_logits_are_argmaxed():
    logits = np.array([[2.0, -1.0, 0.0], [0.0, 0.1, 3.0], [0.0, 5.0, 1.0]])  # -> 0, 2, 1
    assert compute_metrics("mnli", logits, [0, 2, 2])["accuracy"] == pytest.approx(2 / 3)


def test_pearson_spearman_by_hand():
    # x = 1 2 3 4, y = 1 2 4 3: centred dot = 4, norms sqrt(5)*sqrt(5) -> 0.8; ranks equal values.
    m = compute_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 3.0])
    assert m["pearson"] == pytest.approx(0.8)
    assert m["spearman"] == pytest.approx(0.8)
    assert m["score"] == pytest.approx(0.8)
    # Monotone but not linear: Spearman 1, Pearson below 1.
    m = compute_metrics("stsb", np.array([[1.0], [2.0], [3.0], [10.0]]), [0.1, 0.2, 0.3, 0.4])
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] < 0.95
    # Ties take their mean rank: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> sqrt(3)/2.
    assert compute_metrics("stsb", [0.0, 0.0, 1.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(
        math.sqrt(3) / 2
    )
    assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0


def test_generic_classification_score_is_accuracy():
    m = compute_metrics("classification", [0, 1, 2, 2], [0, 1, 1, 2])
    assert m["accuracy"] == pytest.approx(0.75)
    # per-class F1: c0 1, c1 2/3, c2 2/3
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert m["score"] == m["accuracy"]


def test_shape_mismatch_is_an_error():
    with pytest.raises(DistilkitError, match="do not match"):
        compute_metrics("sst2", [1, 0], [1, 0, 1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   dog,  an apple; THE end. ", "dog apple end"),
        ("Theatre and anchor", "theatre and anchor"),  # articles only as whole words
        ("U.S.-based", "usbased"),
        ("$1,000!", "1000"),
    ],
)
def test_squad_normalisation(text, expected):
    assert normalize_answer(text) == expected


def test_squad_em_f1():
    assert squad_exact("the Denver Broncos", "Denver Broncos!") == 1.0
    assert squad_exact("Denver", "Denver Broncos") == 0.0
    # pred {denver broncos won}, gold {broncos}: p=1/3 r=1 -> F1 = 0.5
    assert squad_f1("Denver Broncos won", "the Broncos") == pytest.approx(0.5)
    assert squad_f1("Carolina", "Denver") == 0.0
    m = squad_metrics(
        {"q1": "Denver Broncos", "q2": "in 1996"},
        {"q1": ["Broncos", "Denver Broncos"], "q2": ["1996"], "q3": ["x"]},  # q3 unanswered
    )
    assert m["exact_match"] == pytest.approx(1 / 3)
    # q2: "in 1996" vs "1996": p=1/2 r=1 -> 2/3; EM 0
    assert m["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


# ----------------------------------------------------------------------------- non-finite values


def test_non_finite_predictions_are_an_error_not_a_score():
    # NaN logits have an argmax (0), so a broken model would otherwise score like a constant
    # predictor; a NaN regression output would make both correlations NaN.
    logits = np.array([[0.1, 0.2], [np.nan, 0.0], [1.0, 0.0]])
    with pytest.raises(DistilkitError, match=r"compute_metrics\(sst2\): 1 of 6 predictions are"):
        compute_metrics("sst2", logits, [1, 0, 0])
    with pytest.raises(DistilkitError, match="2 of 3 predictions are not finite"):
        compute_metrics("stsb", [1.0, np.inf, np.nan], [1.0, 2.0, 3.0])
    with pytest.raises(DistilkitError, match="1 of 3 labels are not finite"):
        compute_metrics("stsb", [1.0, 2.0, 3.0], [1.0, np.nan, 3.0])


def test_result_json_is_strict_json_and_refuses_nan():
    import json

    good = {"score": 0.5, "runs": [{"dev": {"mcc": 0.0}}], "n": 3, "name": "x"}
    text = result_json(good)

    def strict(constant):
        raise ValueError(constant)

    assert json.loads(text, parse_constant=strict) == good
    bad = {"score": 0.5, "runs": [{"dev": {"mcc": 0.1}}, {"dev": {"mcc": float("nan")}}]}
    with pytest.raises(DistilkitError) as exc:
        result_json(bad)
    assert str(exc.value) == (
        "metrics.json would hold a non-finite value (runs[1].dev.mcc = nan); nothing was written"
    )
    with pytest.raises(DistilkitError, match=r"\(train_loss_last = inf\)"):
        result_json({"train_loss_last": np.float64(np.inf)})
