"""Sparse attention for Hugging Face encoders: where the sparsity of Crisp is applied.

Every query row scores all keys (QK^T, scaled), a *pattern* chooses which keys the row keeps, the
other scores are set to -inf, and only then comes the softmax. So the sparsity acts on the
pre-softmax scores, as in the paper, and the kept probabilities still sum to 1.

Patterns (see `PATTERNS`, extend with `@register_pattern("name")`):
- `dense`:  keep every real key (the baseline; sparsity must be 0).
- `topk`:   keep the `keep_count(n_valid, sparsity)` highest scores of each row.
- `random`: keep the same number of keys per row, chosen uniformly at random (a control: is it the
            choice of the *highest* scores that matters, or only that fewer keys are kept?).

Padding keys are never kept, whatever the pattern, and counts follow each sequence's real length
(`n_valid`), not the padded length of the batch.

The function is plugged into transformers through its registries (no model code is patched):
`AttentionInterface` gets the attention function under the name "crisp", and
`AttentionMaskInterface` gets `sdpa_mask`, which hands the function a boolean padding mask
(True = real key). Without that second registration a custom name receives no mask at all, and
padded keys would silently get attention. The pattern and sparsity live on `model.config`
(`crisp_pattern`, `crisp_sparsity`, `crisp_pattern_options`), so `save_pretrained` keeps them and
every attention module reads them from its `config`.

Usage:
    model = sparsify(model, pattern="topk", sparsity=0.8)
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

ATTENTION_NAME = "crisp"
# Attribute that `sparsify` writes on each attention module so that patterns can tell layers apart
# (DistilBERT's attention has no `layer_idx` of its own).
LAYER_INDEX_ATTRIBUTE = "crisp_layer_index"


# ---------------------------------------------------------------------------------------------
# How many keys a query keeps
# ---------------------------------------------------------------------------------------------

# (1 - 0.7) * 10 is 3.0000000000000004 in floating point; without this slack ceil() would keep 4.
_ROUNDING_SLACK = 1e-9


def keep_count(n_valid: int | torch.Tensor, sparsity: float) -> int | torch.Tensor:
    """Keys kept per query row: ceil((1 - sparsity) * n_valid), at least 1, at most n_valid.

    `n_valid` is the number of real (non-padding) tokens of the sequence, as an int or as an
    integer tensor of any shape (answered element-wise, with the same rounding as the int case).
    Only a sequence without any real token (n_valid = 0) keeps 0 keys. Used by the patterns and by
    the FLOP accounting, so that both count the same keys.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of keys to drop), got {sparsity!r}")
    if isinstance(n_valid, torch.Tensor):
        table = _keep_count_table(int(n_valid.max()) if n_valid.numel() else 0, float(sparsity))
        return table.to(n_valid.device)[n_valid.long()]
    if n_valid <= 0:
        return 0
    kept = math.ceil((1.0 - sparsity) * n_valid - _ROUNDING_SLACK)
    return min(max(kept, 1), n_valid)


@functools.lru_cache(maxsize=256)
def _keep_count_table(max_valid: int, sparsity: float) -> torch.Tensor:
    # A lookup table keeps tensors on exactly the int rule (float32 arithmetic on the device would
    # round differently near integers) and works on devices without float64.
    return torch.tensor([keep_count(n, sparsity) for n in range(max_valid + 1)], dtype=torch.long)


def keep_top_k(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping, in each row (last dimension) of `values`, its `counts` largest entries.

    `counts` broadcasts against `values.shape[:-1] + (1,)`; rows may keep different numbers. The
    mask is a threshold on the row's count-th largest value (`values >= threshold`), the fastest
    exact way on CPU (faster than sort, kthvalue or gathering). Ties are kept: if several entries
    equal the threshold, all of them survive, so a row can keep more than `counts` entries on
    exact ties (vanishingly rare for float32 scores of real inputs, plausible in bfloat16).
    A row with count 0 gets threshold -inf; callers combine the result with their valid-key mask.
    """
    k_max = max(int(counts.max()), 1)
    top_values = values.topk(k_max, dim=-1).values
    threshold_index = (counts - 1).clamp(min=0).expand(*values.shape[:-1], 1)
    threshold = top_values.gather(-1, threshold_index)
    return values >= threshold


# ---------------------------------------------------------------------------------------------
# Pattern registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionScores:
    """What a pattern sees in one attention call.

    scores:     (batch, heads, queries, keys) scaled pre-softmax scores, -inf at padding keys; no
                gradient flows through a pattern.
    valid_keys: boolean, broadcastable to `scores`: True where the key is a real token.
    n_valid:    (batch, 1, queries, 1) number of real keys each query row may attend to.
    sparsity:   fraction of each row's real keys to drop, in [0, 1).
    layer_index: which attention layer this is (0-based).
    training:   whether the attention module is in training mode.
    """

    scores: torch.Tensor
    valid_keys: torch.Tensor
    n_valid: torch.Tensor
    sparsity: float
    layer_index: int
    training: bool

    def keep_counts(self) -> torch.Tensor:
        """(batch, 1, queries, 1) keys each row keeps, by `keep_count`."""
        return keep_count(self.n_valid, self.sparsity)


# A pattern takes the AttentionScores plus its own keyword options and returns a boolean keep-mask
# broadcastable to the scores. It need not exclude padding keys: the caller always does.
Pattern = Callable[..., torch.Tensor]
PATTERNS: dict[str, Pattern] = {}


def register_pattern(name: str) -> Callable[[Pattern], Pattern]:
    """Decorator adding a pattern under `name`; its keyword arguments become its options."""

    def register(pattern: Pattern) -> Pattern:
        if name in PATTERNS:
            existing = PATTERNS[name].__qualname__
            raise ValueError(f"attention pattern {name!r} is already registered ({existing})")
        PATTERNS[name] = pattern
        return pattern

    return register


def available_patterns() -> list[str]:
    return sorted(PATTERNS)


@register_pattern("dense")
def dense_pattern(attention: AttentionScores) -> torch.Tensor:
    return attention.valid_keys


@register_pattern("topk")
def topk_pattern(attention: AttentionScores) -> torch.Tensor:
    """Keep each row's keep_count(n_valid, sparsity) highest scores (ties at the threshold kept)."""
    return keep_top_k(attention.scores, attention.keep_counts())


@register_pattern("random")
def random_pattern(attention: AttentionScores, seed: int = 0) -> torch.Tensor:
    """Keep as many keys per row as `topk`, chosen uniformly at random among the real keys.

    Training draws from torch's global generator, so every step gets fresh masks and Trainer's
    seeding and RNG checkpoints make a run reproducible. Outside training the masks come from a
    generator seeded by (`seed`, layer) afresh in every forward: evaluating the same batch twice
    gives the same masks, and each layer has its own.
    """
    scores = attention.scores
    generator = None
    if not attention.training:
        layer_seed = int(np.random.SeedSequence([seed, attention.layer_index]).generate_state(1)[0])
        generator = torch.Generator(device=scores.device).manual_seed(layer_seed)
    noise = torch.rand(scores.shape, generator=generator, device=scores.device)
    noise = noise.masked_fill(~attention.valid_keys, -1.0)
    # Positions, not a threshold: exactly k keys per row even if two noise values happen to be equal.
    counts = attention.keep_counts()
    k_max = max(int(counts.max()), 1)
    chosen = noise.topk(k_max, dim=-1).indices
    within_count = torch.arange(k_max, device=scores.device) < counts
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter_(-1, chosen, within_count.expand_as(chosen))


# ---------------------------------------------------------------------------------------------
# Settings on the model config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseAttentionSettings:
    """Which pattern, how sparse, and the pattern's options; checked when built."""

    pattern: str
    sparsity: float
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"unknown attention pattern {self.pattern!r}; known patterns: {', '.join(available_patterns())}"
            )
        if (
            isinstance(self.sparsity, bool)
            or not isinstance(self.sparsity, numbers.Real)
            or not 0.0 <= self.sparsity < 1.0
        ):
            raise ValueError(
                f"sparsity must be a number in [0, 1) (the fraction of each query's keys to drop), "
                f"got {self.sparsity!r} for pattern {self.pattern!r}"
            )
        if self.pattern == "dense" and self.sparsity != 0:
            raise ValueError(
                f"pattern 'dense' keeps every key, so its sparsity must be 0, got {self.sparsity!r}; "
                f"use pattern 'topk' for a sparse run"
            )
        pattern_function = PATTERNS[self.pattern]
        try:
            inspect.signature(pattern_function).bind(None, **self.options)
        except TypeError:
            accepted = [name for name in inspect.signature(pattern_function).parameters][1:]
            raise ValueError(
                f"pattern {self.pattern!r} got options {sorted(self.options)}; "
                f"it accepts {accepted or 'no options'}"
            ) from None
        try:
            json.dumps(self.options)
        except TypeError as error:
            raise ValueError(
                f"options of pattern {self.pattern!r} must be plain JSON values (they are saved in "
                f"config.json): {error}"
            ) from None

    def write_to(self, config) -> None:
        config.crisp_pattern = self.pattern
        config.crisp_sparsity = float(self.sparsity)
        config.crisp_pattern_options = dict(self.options)

    @classmethod
    def read_from(cls, config) -> SparseAttentionSettings:
        if getattr(config, "crisp_pattern", None) is None:
            raise ValueError(
                f"attention implementation {ATTENTION_NAME!r} is set but the model config has no "
                f"crisp_pattern; use crisp.attention.sparsify(model, pattern, sparsity) rather than "
                f"set_attn_implementation({ATTENTION_NAME!r})"
            )
        return cls(config.crisp_pattern, config.crisp_sparsity, dict(config.crisp_pattern_options or {}))


# ---------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------


def crisp_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with the model's sparsity pattern; same contract as transformers' eager attention.

    query/key/value: (batch, heads, tokens, head_dim). attention_mask: None (no padding), a
    boolean mask (batch, 1, queries, keys) with True at real keys (what `sdpa_mask` builds), or an
    additive float mask. Returns the output (batch, tokens, heads, head_dim) and the attention
    probabilities (batch, heads, queries, keys) after dropout, as eager attention does; these are
    what `output_attentions=True` reports. Padded query positions attend to the real keys of their
    sequence. A sequence with no real token at all attends densely to all its positions.
    """
    settings = SparseAttentionSettings.read_from(module.config)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling

    if attention_mask is None:
        valid_keys = torch.ones_like(scores[:, :1], dtype=torch.bool)
    elif attention_mask.dtype == torch.bool:
        valid_keys = attention_mask
    else:
        # An additive mask (0 = attend, a very negative number = masked) given directly by a caller.
        valid_keys = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        scores = scores + attention_mask
    valid_keys = valid_keys.expand(scores.shape[0], 1, *scores.shape[-2:])

    with torch.no_grad():
        pattern_input = AttentionScores(
            scores=scores.detach().masked_fill(~valid_keys, float("-inf")),
            valid_keys=valid_keys,
            n_valid=valid_keys.sum(dim=-1, keepdim=True),
            sparsity=settings.sparsity,
            layer_index=getattr(module, LAYER_INDEX_ATTRIBUTE, getattr(module, "layer_idx", None) or 0),
            training=module.training,
        )
        keep = PATTERNS[settings.pattern](pattern_input, **settings.options) & valid_keys
        # A row keeps no key only if its sequence has no real token. Softmax over nothing is NaN, so
        # such rows attend densely to every position instead (their output is meaningless anyway).
        keep |= ~keep.any(dim=-1, keepdim=True)

    scores = scores.masked_fill(~keep, float("-inf"))
    # Softmax in float32 even under bfloat16 autocast: exp of -inf and sums of few terms stay exact.
    probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probabilities = F.dropout(probabilities, p=dropout, training=module.training)

    output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
    return output, probabilities


AttentionInterface.register(ATTENTION_NAME, crisp_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def sparsify(model, pattern: str = "topk", sparsity: float = 0.8, **pattern_options):
    """Make `model` use sparse attention (`pattern`, `sparsity`) in training and evaluation.

    Works for Hugging Face models whose attention dispatches through `AttentionInterface`
    (DistilBERT, BERT, RoBERTa and most encoders of transformers >= 5). Writes the settings to
    `model.config` (crisp_pattern, crisp_sparsity, crisp_pattern_options), numbers the attention
    layers, switches the attention implementation to "crisp" and returns the same model.
    Raises ValueError for an unknown pattern or option, or a sparsity outside [0, 1).
    """
    settings = SparseAttentionSettings(pattern, sparsity, dict(pattern_options))
    settings.write_to(model.config)
    for layer_index, module in enumerate(_attention_modules(model)):
        setattr(module, LAYER_INDEX_ATTRIBUTE, layer_index)
    model.set_attn_implementation(ATTENTION_NAME)
    if model.config._attn_implementation != ATTENTION_NAME:
        raise ValueError(
            f"{type(model).__name__} cannot switch to the {ATTENTION_NAME!r} attention: its attention "
            f"layers do not go through transformers' AttentionInterface (transformers >= 5 needed)"
        )
    return model


def _attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules of `model`, in order, as transformers records them for
    `output_attentions` (the `_can_record_outputs["attentions"]` class of the model)."""
    recorded = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    attention_class = getattr(recorded, "target_class", recorded)
    if not isinstance(attention_class, type):
        return []
    return [module for module in model.modules() if isinstance(module, attention_class)]
