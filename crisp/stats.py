"""Statistics for comparing an experiment with its baseline over matched seeds.

    sign_flip_test                 paired permutation test of the per-seed differences
    mcnemar_exact_p_value          exact McNemar test of examples gained and lost
    paired_bootstrap               confidence interval of the mean difference on the primary metric,
                                   resampling validation examples with seeds matched
    minimum_detectable_difference  the smallest true difference the seeds could detect with a paired t-test

Seed i of the baseline is paired with seed i of the experiment: same data order, same initialisation
of the shared weights, so the difference removes what the two runs have in common.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from crisp.metrics import check_metric, class_count, primary_metric

# Exact enumeration of 2**n sign assignments stays small (about 20 MB) up to this many seeds.
EXACT_SIGN_FLIP_MAX_SEEDS = 20
MONTE_CARLO_SIGN_FLIPS = 2**20

# The bootstrap draws this many (resample, example) cells at a time: about 32 MB of counts, so
# large validation sets (QQP has 40 430 examples) do not need gigabytes.
BOOTSTRAP_CHUNK_CELLS = 2**22


def sign_flip_test(differences: Iterable[float]) -> tuple[float, str]:
    """Two-sided paired permutation test of 'mean difference = 0' -> (p-value, test name).

    Under the null hypothesis each seed's difference is as likely to have had the opposite sign,
    so the p-value is the share of the 2**n sign assignments whose |sum| reaches the observed
    |sum|. With n seeds the smallest possible p-value is 2 / 2**n (0.25 for 3 seeds).
    """
    differences = np.asarray(list(differences), dtype=float)
    n = len(differences)
    if n == 0:
        raise ValueError("sign_flip_test needs at least one paired difference.")
    if n <= EXACT_SIGN_FLIP_MAX_SEEDS:
        # Row i holds the binary digits of i mapped to +1/-1: every assignment exactly once.
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        signs = 1 - 2 * bits.astype(np.int8)
        name = f"exact sign-flip permutation, n={n}"
    else:
        signs = np.random.default_rng(0).choice(np.array([-1, 1], dtype=np.int8), size=(MONTE_CARLO_SIGN_FLIPS, n))
        name = f"Monte Carlo sign-flip permutation ({MONTE_CARLO_SIGN_FLIPS} draws), n={n}"
    flipped = np.abs(signs @ differences)
    observed = abs(differences.sum())
    # Floating-point sums in another order may differ in the last bits from the observed one.
    tolerance = 1e-9 * max(np.abs(differences).sum(), 1e-300)
    return float(np.mean(flipped >= observed - tolerance)), name


def mcnemar_exact_p_value(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test: binomial(gained + lost, 1/2) tail, doubled, at most 1."""
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def metric_from_confusion(name: str, confusion: np.ndarray) -> np.ndarray:
    """A metric of many confusion matrices at once: confusion (..., K, K), rows true labels, columns
    predictions -> metric (...). Gives the same numbers as crisp.metrics.primary_metric (scikit-learn)
    on the predictions the counts come from, including its 0 for an undefined MCC or F1."""
    check_metric(name)
    confusion = np.asarray(confusion, dtype=np.float64)
    num_classes = confusion.shape[-1]
    true_counts = confusion.sum(axis=-1)
    predicted_counts = confusion.sum(axis=-2)
    correct = np.trace(confusion, axis1=-2, axis2=-1)
    total = true_counts.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "accuracy":
            return correct / total
        if name == "mcc":
            # scikit-learn's multi-class form; for two classes it is the usual (TP*TN - FP*FN) / sqrt(...).
            covariance = correct * total - (true_counts * predicted_counts).sum(axis=-1)
            predicted_spread = total**2 - (predicted_counts**2).sum(axis=-1)
            true_spread = total**2 - (true_counts**2).sum(axis=-1)
            undefined = predicted_spread * true_spread == 0
            spread = np.sqrt(np.where(undefined, 1.0, predicted_spread * true_spread))
            return np.where(undefined, 0.0, covariance / spread)
        hits = np.diagonal(confusion, axis1=-2, axis2=-1)
        denominator = true_counts + predicted_counts  # 2 TP + FP + FN of each class
        per_class = np.where(denominator > 0, 2 * hits / np.where(denominator > 0, denominator, 1.0), 0.0)
        if num_classes <= 2:
            return per_class[..., 1]
        present = denominator > 0
        return per_class.sum(axis=-1) / present.sum(axis=-1)


def paired_bootstrap(
    labels,
    baseline_predictions: Sequence,
    experiment_predictions: Sequence,
    metric: str,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    num_classes: int | None = None,
) -> dict:
    """Mean difference experiment - baseline on `metric` over matched seeds, with a bootstrap interval.

    baseline_predictions[i] and experiment_predictions[i] are seed i's predicted labels for every
    validation example, in the order of `labels`. The point estimate (mean_difference) is the mean over
    seeds of metric(experiment seed i) - metric(baseline seed i) on the full validation set.

    The interval is a percentile bootstrap over validation examples: each of `resamples` resamples draws
    the examples with replacement (numpy default_rng(seed)), the same draw for every seed and both arms
    (paired), and recomputes the mean difference; low and high are its (1 - confidence)/2 and
    (1 + confidence)/2 quantiles. It reflects which examples happened to be in the validation set,
    given these trained models; seed-to-seed spread is what sign_flip_test and
    minimum_detectable_difference speak to.

    Returns {"mean_difference", "low", "high", "resamples", "seed", "confidence"}.
    """
    check_metric(metric)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty one-dimensional array, got shape {labels.shape}.")
    if len(baseline_predictions) != len(experiment_predictions) or len(baseline_predictions) == 0:
        raise ValueError(
            "paired_bootstrap needs one prediction array per matched seed in each arm, got "
            f"{len(baseline_predictions)} baseline and {len(experiment_predictions)} experiment seeds."
        )
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}.")
    arms = [np.asarray(p) for p in (*baseline_predictions, *experiment_predictions)]
    for position, predictions in enumerate(arms):
        if predictions.shape != labels.shape:
            arm, index = divmod(position, len(baseline_predictions))
            raise ValueError(
                f"{('baseline', 'experiment')[arm]} seed {index} has predictions of shape {predictions.shape}, "
                f"the labels {labels.shape}: both must cover the same validation examples."
            )
    seeds = len(baseline_predictions)
    num_classes = num_classes or max(class_count(labels, predictions) for predictions in arms)
    if any(np.min(values) < 0 or np.max(values) >= num_classes for values in (labels, *arms)):
        raise ValueError(f"labels and predictions must be class indices 0..{num_classes - 1}.")
    labels, arms = labels.astype(np.int64), [predictions.astype(np.int64) for predictions in arms]
    full_sample = [primary_metric(metric, labels, predictions, num_classes) for predictions in arms]
    mean_difference = float(np.mean(np.subtract(full_sample[seeds:], full_sample[:seeds])))

    # cells[j, a * K*K + t*K + p] = 1 when example j has label t and arm a predicts p, so that
    # (how often each example is drawn) @ cells = every arm's confusion counts in one product.
    examples = len(labels)
    cell_codes = np.stack([labels * num_classes + predictions for predictions in arms], axis=1)
    cell_codes = cell_codes + np.arange(len(arms)) * num_classes**2
    cells = np.zeros((examples, len(arms) * num_classes**2))
    np.put_along_axis(cells, cell_codes, 1.0, axis=1)

    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_CELLS // examples)
    differences = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, examples, size=(size, examples))
        draw_counts = np.bincount(
            (drawn + examples * np.arange(size)[:, None]).ravel(), minlength=size * examples
        ).reshape(size, examples)
        confusion = (draw_counts @ cells).reshape(size, len(arms), num_classes, num_classes)
        scores = metric_from_confusion(metric, confusion)
        differences.append((scores[:, seeds:] - scores[:, :seeds]).mean(axis=1))
    low, high = np.quantile(np.concatenate(differences), [(1 - confidence) / 2, (1 + confidence) / 2])
    return {
        "mean_difference": mean_difference,
        "low": float(low),
        "high": float(high),
        "resamples": int(resamples),
        "seed": int(seed),
        "confidence": float(confidence),
    }


def minimum_detectable_difference(differences: Iterable[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test on these seeds would detect.

    With n paired per-seed differences of sample standard deviation sd (ddof = 1):

        MDD = (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)

    where t_{q, n-1} is the q quantile of Student's t with n - 1 degrees of freedom. This is the usual
    closed form, which takes the sd as known; the exact noncentral-t power calculation asks for a
    slightly larger difference. NaN for fewer than two seeds (no spread to measure).
    """
    # Imported here so that importing crisp.tables, as crisp.figures does, does not load scipy.
    from scipy import stats as scipy_stats

    differences = np.asarray(list(differences), dtype=float)
    n = len(differences)
    if n < 2:
        return float("nan")
    degrees = n - 1
    quantiles = scipy_stats.t.ppf(1 - alpha / 2, degrees) + scipy_stats.t.ppf(power, degrees)
    return float(quantiles * differences.std(ddof=1) / math.sqrt(n))
