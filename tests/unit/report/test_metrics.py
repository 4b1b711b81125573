from __future__ import annotations

import json

import numpy as np
import pytest

from thaw.errors import DataError
from thaw.report.metrics import compute_metrics, expected_calibration_error, format_metrics_table

CLASSES = ["a", "b", "c"]


def one_hotish(preds: list[int], conf: list[float], num_classes: int = 3) -> np.ndarray:
    probs = np.zeros((len(preds), num_classes))
    for i, (p, c) in enumerate(zip(preds, conf, strict=True)):
        probs[i] = (1 - c) / (num_classes - 1)
        probs[i, p] = c
    return probs


def test_known_example_matches_hand_computation() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 2, 0]
    probs = one_hotish(preds, [0.8] * 6)
    m = compute_metrics(labels, probs, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["num_images"] == 6
    assert m["classes"] == CLASSES
    # rows are true classes, columns predictions
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = m["per_class"]
    assert (a["class"], a["precision"], a["recall"], a["support"]) == ("a", 0.5, 0.5, 2)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0
    assert c["precision"] == 1.0 and c["recall"] == 0.5 and c["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert m["nll"] == pytest.approx(-(4 * np.log(0.8) + 2 * np.log(0.1)) / 6)
    json.dumps(m, allow_nan=False)  # JSON-ready: plain types, no NaN


def test_ece_by_hand_and_reliability_bins() -> None:
    # Two at confidence 0.85 (one right), two at 0.55 (both right): |0.5 - 0.85| and |1 - 0.55|, weighted equally.
    correct = np.array([True, False, True, True])
    conf = np.array([0.85, 0.85, 0.55, 0.55])
    ece, rel = expected_calibration_error(correct, conf, n_bins=10)
    assert ece == pytest.approx((2 * 0.35 + 2 * 0.45) / 4)
    assert len(rel["bin_edges"]) == 11 and len(rel["count"]) == 10
    assert rel["count"][8] == 2 and rel["count"][5] == 2 and sum(rel["count"]) == 4
    assert rel["accuracy"][8] == pytest.approx(0.5) and rel["confidence"][8] == pytest.approx(0.85)
    assert rel["accuracy"][0] is None and rel["confidence"][0] is None  # empty bin


def test_ece_matches_a_loop_over_bins_on_random_data() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    m = compute_metrics(labels, probs, list("wxyz"), n_bins=15)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            expected += inside.sum() / 500 * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    assert m["ece"] == pytest.approx(expected)
    assert sum(m["reliability"]["count"]) == 500


def test_perfect_predictions_and_an_absent_class() -> None:
    labels = np.array([0, 1, 0, 1])
    m = compute_metrics(labels, one_hotish([0, 1, 0, 1], [1.0] * 4), CLASSES)
    assert m["accuracy"] == 1.0
    assert m["per_class"][2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][2] == [0, 0, 0]
    assert m["ece"] == pytest.approx(0.0)
    assert m["nll"] == pytest.approx(0.0)


def test_zero_probability_for_the_true_class_gives_a_finite_nll() -> None:
    m = compute_metrics(np.array([0]), np.array([[0.0, 1.0]]), ["x", "y"])
    assert np.isfinite(m["nll"]) and m["nll"] > 20


@pytest.mark.parametrize(
    ("labels", "probs", "message"),
    [
        (np.array([0, 1]), np.full((3, 3), 1 / 3), "shape"),
        (np.array([], dtype=int), np.zeros((0, 3)), "zero images"),
        (np.array([0]), np.full((1, 2), 0.5), "2 columns but there are 3 class names"),
        (np.array([3]), np.full((1, 3), 1 / 3), r"labels must lie in \[0, 2\]"),
    ],
)
def test_bad_inputs_raise_data_error(labels: np.ndarray, probs: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        compute_metrics(labels, probs, CLASSES)


def test_format_metrics_table_is_aligned() -> None:
    m = compute_metrics(np.array([0, 1, 2]), one_hotish([0, 1, 1], [0.7] * 3), ["cat", "dog", "a long class"])
    text = format_metrics_table(m)
    lines = text.splitlines()
    assert lines[0].startswith("accuracy 0.6667") and "macro-F1" in lines[0] and "ECE" in lines[0]
    header, rule, *rows = lines[1:]
    assert header.split() == ["class", "precision", "recall", "f1", "support"] and set(rule.replace(" ", "")) == {"-"}
    assert [line.split()[0] for line in rows] == ["cat", "dog", "a"]
    assert len({len(line) for line in [header, rule, *rows]}) == 1  # every row the same width
    assert rows[2].startswith("a long class ") and rows[2].split()[-1] == "1"  # support of the third class
    assert rows[1].split()[1:4] == ["0.5000", "1.0000", "0.6667"]  # dog: precision 1/2, recall 1, F1 2/3
