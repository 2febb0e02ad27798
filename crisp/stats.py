"""Statistics for comparing an experiment with its baseline over matched seeds.

    paired_t_test                  the verdict: paired t-test of the per-seed differences, with its interval
    sign_flip_test                 paired permutation test of the per-seed differences
    holm_adjusted, bh_q_values     multiple-comparison corrections (statsmodels' multipletests)
    mcnemar_exact_p_value          exact McNemar test of examples gained and lost (one seed's two models)
    paired_bootstrap               interval of the mean difference from test-set sampling, given the
                                   trained models: validation examples resampled, seeds matched
    minimum_detectable_difference  the smallest true difference the paired t-test detects (noncentral t)
    seeds_needed                   how many seeds the paired t-test needs to detect a given difference
    random_effects                 random-effects meta-analysis of per-group effects (statsmodels)

Seed i of the baseline is paired with seed i of the experiment: same data order, same initialisation
of the shared weights, so the difference removes what the two runs have in common. The training run
is the unit that is randomised, so the verdict is a test over seeds; the bootstrap and McNemar hold the
trained models fixed and speak only to which examples happened to be in the validation set.

scipy and statsmodels are imported inside the functions that use them, so importing this module (as
crisp.tables and crisp.figures do) stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from crisp.metrics import check_metric, class_count

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

    Beyond EXACT_SIGN_FLIP_MAX_SEEDS seeds the assignments are drawn at random (Monte Carlo) and the
    p-value is (draws reaching |sum| + 1) / (draws + 1), which counts the observed assignment itself
    and so is never 0 (Phipson & Smyth 2010).
    """
    differences = np.asarray(list(differences), dtype=float)
    n = len(differences)
    if n == 0:
        raise ValueError("sign_flip_test needs at least one paired difference.")
    observed = abs(differences.sum())
    # Floating-point sums in another order may differ in the last bits from the observed one.
    tolerance = 1e-9 * max(np.abs(differences).sum(), 1e-300)
    if n <= EXACT_SIGN_FLIP_MAX_SEEDS:
        # Row i holds the binary digits of i mapped to +1/-1: every assignment exactly once.
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        signs = 1 - 2 * bits.astype(np.int8)
        flipped = np.abs(signs @ differences)
        return float(np.mean(flipped >= observed - tolerance)), f"exact sign-flip permutation, n={n}"
    signs = np.random.default_rng(0).choice(np.array([-1, 1], dtype=np.int8), size=(MONTE_CARLO_SIGN_FLIPS, n))
    reached = int((np.abs(signs @ differences) >= observed - tolerance).sum())
    name = f"Monte Carlo sign-flip permutation ({MONTE_CARLO_SIGN_FLIPS} draws), n={n}"
    return (reached + 1) / (MONTE_CARLO_SIGN_FLIPS + 1), name


def sign_flip_minimum_p(n: int) -> float:
    """The smallest p-value the two-sided sign-flip test can give with n seeds: 2 / 2**n (all
    differences of one sign). When it is above the test's level, the test cannot reject at all."""
    return min(1.0, 2.0 / 2**n) if n > 0 else float("nan")


def paired_t_test(differences: Iterable[float], confidence: float = 0.95) -> dict:
    """Two-sided paired t-test of 'mean difference = 0' on per-seed differences, df = n - 1
    (scipy.stats.ttest_1samp), with its confidence interval of the mean difference.

    Returns {"mean", "std", "n", "df", "t", "p_value", "low", "high"}; the test fields are NaN for
    fewer than two seeds. When every seed gives the same difference there is no spread: the t
    statistic is then infinite (p = 0, the interval a single point) unless the difference is 0 (p = 1).
    """
    from scipy import stats as scipy_stats

    differences = np.asarray(list(differences), dtype=float)
    n = len(differences)
    mean = float(differences.mean()) if n else float("nan")
    result = {"mean": mean, "std": float("nan"), "n": n, "df": n - 1 if n else 0}
    result.update(t=float("nan"), p_value=float("nan"), low=float("nan"), high=float("nan"))
    if n < 2:
        return result
    std = float(differences.std(ddof=1))
    result["std"] = std
    if np.ptp(differences) <= 1e-12 * max(np.abs(differences).max(), 1e-300):
        # No spread: scipy would divide rounding noise by rounding noise.
        result.update(std=0.0, low=mean, high=mean)
        if mean == 0:
            result.update(t=0.0, p_value=1.0)
        else:
            result.update(t=math.copysign(math.inf, mean), p_value=0.0)
        return result
    test = scipy_stats.ttest_1samp(differences, 0.0)
    interval = test.confidence_interval(confidence)
    result.update(t=float(test.statistic), p_value=float(test.pvalue))
    result.update(low=float(interval.low), high=float(interval.high))
    return result


def holm_adjusted(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction of one family: (rejected, adjusted p-values), statsmodels'
    multipletests(method="holm"). NaN p-values (no test) stay NaN, are not rejected, and do not
    count towards the family's size."""
    return _multipletests(p_values, alpha, "holm")


def bh_q_values(p_values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate), statsmodels' multipletests("fdr_bh");
    NaN where there is no test."""
    return _multipletests(p_values, alpha, "fdr_bh")[1]


def _multipletests(p_values, alpha: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    import gc

    from statsmodels.stats.multitest import multipletests

    p_values = np.asarray(p_values, dtype=float)
    rejected = np.zeros(len(p_values), dtype=bool)
    adjusted = np.full(len(p_values), np.nan)
    tested = ~np.isnan(p_values)
    if tested.any():
        # statsmodels' Holm branch calls gc.collect(), which walks every live object (the tables stage
        # holds every run's predictions): frozen objects are skipped, so each family costs microseconds.
        gc.freeze()
        try:
            rejected[tested], adjusted[tested], *_ = multipletests(p_values[tested], alpha=alpha, method=method)
        finally:
            gc.unfreeze()
    return rejected, adjusted


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

    # cells[j, a * K*K + t*K + p] = 1 when example j has label t and arm a predicts p, so that
    # (how often each example is drawn) @ cells = every arm's confusion counts in one product.
    examples = len(labels)
    cell_codes = np.stack([labels * num_classes + predictions for predictions in arms], axis=1)
    cell_codes = cell_codes + np.arange(len(arms)) * num_classes**2
    cells = np.zeros((examples, len(arms) * num_classes**2))
    np.put_along_axis(cells, cell_codes, 1.0, axis=1)
    # The full validation set is the draw that takes every example once.
    full_sample = metric_from_confusion(metric, cells.sum(axis=0).reshape(len(arms), num_classes, num_classes))
    mean_difference = float(np.mean(full_sample[seeds:] - full_sample[:seeds]))

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
    """Smallest true mean difference a two-sided paired t-test at level alpha on these seeds would
    detect with the given power, taking the seeds' spread (sample sd of the differences) as the truth.

    Exact: the effect size d solves power = P(|T| > t_{1-alpha/2, n-1}) with T noncentral t of
    n - 1 degrees of freedom and noncentrality d * sqrt(n) (statsmodels' TTestPower, which uses
    scipy.stats.nct); MDD = d * sd. The closed form (t_{1-alpha/2} + t_{power}) * sd / sqrt(n) is
    16 % short at two seeds. NaN for fewer than two seeds (no spread to measure).
    """
    differences = np.asarray(list(differences), dtype=float)
    n = len(differences)
    if n < 2:
        return float("nan")
    std = float(differences.std(ddof=1))
    if std == 0:
        return 0.0
    return detectable_effect_size(n, alpha, power) * std


def detectable_effect_size(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The standardised difference (mean / sd of the differences) a two-sided one-sample t-test with
    n observations detects at level alpha with this power (exact noncentral t)."""
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided"))


def seeds_needed(std: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The fewest seeds (at least 2) with which a two-sided paired t-test at level alpha detects a
    true mean difference `difference` with this power, when the per-seed differences spread with
    standard deviation `std` (same units). Exact noncentral t; NaN when std is unknown."""
    from scipy import stats as scipy_stats

    if not (np.isfinite(std) and difference > 0):
        return float("nan")
    effect = difference / std if std > 0 else math.inf

    def power_at(n: int) -> float:
        degrees, noncentrality = n - 1, effect * math.sqrt(n)
        critical = scipy_stats.t.isf(alpha / 2, degrees)
        upper = scipy_stats.nct.sf(critical, degrees, noncentrality)
        return float(upper + scipy_stats.nct.cdf(-critical, degrees, noncentrality))

    if not np.isfinite(effect):
        return 2.0
    # Power grows with n; double, then bisect, so a large requirement costs few evaluations.
    low, high = 1, 2
    while power_at(high) < power:
        low, high = high, high * 2
        if high > 10**7:
            return float("inf")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if power_at(middle) < power else (low, middle)
    return float(high)


def random_effects(effects: Sequence[float], variances: Sequence[float], confidence: float = 0.95) -> dict:
    """Random-effects meta-analysis of k effects with known within-group variances (statsmodels'
    combine_effects, Paule-Mandel between-group variance tau^2).

    Returns {"groups", "effect", "se", "low", "high", "tau2", "i2", "q", "q_p_value",
    "prediction_low", "prediction_high"}: the pooled effect with its interval on Student's t with
    k - 1 degrees of freedom (for few groups a normal interval is too narrow), I^2 from Cochran's Q
    (Higgins & Thompson 2002, 0 when Q < k - 1) and the prediction interval of a new group's effect,
    effect +- t_{k-2} sqrt(tau^2 + se^2) (Higgins, Thompson & Spiegelhalter 2009; NaN below 3 groups).
    """
    from scipy import stats as scipy_stats
    from statsmodels.stats.meta_analysis import combine_effects

    effects, variances = np.asarray(effects, dtype=float), np.asarray(variances, dtype=float)
    k = len(effects)
    if k < 2 or len(variances) != k or not (variances > 0).all():
        raise ValueError(f"random_effects needs at least two effects with positive variances, got {k}.")
    alpha = 1 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):  # I^2 divides by Q, 0 when all effects agree
        fit = combine_effects(effects, variances, "iterated", use_t=True, alpha=alpha, atol=1e-10, maxiter=200)
    low, high = fit.conf_int(alpha=alpha, use_t=True)[1]  # random effects, scale 1, t_{k-1}
    homogeneity = fit.test_homogeneity()
    result = {
        "groups": k,
        "effect": float(fit.mean_effect_re),
        "se": float(fit.sd_eff_w_re),
        "low": float(low),
        "high": float(high),
        "tau2": float(fit.tau2),
        "i2": float(max(0.0, fit.i2)) if np.isfinite(fit.i2) else 0.0,
        "q": float(homogeneity.statistic),
        "q_p_value": float(homogeneity.pvalue),
        "prediction_low": float("nan"),
        "prediction_high": float("nan"),
    }
    if k >= 3:
        spread = scipy_stats.t.isf(alpha / 2, k - 2) * math.sqrt(fit.tau2 + fit.sd_eff_w_re**2)
        result.update(prediction_low=float(result["effect"] - spread), prediction_high=float(result["effect"] + spread))
    return result
