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


def test_monte_carlo_sign_flip_p_value_is_never_zero():
    # 25 seeds of one sign: exact p = 2 / 2**25, so the 2**20 draws almost surely reach it never;
    # the Monte Carlo p-value counts the observed assignment: (count + 1) / (draws + 1).
    p, _ = stats.sign_flip_test([1.0] * 25)
    draws = stats.MONTE_CARLO_SIGN_FLIPS
    assert p > 0 and round(p * (draws + 1)) == pytest.approx(p * (draws + 1)) and p >= 1 / (draws + 1)
    assert stats.sign_flip_minimum_p(5) == 0.0625 and stats.sign_flip_minimum_p(6) == pytest.approx(0.03125)


def test_paired_t_test_by_hand_and_against_scipy():
    from scipy import stats as scipy_stats

    # Differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t = 3 / sqrt(0.5) = 4.2426, df 4;
    # t_.975,4 = 2.7764451, so the interval is 3 +- 2.7764451 * sqrt(0.5).
    result = stats.paired_t_test([1, 2, 3, 4, 5])
    assert (result["mean"], result["n"], result["df"]) == (3.0, 5, 4)
    assert result["std"] == pytest.approx(math.sqrt(2.5))
    assert result["t"] == pytest.approx(3 / math.sqrt(0.5))
    assert result["p_value"] == pytest.approx(2 * scipy_stats.t.sf(3 / math.sqrt(0.5), 4))
    assert result["p_value"] == pytest.approx(0.013236, abs=1e-6)
    assert (result["low"], result["high"]) == (
        pytest.approx(3 - 2.7764451 * math.sqrt(0.5), abs=1e-6),
        pytest.approx(3 + 2.7764451 * math.sqrt(0.5), abs=1e-6),
    )
    # The same as scipy's paired test of the two arms, at another level.
    rng = np.random.default_rng(1)
    baseline, experiment = rng.normal(0.9, 0.01, 7), rng.normal(0.91, 0.01, 7)
    paired = scipy_stats.ttest_rel(experiment, baseline)
    result = stats.paired_t_test(experiment - baseline, confidence=0.9)
    assert result["p_value"] == pytest.approx(paired.pvalue) and result["t"] == pytest.approx(paired.statistic)
    interval = paired.confidence_interval(0.9)
    assert (result["low"], result["high"]) == (pytest.approx(interval.low), pytest.approx(interval.high))


def test_paired_t_test_edge_cases():
    one = stats.paired_t_test([0.02])
    assert one["mean"] == 0.02 and math.isnan(one["p_value"]) and math.isnan(one["low"])
    same = stats.paired_t_test([0.02, 0.02, 0.02])  # no spread: t infinite
    assert (same["p_value"], same["low"], same["high"], same["std"]) == (0.0, 0.02, 0.02, 0.0)
    assert stats.paired_t_test([0.0, 0.0])["p_value"] == 1.0


def test_holm_and_benjamini_hochberg_by_hand():
    # Holm: sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    # 0.02, 0.03, 0.06, 0.06. BH: p * 4 / rank = 0.02, 0.02, 0.04, 0.04, running min from the top.
    p_values = [0.01, 0.04, math.nan, 0.03, 0.005]  # NaN: no test, not counted in the family
    rejected, adjusted = stats.holm_adjusted(p_values, alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, math.nan, 0.06, 0.02])
    assert rejected.tolist() == [True, False, False, False, True]
    np.testing.assert_allclose(stats.bh_q_values(p_values), [0.02, 0.04, math.nan, 0.04, 0.02])


def test_random_effects_on_kacker_example_matches_metafor():
    """Kacker (2004), as in statsmodels' tests: metafor's rma(y, v, method="PM") gives b, se and tau^2."""
    y = [61.00, 61.40, 62.21, 62.30, 62.34, 62.60, 62.70, 62.84, 65.90]
    v = [0.2025, 1.2100, 0.0900, 0.2025, 0.3844, 0.5625, 0.0676, 0.0225, 1.8225]
    b, se, tau2, q = 62.4076199113286, 0.338030602684471, 0.705395309224248, 24.801897741835
    result = stats.random_effects(y, v)
    assert result["groups"] == 9
    assert result["effect"] == pytest.approx(b, abs=1e-6)
    assert result["se"] == pytest.approx(se, abs=1e-6) and result["tau2"] == pytest.approx(tau2, abs=1e-6)
    assert result["q"] == pytest.approx(q) and result["q_p_value"] == pytest.approx(0.00167935146372742)
    assert result["i2"] == pytest.approx(1 - 8 / q) == pytest.approx(0.67744403741711)  # metafor's DL I2, Q-based
    # The interval on t with k - 1 = 8 df (2.306004), the prediction interval on t with 7 df (2.364624).
    assert (result["low"], result["high"]) == (
        pytest.approx(b - 2.306004 * se, abs=1e-5),
        pytest.approx(b + 2.306004 * se, abs=1e-5),
    )
    spread = 2.364624 * math.sqrt(tau2 + se**2)
    assert (result["prediction_low"], result["prediction_high"]) == (
        pytest.approx(b - spread, abs=1e-5),
        pytest.approx(b + spread, abs=1e-5),
    )
    two = stats.random_effects([0.1, 0.3], [0.01, 0.01])
    assert math.isnan(two["prediction_low"])  # a prediction interval needs three groups
    with pytest.raises(ValueError, match="at least two effects with positive variances"):
        stats.random_effects([0.1, 0.2], [0.01, 0.0])


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


def power_of_t_test(difference, std, n, alpha):
    """Two-sided one-sample t-test power, written out with scipy's noncentral t."""
    from scipy import stats as scipy_stats

    critical = scipy_stats.t.isf(alpha / 2, n - 1)
    noncentrality = difference / std * math.sqrt(n)
    return scipy_stats.nct.sf(critical, n - 1, noncentrality) + scipy_stats.nct.cdf(-critical, n - 1, noncentrality)


@pytest.mark.parametrize(
    ("differences", "alpha", "power"), [([0.0, 2.0], 0.05, 0.8), ([1, 2, 3, 4, 5], 0.05, 0.8), ([0, 1, 2], 0.1, 0.9)]
)
def test_minimum_detectable_difference_has_the_stated_power(differences, alpha, power):
    mdd = stats.minimum_detectable_difference(differences, alpha=alpha, power=power)
    std, n = np.std(differences, ddof=1), len(differences)
    assert power_of_t_test(mdd, std, n, alpha) == pytest.approx(power, abs=1e-6)


def test_closed_form_detectable_difference_is_short_at_two_seeds():
    # Two seeds, differences 0 and 2 (sd sqrt 2): the closed form (t_.975,1 + t_.8,1) * sd / sqrt(2) = 14.08
    # has only 0.73 power; the exact noncentral-t MDD is 16 % larger.
    closed_form = 12.7062047 + 1.3763819
    assert power_of_t_test(closed_form, math.sqrt(2), 2, 0.05) == pytest.approx(0.73, abs=0.01)
    assert stats.minimum_detectable_difference([0.0, 2.0]) / closed_form == pytest.approx(1.16, abs=0.01)


def test_seeds_needed_is_the_fewest_with_the_power():
    from statsmodels.stats.power import TTestPower

    for std, difference, alpha in ((1.7, 1.0, 0.05), (1.7, 1.0, 0.05 / 7), (1.2, 3.0, 0.05), (0.4, 0.1, 0.01)):
        n = stats.seeds_needed(std, difference, alpha, 0.8)
        assert power_of_t_test(difference, std, n, alpha) >= 0.8 > power_of_t_test(difference, std, n - 1, alpha)
        fractional = TTestPower().solve_power(effect_size=difference / std, alpha=alpha, power=0.8)
        assert n == math.ceil(fractional)
    assert stats.seeds_needed(0.0, 1.0) == 2 and math.isnan(stats.seeds_needed(math.nan, 1.0))


def test_minimum_detectable_difference_edge_cases():
    assert math.isnan(stats.minimum_detectable_difference([0.01]))
    assert math.isnan(stats.minimum_detectable_difference([]))
    assert stats.minimum_detectable_difference([0.02, 0.02, 0.02]) == 0.0
