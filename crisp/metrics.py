"""Classification metrics of a run, the same functions for training logs and for tables.

    primary_metric          a task's headline number (accuracy, Matthews correlation or F1) from labels
                            and predicted labels, computed by scikit-learn
    classification_metrics  every validation number of metrics.json from labels and predicted class
                            probabilities: accuracy, MCC, F1, negative log-likelihood, expected
                            calibration error and Brier score

Labels are class indices 0..K-1. A task with two classes is binary and its positive class is label 1.
"""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "mcc", "f1")

METRIC_LABELS = {"accuracy": "accuracy", "mcc": "Matthews correlation", "f1": "F1 (positive class)"}

CALIBRATION_BINS = 15

# log(0) would make one confidently wrong example dominate the mean with an infinity.
PROBABILITY_FLOOR = 1e-12


def check_metric(name: str) -> None:
    """Raise a ValueError naming `name` unless it is one of METRICS."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; choose one of {', '.join(METRICS)}.")


def metric_label(name: str) -> str:
    """Display text of a metric name, e.g. 'mcc' -> 'Matthews correlation'."""
    check_metric(name)
    return METRIC_LABELS[name]


def class_count(labels, predictions) -> int:
    """Number of classes seen in labels and predictions (at least 2: a task has two classes or more)."""
    largest = max(int(np.max(labels, initial=0)), int(np.max(predictions, initial=0)))
    return max(2, largest + 1)


def primary_metric(name: str, labels, predictions, num_classes: int | None = None) -> float:
    """One metric of predicted labels against true labels, by scikit-learn.

    accuracy  share of correct predictions
    mcc       Matthews correlation coefficient (its multi-class generalisation for 3+ classes);
              0 when it is undefined (all predictions or all labels one class)
    f1        binary tasks: F1 of the positive class, label 1; multi-class tasks (3+ classes):
              the macro average of the per-class F1 over the classes present in labels or predictions.
    F1 is 0 where it is undefined (no example of the class in labels or predictions).

    `num_classes` says whether the task is binary; by default it is read from the largest label seen.
    """
    # Imported here (it takes most of a second) so that crisp.figures, which needs only
    # metric_label, does not load scikit-learn.
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    check_metric(name)
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and predictions must be one-dimensional and of equal length, got {labels.shape} "
            f"and {predictions.shape}."
        )
    if name == "accuracy":
        return float(accuracy_score(labels, predictions))
    if name == "mcc":
        return float(matthews_corrcoef(labels, predictions))
    num_classes = num_classes or class_count(labels, predictions)
    if num_classes <= 2:
        return float(f1_score(labels, predictions, labels=[1], average="macro", zero_division=0.0))
    return float(f1_score(labels, predictions, average="macro", zero_division=0.0))


def classification_metrics(labels, probabilities) -> dict:
    """Validation metrics from true labels (N,) and predicted class probabilities (N, K), K >= 2.

    The predicted label is the most probable class. Returns:

    accuracy, correct, total   share and count of correct predictions, number of examples
    mcc, f1                    as in `primary_metric` (F1 of label 1 for K = 2, macro F1 for K >= 3)
    nll     mean negative log-likelihood of the true class, natural log; probabilities below
            1e-12 are raised to 1e-12 so one confidently wrong example stays finite
    ece     expected calibration error of the top-class confidence: 15 equal-width bins on [0, 1],
            sum over bins of (share of examples in the bin) * |accuracy - mean confidence|, by
            torchmetrics' multiclass_calibration_error (norm="l1") for every K, binary included
            (its binary_calibration_error bins the positive-class probability instead)
    brier   multi-class Brier score: mean over examples of sum over classes of (p_k - 1[k = label])^2,
            0 for certain and right, 2 for certain and wrong
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (examples, classes >= 2), got {probabilities.shape}.")
    total, num_classes = probabilities.shape
    if labels.shape != (total,):
        raise ValueError(f"{total} rows of probabilities but labels of shape {labels.shape}.")
    if total == 0:
        raise ValueError("classification_metrics needs at least one example.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be class indices 0..{num_classes - 1}, got values {np.unique(labels)[:10]}.")

    # Imported here so that tables and statistics, which need only primary_metric, do not load torch.
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    predictions = probabilities.argmax(axis=1)
    correct = int((predictions == labels).sum())
    true_class_probability = probabilities[np.arange(total), labels]
    one_hot = np.eye(num_classes)[labels]
    ece = multiclass_calibration_error(
        torch.from_numpy(probabilities),
        torch.from_numpy(labels.astype(np.int64)),
        num_classes=num_classes,
        n_bins=CALIBRATION_BINS,
        norm="l1",
    )
    return {
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "mcc": primary_metric("mcc", labels, predictions, num_classes),
        "f1": primary_metric("f1", labels, predictions, num_classes),
        "nll": float(-np.log(np.clip(true_class_probability, PROBABILITY_FLOOR, 1.0)).mean()),
        "ece": float(ece),
        "brier": float(((probabilities - one_hot) ** 2).sum(axis=1).mean()),
    }
