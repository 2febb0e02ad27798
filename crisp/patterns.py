"""The catalogue of attention patterns and the rules of an experiment spec, without torch.

The configuration check (and so the Snakefile) needs to know which patterns exist, how each one
takes its sparsity and which options it accepts, long before any model is built: this module says
so with the standard library alone. `crisp.attention` implements the patterns listed here and checks
at import that its implementations take exactly these options.

A pattern's sparsity rule (`PatternInfo.sparsity`):
- "required": the fraction of each query row's real keys to drop, a number in [0, 1)
  (topk, random, window, block_topk).
- "zero":     the pattern keeps every key, so the sparsity is 0 (or left out): dense.
- "adaptive": the normaliser chooses its own support, so the sparsity is not set (left out or null);
  the kept fraction is measured instead (sparsemax, entmax15).

An experiment spec (one entry of `experiments:` in the configuration) is a dict with
    pattern            a name in PATTERNS_INFO (required)
    sparsity           by the pattern's rule above
    options            {name: value} of the pattern's options (default: none, each option its default)
    apply              "train_and_eval" (default): the pattern applies in training and evaluation;
                       "train": in training only, evaluation attends densely to every real key
    attention_dropout  null (default: the model's own) or a dropout rate in [0, 1) for the attention
                       probabilities
`check_experiment(spec)` raises `ExperimentError` naming the wrong key.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

SPARSITY_REQUIRED = "required"
SPARSITY_ZERO = "zero"
SPARSITY_ADAPTIVE = "adaptive"

APPLY_CHOICES = ("train_and_eval", "train")
EXPERIMENT_KEYS = ("pattern", "sparsity", "options", "apply", "attention_dropout")


# (1 - 0.7) * 10 is 3.0000000000000004 in floating point; without this slack ceil() would keep 4.
ROUNDING_SLACK = 1e-9


def keep_count(n_valid: int, sparsity: float) -> int:
    """Keys kept per query row of a sequence with `n_valid` real tokens: ceil((1 - sparsity) * n_valid),
    at least 1, at most n_valid (0 only for a sequence without any real token).

    The one rule behind every fixed-sparsity pattern and the FLOP accounting;
    `crisp.attention.keep_count` answers it element-wise for tensors too.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of keys to drop), got {sparsity!r}")
    if n_valid <= 0:
        return 0
    kept = math.ceil((1.0 - sparsity) * n_valid - ROUNDING_SLACK)
    return min(max(kept, 1), n_valid)


@dataclass(frozen=True)
class PatternOption:
    """An integer option of a pattern, with its default and smallest allowed value."""

    default: int
    minimum: int
    description: str


@dataclass(frozen=True)
class PatternInfo:
    sparsity: str  # SPARSITY_REQUIRED, SPARSITY_ZERO or SPARSITY_ADAPTIVE
    description: str
    options: dict[str, PatternOption] = field(default_factory=dict)


PATTERNS_INFO: dict[str, PatternInfo] = {
    "dense": PatternInfo(SPARSITY_ZERO, "every real key (the baseline)"),
    "topk": PatternInfo(SPARSITY_REQUIRED, "each query row keeps its k = keep_count(n, sparsity) highest scores"),
    "random": PatternInfo(
        SPARSITY_REQUIRED,
        "k keys per row chosen at random (a control); evaluation masks follow the run's seed",
    ),
    "window": PatternInfo(
        SPARSITY_REQUIRED,
        "the first token plus a band of k - 1 neighbouring keys around each query (no scores needed)",
    ),
    "block_topk": PatternInfo(
        SPARSITY_REQUIRED,
        "query and key blocks; each query block keeps its best key blocks (mean-pooled scores) to cover k keys",
        {"block_size": PatternOption(16, 1, "tokens per query block and per key block")},
    ),
    "sparsemax": PatternInfo(SPARSITY_ADAPTIVE, "sparsemax instead of softmax (entmax package)"),
    "entmax15": PatternInfo(SPARSITY_ADAPTIVE, "1.5-entmax instead of softmax (entmax package)"),
}
PATTERN_NAMES: tuple[str, ...] = tuple(PATTERNS_INFO)


class ExperimentError(ValueError):
    """An experiment spec that cannot run; `key` is the key inside the spec that is wrong."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_experiment(spec: dict) -> None:
    """Raise ExperimentError if `spec` (see the module docstring) is not a runnable experiment."""
    if not isinstance(spec, dict):
        raise ExperimentError("pattern", f"an experiment is a mapping with a 'pattern' key, got {spec!r}")
    for key in spec:
        if key not in EXPERIMENT_KEYS:
            raise ExperimentError(key, f"unknown experiment key {key!r}; known keys: {', '.join(EXPERIMENT_KEYS)}")
    pattern = spec.get("pattern")
    known = ", ".join(sorted(PATTERN_NAMES))
    if pattern is None:
        raise ExperimentError("pattern", f"an experiment needs a pattern; known patterns: {known}")
    if not isinstance(pattern, str) or pattern not in PATTERNS_INFO:
        raise ExperimentError("pattern", f"unknown attention pattern {pattern!r}; known patterns: {known}")
    info = PATTERNS_INFO[pattern]
    _check_sparsity(pattern, info, spec.get("sparsity"))
    _check_options(pattern, info, spec.get("options"))
    apply = spec.get("apply", APPLY_CHOICES[0])
    if apply not in APPLY_CHOICES:
        raise ExperimentError(
            "apply",
            f"apply must be 'train_and_eval' (the pattern in training and evaluation) or 'train' "
            f"(training only, dense evaluation), got {apply!r}",
        )
    dropout = spec.get("attention_dropout")
    if dropout is not None and not (_is_number(dropout) and 0.0 <= dropout < 1.0):
        raise ExperimentError(
            "attention_dropout",
            f"attention_dropout must be null (the model's own rate) or a number in [0, 1), got {dropout!r}",
        )


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_sparsity(pattern: str, info: PatternInfo, sparsity) -> None:
    if info.sparsity == SPARSITY_ADAPTIVE:
        if sparsity is not None:
            raise ExperimentError(
                "sparsity",
                f"pattern {pattern!r} chooses its own sparsity (it is measured, not set): leave sparsity out "
                f"or null, got {sparsity!r}",
            )
        return
    if info.sparsity == SPARSITY_ZERO and sparsity is None:
        return
    if sparsity is None:
        raise ExperimentError(
            "sparsity", f"pattern {pattern!r} needs a sparsity: the fraction of each query's keys to drop, in [0, 1)"
        )
    if not (_is_number(sparsity) and 0.0 <= sparsity < 1.0):
        raise ExperimentError(
            "sparsity",
            f"sparsity must be a number in [0, 1) (the fraction of each query's keys to drop), "
            f"got {sparsity!r} for pattern {pattern!r}",
        )
    if info.sparsity == SPARSITY_ZERO and sparsity != 0:
        raise ExperimentError(
            "sparsity",
            f"pattern {pattern!r} keeps every key, so its sparsity must be 0, got {sparsity!r}; "
            f"use pattern 'topk' for a sparse run",
        )


def _check_options(pattern: str, info: PatternInfo, options) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise ExperimentError("options", f"options must be a mapping of option names to values, got {options!r}")
    accepted = ", ".join(info.options) or "no options"
    for name, value in options.items():
        key = f"options.{name}"
        if name not in info.options:
            hint = " (random's evaluation masks follow the run's seed)" if name == "seed" else ""
            raise ExperimentError(key, f"pattern {pattern!r} has no option {name!r}{hint}; it accepts {accepted}")
        option = info.options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < option.minimum:
            raise ExperimentError(
                key, f"{name} ({option.description}) must be an integer >= {option.minimum}, got {value!r}"
            )
