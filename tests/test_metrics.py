import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, log_loss, matthews_corrcoef
from torchmetrics.functional.classification import binary_calibration_error

from crisp import metrics


def test_metric_names_and_labels():
    assert metrics.METRICS == ("accuracy", "mcc", "f1")
    assert [metrics.metric_label(name) for name in metrics.METRICS] == [
        "accuracy",
        "Matthews correlation",
        "F1 (positive class)",
    ]
    with pytest.raises(ValueError, match="'auc'"):
        metrics.metric_label("auc")
    with pytest.raises(ValueError, match="'roc'"):
        metrics.primary_metric("roc", [0, 1], [0, 1])


def test_primary_metric_binary_hand_example():
    labels = [1, 1, 0, 0, 1]
    predictions = [1, 0, 0, 1, 1]  # TP 2, FN 1, FP 1, TN 1
    assert metrics.primary_metric("accuracy", labels, predictions) == pytest.approx(3 / 5)
    assert metrics.primary_metric("f1", labels, predictions) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert metrics.primary_metric("mcc", labels, predictions) == pytest.approx(1 / 6)
    assert metrics.primary_metric("mcc", labels, predictions) == pytest.approx(matthews_corrcoef(labels, predictions))


def test_f1_is_of_label_one_and_zero_without_warning_when_undefined():
    labels = [0, 0, 0, 1]
    predictions = [0, 0, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.primary_metric("f1", labels, predictions) == 0.0  # no positive predicted
        assert metrics.primary_metric("f1", [0, 0], [0, 0]) == 0.0  # no positive at all
        assert metrics.primary_metric("mcc", labels, predictions) == 0.0  # all predictions one class
    # Swapping which class is positive changes F1: it is not an average over both classes.
    assert metrics.primary_metric("f1", [1, 1, 1, 0], [1, 1, 1, 1]) == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert metrics.primary_metric("f1", [0, 0, 0, 1], [0, 0, 0, 0]) != pytest.approx(6 / 7)


def test_primary_metric_multiclass_f1_is_macro():
    labels = [0, 1, 2, 2]
    predictions = [0, 2, 2, 1]
    # class 0: F1 1; class 1: TP 0 -> 0; class 2: TP 1, FP 1, FN 1 -> 2/4. Macro mean 0.5.
    assert metrics.primary_metric("f1", labels, predictions) == pytest.approx(0.5)
    assert metrics.primary_metric("f1", labels, predictions) == pytest.approx(
        f1_score(labels, predictions, average="macro")
    )
    assert metrics.primary_metric("mcc", labels, predictions) == pytest.approx(matthews_corrcoef(labels, predictions))
    assert metrics.primary_metric("accuracy", labels, predictions) == pytest.approx(0.5)


def test_primary_metric_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="equal length"):
        metrics.primary_metric("accuracy", [0, 1, 1], [0, 1])


# Binary hand example: top-class confidences 0.9 (right), 0.92 (wrong), 0.75 (wrong), 0.62 (right), 0.55 (right).
BINARY_LABELS = np.array([1, 1, 0, 0, 0])
BINARY_PROBABILITIES = np.array([[0.1, 0.9], [0.92, 0.08], [0.25, 0.75], [0.62, 0.38], [0.55, 0.45]])


def test_classification_metrics_binary_by_hand():
    result = metrics.classification_metrics(BINARY_LABELS, BINARY_PROBABILITIES)
    assert set(result) == {"accuracy", "correct", "total", "mcc", "f1", "nll", "ece", "brier"}
    assert (result["accuracy"], result["correct"], result["total"]) == (pytest.approx(0.6), 3, 5)
    # Predictions 1, 0, 1, 0, 0: TP 1, FN 1, FP 1, TN 2.
    assert result["f1"] == pytest.approx(2 / (2 + 1 + 1))
    assert result["mcc"] == pytest.approx((1 * 2 - 1 * 1) / math.sqrt(2 * 2 * 3 * 3))
    expected_nll = -(math.log(0.9) + math.log(0.08) + math.log(0.25) + math.log(0.62) + math.log(0.55)) / 5
    assert result["nll"] == pytest.approx(expected_nll)
    assert result["nll"] == pytest.approx(log_loss(BINARY_LABELS, BINARY_PROBABILITIES))
    # Bins of width 1/15: 0.9 and 0.92 share [0.867, 0.933) with accuracy 1/2 and confidence 0.91;
    # 0.75, 0.62 and 0.55 sit alone. ECE = 2/5 * 0.41 + 1/5 * (0.75 + 0.38 + 0.45) = 0.48.
    assert result["ece"] == pytest.approx(0.48, abs=1e-6)
    # Brier: (0.1^2 * 2 + 0.92^2 * 2 + 0.75^2 * 2 + 0.38^2 * 2 + 0.45^2 * 2) / 5
    assert result["brier"] == pytest.approx(2 * (0.01 + 0.8464 + 0.5625 + 0.1444 + 0.2025) / 5)


def test_binary_ece_is_of_the_top_class_not_the_positive_class():
    positive_class_ece = binary_calibration_error(
        torch.tensor(BINARY_PROBABILITIES[:, 1]), torch.tensor(BINARY_LABELS), n_bins=15
    )
    # Positive-class probabilities 0.9, 0.08, 0.75, 0.38, 0.45 against labels 1, 1, 0, 0, 0, each alone in a bin.
    assert float(positive_class_ece) == pytest.approx((0.1 + 0.92 + 0.75 + 0.38 + 0.45) / 5, abs=1e-6)
    assert metrics.classification_metrics(BINARY_LABELS, BINARY_PROBABILITIES)["ece"] != pytest.approx(0.52)


def test_classification_metrics_three_classes_by_hand():
    labels = np.array([0, 2, 2, 1])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.15, 0.2, 0.65], [0.3, 0.45, 0.25]])
    result = metrics.classification_metrics(labels, probabilities)
    # Predictions 0, 1, 2, 1.
    assert (result["accuracy"], result["correct"], result["total"]) == (pytest.approx(0.75), 3, 4)
    # class 0: F1 1; class 1: TP 1, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 2/3.
    assert result["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert result["mcc"] == pytest.approx(matthews_corrcoef(labels, probabilities.argmax(axis=1)))
    assert result["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.65) + math.log(0.45)) / 4)
    assert result["nll"] == pytest.approx(log_loss(labels, probabilities))
    # Confidences 0.7, 0.5, 0.65, 0.45 fall in four different bins; only 0.5 is wrong.
    assert result["ece"] == pytest.approx((0.3 + 0.5 + 0.35 + 0.55) / 4, abs=1e-6)
    # Brier per example: 0.09+0.04+0.01, 0.01+0.25+0.36, 0.0225+0.04+0.1225, 0.09+0.3025+0.0625.
    assert result["brier"] == pytest.approx((0.14 + 0.62 + 0.185 + 0.455) / 4)


def test_certain_predictions_and_clipped_log_likelihood():
    labels = np.array([0, 1])
    right = metrics.classification_metrics(labels, np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert (right["nll"], right["ece"], right["brier"], right["mcc"], right["f1"]) == (0.0, 0.0, 0.0, 1.0, 1.0)
    wrong = metrics.classification_metrics(labels, np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert wrong["nll"] == pytest.approx(-math.log(metrics.PROBABILITY_FLOOR))  # finite, not infinity
    assert (wrong["ece"], wrong["brier"], wrong["accuracy"]) == (pytest.approx(1.0), 2.0, 0.0)


def test_classification_metrics_refuses_bad_input():
    with pytest.raises(ValueError, match="shape"):
        metrics.classification_metrics([0, 1], [0.3, 0.7])
    with pytest.raises(ValueError, match="labels of shape"):
        metrics.classification_metrics([0, 1, 1], [[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ValueError, match="class indices 0..1"):
        metrics.classification_metrics([0, 2], [[0.3, 0.7], [0.6, 0.4]])
