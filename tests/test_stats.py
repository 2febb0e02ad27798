import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from crisp import stats
from crisp.metrics import primary_metric


def test_sign_flip_p_value_on_hand_examples():
    p, name = stats.sign_flip_test([1.0, 2.0, 4.0])  # |sum| 7 is reached only by all-plus and all-minus
    assert p == pytest.approx(2 / 8)
    assert name == "exact sign-flip permutation, n=3"
    p, _ = stats.sign_flip_test([3.0, 2.0, -1.0])  # |sum| 4; flip sums 6, 4, -4, -6 reach it
    assert p == pytest.approx(4 / 8)
    p, _ = stats.sign_flip_test([1.0, 1.0, -2.0])  # sum 0: every flip reaches it
    assert p == 1.0
    with pytest.raises(ValueError, match="at least one"):
        stats.sign_flip_test([])


def test_sign_flip_beyond_exact_limit_is_monte_carlo():
    seeds = stats.EXACT_SIGN_FLIP_MAX_SEEDS + 1
    p, name = stats.sign_flip_test([1.0] * seeds)  # exact value 2 / 2**21: almost no draw reaches it
    assert p < 1e-4
    assert name == f"Monte Carlo sign-flip permutation ({stats.MONTE_CARLO_SIGN_FLIPS} draws), n={seeds}"


def test_mcnemar_exact_hand_examples():
    # 2 gained, 8 lost: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert stats.mcnemar_exact_p_value(2, 8) == pytest.approx(0.109375)
    assert stats.mcnemar_exact_p_value(8, 2) == pytest.approx(0.109375)
    assert stats.mcnemar_exact_p_value(0, 0) == 1.0
    assert stats.mcnemar_exact_p_value(5, 5) == 1.0
    assert stats.mcnemar_exact_p_value(15, 0) == pytest.approx(2 / 2**15)


SKLEARN = {
    "accuracy": accuracy_score,
    "mcc": matthews_corrcoef,
    "f1": lambda y, p: f1_score(y, p, labels=[1], average="macro", zero_division=0.0),
}


def confusion(labels, predictions, num_classes):
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (labels, predictions), 1)
    return counts


@pytest.mark.filterwarnings("ignore:A single label was found")  # the one-class draws, on purpose
@pytest.mark.parametrize("metric", ["accuracy", "mcc", "f1"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_metric_from_confusion_equals_sklearn_on_resamples(metric, num_classes):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, num_classes, 40)
    predictions = np.where(rng.random(40) < 0.7, labels, rng.integers(0, num_classes, 40))
    draws = [rng.integers(0, 40, 40) for _ in range(30)]
    draws += [np.flatnonzero(labels == 0)[:5], np.flatnonzero(predictions == 1)[:5]]  # one class only: undefined MCC
    matrices = np.stack([confusion(labels[d], predictions[d], num_classes) for d in draws])
    vectorised = stats.metric_from_confusion(metric, matrices)
    sklearn_metric = SKLEARN[metric]
    if metric == "f1" and num_classes > 2:  # macro F1 over the classes present
        sklearn_metric = lambda y, p: f1_score(y, p, average="macro", zero_division=0.0)
    expected = [sklearn_metric(labels[d], predictions[d]) for d in draws]
    np.testing.assert_allclose(vectorised, expected, atol=1e-12)


def naive_bootstrap(labels, baseline, experiment, metric, resamples, seed, confidence, num_classes):
    """The bootstrap written the slow, obvious way: the same draws, sklearn on each resample."""
    drawn = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    differences = [
        np.mean(
            [
                primary_metric(metric, labels[d], e[d], num_classes)
                - primary_metric(metric, labels[d], b[d], num_classes)
                for b, e in zip(baseline, experiment)
            ]
        )
        for d in drawn
    ]
    return np.quantile(differences, [(1 - confidence) / 2, (1 + confidence) / 2])


def noisy_copies(labels, accuracy, seeds, rng, num_classes):
    return [
        np.where(rng.random(len(labels)) < accuracy, labels, rng.integers(0, num_classes, len(labels)))
        for _ in range(seeds)
    ]


@pytest.mark.parametrize("metric", ["accuracy", "mcc", "f1"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_paired_bootstrap_equals_the_naive_loop(metric, num_classes):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, num_classes, 30)
    baseline = noisy_copies(labels, 0.6, 2, rng, num_classes)
    experiment = noisy_copies(labels, 0.8, 2, rng, num_classes)
    result = stats.paired_bootstrap(labels, baseline, experiment, metric, resamples=40, seed=4, confidence=0.9)

    full = [primary_metric(metric, labels, e) - primary_metric(metric, labels, b) for b, e in zip(baseline, experiment)]
    assert result["mean_difference"] == pytest.approx(np.mean(full))
    low, high = naive_bootstrap(labels, baseline, experiment, metric, 40, 4, 0.9, num_classes)
    assert (result["low"], result["high"]) == (pytest.approx(low), pytest.approx(high))
    assert result["low"] <= result["mean_difference"] <= result["high"]
    assert result["low"] < result["high"]
    assert (result["resamples"], result["seed"], result["confidence"]) == (40, 4, 0.9)


def test_identical_predictions_give_a_zero_interval():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    predictions = noisy_copies(labels, 0.7, 3, rng, 2)
    for metric in ("accuracy", "mcc", "f1"):
        result = stats.paired_bootstrap(labels, predictions, [p.copy() for p in predictions], metric, resamples=100)
        assert (result["mean_difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)


def test_a_difference_every_resample_shares_is_the_whole_interval():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    wrong, right = 1 - labels, labels.copy()
    # Seed 0: baseline wrong everywhere, experiment right everywhere (+1 in any resample);
    # seed 1: the two arms agree (0). The mean over seeds is 0.5 whatever the resample.
    result = stats.paired_bootstrap(labels, [wrong, right], [right, right], "accuracy", resamples=50, seed=1)
    assert result == {"mean_difference": 0.5, "low": 0.5, "high": 0.5, "resamples": 50, "seed": 1, "confidence": 0.95}


def test_bootstrap_drawn_in_chunks_gives_the_same_interval(monkeypatch):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 31)
    baseline, experiment = noisy_copies(labels, 0.6, 3, rng, 2), noisy_copies(labels, 0.8, 3, rng, 2)
    whole = stats.paired_bootstrap(labels, baseline, experiment, "mcc", resamples=97)
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK_CELLS", 31 * 10)  # 10 resamples at a time
    assert stats.paired_bootstrap(labels, baseline, experiment, "mcc", resamples=97) == whole


def test_paired_bootstrap_size_of_sst2_runs():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 872)
    baseline, experiment = noisy_copies(labels, 0.8, 5, rng, 2), noisy_copies(labels, 0.82, 5, rng, 2)
    result = stats.paired_bootstrap(labels, baseline, experiment, "f1")
    assert result["low"] < result["mean_difference"] < result["high"]
    assert result["high"] - result["low"] < 0.1


def test_paired_bootstrap_refuses_unpaired_input():
    labels = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="one prediction array per matched seed"):
        stats.paired_bootstrap(labels, [labels, labels], [labels], "accuracy")
    with pytest.raises(ValueError, match="experiment seed 1 .*same validation examples"):
        stats.paired_bootstrap(labels, [labels, labels], [labels, labels[:2]], "accuracy")
    with pytest.raises(ValueError, match="'auc'"):
        stats.paired_bootstrap(labels, [labels], [labels], "auc")
    with pytest.raises(ValueError, match="class indices 0..1"):
        stats.paired_bootstrap(labels, [labels], [np.array([0, 1, -1])], "accuracy")


def test_minimum_detectable_difference_from_t_quantiles():
    # Two seeds, differences 0 and 2: sd = sqrt(2), sd / sqrt(n) = 1, so MDD = t_.975,1 + t_.8,1.
    assert stats.minimum_detectable_difference([0.0, 2.0]) == pytest.approx(12.7062047 + 1.3763819, abs=1e-6)
    # Five seeds 1..5: sd = sqrt(2.5), sd / sqrt(5) = sqrt(0.5); t_.975,4 = 2.7764451, t_.8,4 = 0.9409646.
    expected = (2.7764451 + 0.9409646) * math.sqrt(0.5)
    assert stats.minimum_detectable_difference([1, 2, 3, 4, 5]) == pytest.approx(expected, abs=1e-6)
    # alpha 0.1 and power 0.9 with three seeds 0, 1, 2 (sd 1): t_.95,2 = 2.9199856, t_.9,2 = 1.8856181.
    expected = (2.9199856 + 1.8856181) / math.sqrt(3)
    assert stats.minimum_detectable_difference([0, 1, 2], alpha=0.1, power=0.9) == pytest.approx(expected, abs=1e-6)


def test_minimum_detectable_difference_edge_cases():
    assert math.isnan(stats.minimum_detectable_difference([0.01]))
    assert math.isnan(stats.minimum_detectable_difference([]))
    assert stats.minimum_detectable_difference([0.02, 0.02, 0.02]) == 0.0
