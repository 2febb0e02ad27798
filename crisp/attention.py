"""Sparse attention for Hugging Face encoders: where the sparsity of Crisp is applied.

Every query row scores all keys (QK^T, scaled), a *pattern* chooses which keys the row keeps, the
other scores are set to -inf, and only then comes the normaliser (softmax, or sparsemax / 1.5-entmax
for the adaptive patterns). So the sparsity acts on the pre-softmax scores, as in the paper, and
the kept probabilities still sum to 1.

Patterns (declared with their sparsity rule and options in `crisp.patterns.PATTERNS_INFO`,
implemented here with `@register_pattern("name")`). k = keep_count(n, sparsity), n the real length:
- `dense`:      keep every real key (the baseline; sparsity 0).
- `topk`:       keep the k highest scores of each row, exactly k (chosen by position, so ties at
                the k-th score, frequent in bfloat16, never keep more).
- `random`:     keep k keys per row chosen uniformly at random (a control: is it the choice of the
                *highest* scores that matters, or only that fewer keys are kept?).
- `window`:     keep the first token plus a band of k - 1 neighbouring keys around the query,
                exactly k per row (the band shifts inward at the sequence edges).
- `block_topk`: queries and keys in blocks of `block_size`; each query block keeps its best key
                blocks by mean-pooled query . key, enough blocks to hold k real keys.
- `sparsemax`, `entmax15`: every real key enters an adaptive sparse normaliser (the `entmax`
                package) instead of the softmax; how many keys survive is measured, not set.

Padding keys are never kept, whatever the pattern, and counts follow each sequence's real length,
not the padded length of the batch. Positions (window, random) assume right padding, which is
what the tokenizers and collators of Crisp produce.

`topk` and `random` hand back the positions of their keys (a `KeySelection`): only the k chosen
scores of each row go through the softmax and the dropout, and are then scattered into the
probability matrix for A V. The other patterns hand back a boolean mask; the scores outside it are
set to -inf before a normaliser over the whole row.

The function is plugged into transformers through its registries (no model code is patched):
`AttentionInterface` gets the attention function under the name "crisp", and
`AttentionMaskInterface` gets `sdpa_mask`, which hands the function a boolean padding mask
(True = real key). Without that second registration a custom name receives no mask at all, and
padded keys would silently get attention.

`sparsify` checks the settings once and stores them on each attention module with its layer index
(and on `model.config`, so that `save_pretrained` records them). The attention function only reads
them: it never validates, never reads a value back from the device and loops over no heads or rows,
so it compiles with `torch.compile(fullgraph=True)` and keeps a GPU's queue of kernels full.

Usage:
    model = sparsify(model, pattern="topk", sparsity=0.8, seed=run_seed)
    with attention_diagnostics(model) as diagnostics:
        evaluate(model)
    diagnostics.summary()  # {"attention_entropy": [per layer], "kept_fraction": [per layer]}
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from entmax.activations import Entmax15Function, SparsemaxFunction
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from crisp import patterns
from crisp.patterns import PATTERNS_INFO, SPARSITY_ADAPTIVE, SPARSITY_ZERO, check_experiment

ATTENTION_NAME = "crisp"
# Attributes that `sparsify` and `attention_diagnostics` set on each attention module.
SETTINGS_ATTRIBUTE = "crisp_settings"
RECORDER_ATTRIBUTE = "crisp_recorder"


# ---------------------------------------------------------------------------------------------
# How many keys a query keeps
# ---------------------------------------------------------------------------------------------

def keep_count(n_valid: int | torch.Tensor, sparsity: float) -> int | torch.Tensor:
    """Keys kept per query row: ceil((1 - sparsity) * n_valid), at least 1, at most n_valid.

    `n_valid` is the number of real (non-padding) tokens of the sequence, as an int (answered by
    `crisp.patterns.keep_count`) or as an integer tensor of any shape (answered element-wise on its
    device, in float64 so that it rounds exactly as the int case does, and without reading anything
    back to the host). Only a sequence without any real token (n_valid = 0) keeps 0 keys. Used by the
    patterns and by the FLOP accounting, so that both count the same keys.
    """
    if not isinstance(n_valid, torch.Tensor):
        return patterns.keep_count(n_valid, sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of keys to drop), got {sparsity!r}")
    kept = torch.ceil((1.0 - sparsity) * n_valid.double() - patterns.ROUNDING_SLACK).long()
    return torch.minimum(kept.clamp(min=1), n_valid.long())


@dataclass(frozen=True)
class KeySelection:
    """The keys each query row keeps, by position: a row keeps the first `counts` of its `indices`.

    indices: (batch, heads or 1, queries, k_max) int64 key positions, distinct within a row.
    counts:  broadcastable to (batch, 1, queries, 1), at most k_max.
    A pattern that keeps a set number of keys per row returns this rather than a boolean mask:
    the attention then normalises and drops out only the k_max chosen scores of each row instead of
    all of them, so choosing the keys is most of what sparsity costs.
    """

    indices: torch.Tensor
    counts: torch.Tensor

    def mask(self, keys: int) -> torch.Tensor:
        """The boolean keep-mask (..., queries, keys) of this selection."""
        within = torch.arange(self.indices.shape[-1], device=self.indices.device) < self.counts
        keep = self.indices.new_zeros((*self.indices.shape[:-1], keys), dtype=torch.bool)
        return keep.scatter_(-1, self.indices, within.expand_as(self.indices))


def select_top_k(values: torch.Tensor, counts: torch.Tensor, k_max: int, ordered: bool = True) -> KeySelection:
    """In each row (last dimension) of `values`, exactly its `counts` largest entries.

    `counts` broadcasts against `values.shape[:-1] + (1,)`, so rows may keep different numbers;
    `k_max` is an upper bound on `counts` known on the host (from the padded length), so nothing is
    read back from the device. Entries are chosen by position among the `k_max` largest: when
    several equal the count-th largest value, only as many as needed are kept. ordered=False skips
    sorting those `k_max` (a fifth of the time of topk on a CPU), which is right only when every
    count equals `k_max`.
    """
    k_max = min(max(k_max, 1), values.shape[-1])
    return KeySelection(values.topk(k_max, dim=-1, sorted=ordered).indices, counts)


def keep_top_k(values: torch.Tensor, counts: torch.Tensor, k_max: int) -> torch.Tensor:
    """`select_top_k` as a boolean mask the shape of `values`."""
    return select_top_k(values, counts, k_max).mask(values.shape[-1])


# ---------------------------------------------------------------------------------------------
# Settings, read once by sparsify
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseAttention:
    """What one attention module does: stored on it by `sparsify`, read (never parsed) per call.

    sparsity is None for the adaptive patterns; options has every option of the pattern, defaults
    filled in; apply is "train_and_eval" or "train" (dense evaluation); seed is the run's seed.
    """

    pattern: str
    sparsity: float | None
    options: dict
    apply: str
    seed: int
    layer_index: int


@dataclass(frozen=True)
class AttentionScores:
    """What a pattern sees in one attention call (no gradient flows through a pattern).

    scores:      (batch, heads, queries, keys) scaled pre-softmax scores, -inf at padding keys.
    query, key:  (batch, heads, tokens, head_dim), for patterns that choose without the scores.
    scaling:     the factor applied to query . key.
    valid_keys:  (batch, 1, queries, keys) boolean: True where the key is a real token.
    n_valid:     (batch, 1, queries, 1) number of real keys each query row may attend to.
    settings:    the module's SparseAttention (sparsity, layer index, seed).
    training:    whether the attention module is in training mode.
    padded:      whether the batch came with a padding mask; without one every row has the same
                 real length, so every row keeps the same number of keys.
    """

    scores: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    scaling: float
    valid_keys: torch.Tensor
    n_valid: torch.Tensor
    settings: SparseAttention
    training: bool
    padded: bool = True

    def keep_counts(self) -> torch.Tensor:
        """(batch, 1, queries, 1) keys each row keeps, by `keep_count`."""
        return keep_count(self.n_valid, self.settings.sparsity)

    def max_keep_count(self) -> int:
        """The largest keep count any row of the batch can have: that of the padded length."""
        return keep_count(self.scores.shape[-1], self.settings.sparsity)


# ---------------------------------------------------------------------------------------------
# Pattern registry
# ---------------------------------------------------------------------------------------------


def softmax(scores: torch.Tensor) -> torch.Tensor:
    # In float32 even under bfloat16 autocast: exp of -inf and sums of few terms stay exact.
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


# The entmax package writes its autograd functions with classmethods, which torch.compile cannot
# trace; these wrappers call the same forward and backward as plain functions.
_sparsemax_forward, _sparsemax_backward = SparsemaxFunction.forward.__func__, SparsemaxFunction.backward.__func__
_entmax15_forward, _entmax15_backward = Entmax15Function.forward.__func__, Entmax15Function.backward.__func__


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores):
        return _sparsemax_forward(SparsemaxFunction, ctx, scores, -1, None)

    @staticmethod
    def backward(ctx, grad_output):
        return _sparsemax_backward(SparsemaxFunction, ctx, grad_output)[0]


class _Entmax15(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores):
        return _entmax15_forward(Entmax15Function, ctx, scores, -1, None)

    @staticmethod
    def backward(ctx, grad_output):
        return _entmax15_backward(Entmax15Function, ctx, grad_output)[0]


def sparsemax(scores: torch.Tensor) -> torch.Tensor:
    return _Sparsemax.apply(scores.float())


def entmax15(scores: torch.Tensor) -> torch.Tensor:
    return _Entmax15.apply(scores.float())


@dataclass(frozen=True)
class RegisteredPattern:
    """keep(AttentionScores, **options) -> a boolean keep-mask broadcastable to the scores (it need
    not exclude padding: the caller does) or a KeySelection (which must not choose padding keys
    beyond a row's count); normalise(masked scores) -> float32 probabilities."""

    keep: Callable[..., torch.Tensor | KeySelection]
    normalise: Callable[[torch.Tensor], torch.Tensor]


PATTERNS: dict[str, RegisteredPattern] = {}


def register_pattern(name: str, normalise: Callable[[torch.Tensor], torch.Tensor] = softmax):
    """Decorator adding a keep-function under `name`; its keyword arguments are its options.

    The pattern must first be declared in `crisp.patterns.PATTERNS_INFO` (so that configurations
    are checked without torch), with the same option names and defaults.
    """

    def register(keep: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in PATTERNS:
            raise ValueError(f"attention pattern {name!r} is already registered ({PATTERNS[name].keep.__qualname__})")
        if name not in PATTERNS_INFO:
            raise ValueError(
                f"declare attention pattern {name!r} in crisp.patterns.PATTERNS_INFO before registering it"
            )
        declared = {option: info.default for option, info in PATTERNS_INFO[name].options.items()}
        if pattern_options(keep) != declared:
            raise ValueError(
                f"pattern {name!r}: {keep.__qualname__} takes options {pattern_options(keep)} but "
                f"crisp.patterns declares {declared}"
            )
        PATTERNS[name] = RegisteredPattern(keep, normalise)
        return keep

    return register


def pattern_options(keep: Callable[..., torch.Tensor]) -> dict:
    """The keyword options of a keep-function, with their defaults."""
    parameters = list(inspect.signature(keep).parameters.values())[1:]
    return {parameter.name: parameter.default for parameter in parameters}


def keep_every_real_key(attention: AttentionScores) -> torch.Tensor:
    return attention.valid_keys


register_pattern("dense")(keep_every_real_key)
register_pattern("sparsemax", normalise=sparsemax)(keep_every_real_key)
register_pattern("entmax15", normalise=entmax15)(keep_every_real_key)


@register_pattern("topk")
def topk_pattern(attention: AttentionScores) -> KeySelection:
    """Keep exactly keep_count(n_valid, sparsity) highest scores of each row."""
    return select_top_k(
        attention.scores, attention.keep_counts(), attention.max_keep_count(), ordered=attention.padded
    )


@register_pattern("random")
def random_pattern(attention: AttentionScores) -> KeySelection:
    """Keep as many keys per row as `topk`, chosen uniformly at random among the real keys.

    Training draws from torch's global generator, so every step gets fresh masks and Trainer's
    seeding and RNG checkpoints make a run reproducible. Evaluation ranks the keys of each row by a
    counter-based hash of (run seed, layer, head, query position, key position): an example gets
    the same mask whatever its batch, its place in it, the batch's padded length or the evaluation
    batch size, and each layer and head has its own.
    """
    scores = attention.scores
    if attention.training:
        noise = torch.rand(scores.shape, device=scores.device)
    else:
        noise = _position_hash(attention.settings.seed, attention.settings.layer_index, scores.shape, scores.device)
    noise = noise.masked_fill(~attention.valid_keys, -1)
    return select_top_k(noise, attention.keep_counts(), attention.max_keep_count(), ordered=attention.padded)


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (works on ints and on int64 tensors holding values below 2**32;
    products stay below 2**63)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def _position_hash(seed: int, layer_index: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """(1, heads, queries, keys) int64 values, distinct within each row (the key position fills the
    low 16 bits, so ties cannot make the choice depend on the row's length, for up to 65,536 keys)."""
    _, heads, queries, keys = shape
    layer_state = _mix32(_mix32(seed & _MASK32) ^ layer_index)

    def positions(size: int, dim: int) -> torch.Tensor:
        view = [1, 1, 1, 1]
        view[dim] = size
        return torch.arange(size, device=device, dtype=torch.int64).view(view)

    state = _mix32(layer_state ^ positions(heads, 1))
    state = _mix32(state ^ positions(queries, 2))
    state = _mix32(state ^ positions(keys, 3))
    return (state << 16) | positions(keys, 3)


@register_pattern("window")
def window_pattern(attention: AttentionScores) -> torch.Tensor:
    """Keep the first token plus a band of k - 1 keys around each query: exactly k per row.

    The band covers keys i - floor((k - 2) / 2) ... of query i, shifted inward where it would leave
    the real keys 1 .. n_valid - 1, so rows at the sequence edges keep as many keys as the others.
    """
    counts = attention.keep_counts()  # (batch, 1, queries, 1)
    queries, keys = attention.scores.shape[-2:]
    device = attention.scores.device
    query_position = torch.arange(queries, device=device).view(1, 1, queries, 1)
    key_position = torch.arange(keys, device=device).view(1, 1, 1, keys)
    band = counts - 1
    start = (query_position - torch.div(band - 1, 2, rounding_mode="floor")).clamp(min=1)
    start = torch.minimum(start, attention.n_valid - band)
    return (key_position == 0) | ((key_position >= start) & (key_position < start + band))


@register_pattern("block_topk")
def block_topk_pattern(attention: AttentionScores, block_size: int = 16) -> torch.Tensor:
    """Keep whole key blocks per query block: the best-scoring ones until they hold k real keys.

    A block pair's score is the mean-pooled (real) queries of the query block . the mean-pooled
    real keys of the key block, so the choice needs no full score matrix and a block-sparse kernel
    could skip the other blocks. Every real key of a kept block is kept: a row keeps at least k keys
    and fewer than k + block_size.
    """
    queries, keys = attention.scores.shape[-2:]
    block_size = min(block_size, max(queries, keys))  # a larger block is one block all the same
    real_keys = attention.valid_keys.any(dim=-2)  # (batch, 1, keys)
    real_queries = real_keys if queries == keys else torch.ones_like(real_keys[..., :1]).expand(-1, -1, queries)
    pooled_queries = _block_means(attention.query, real_queries, block_size)
    pooled_keys = _block_means(attention.key, real_keys, block_size)
    block_scores = pooled_queries @ pooled_keys.transpose(-2, -1) * attention.scaling  # (b, h, QB, KB)

    keys_per_block = _pad_to_blocks(real_keys.long(), block_size).sum(dim=-1).unsqueeze(-2)  # (b, 1, 1, KB)
    block_scores = block_scores.masked_fill(keys_per_block == 0, float("-inf"))
    counts = _pad_to_blocks(attention.keep_counts().squeeze(-1), block_size).amax(dim=-1).unsqueeze(-1)

    order = block_scores.argsort(dim=-1, descending=True)
    sizes_in_order = keys_per_block.expand_as(block_scores).gather(-1, order)
    covered_before = sizes_in_order.cumsum(dim=-1) - sizes_in_order
    keep_blocks = torch.zeros_like(block_scores, dtype=torch.bool).scatter_(-1, order, covered_before < counts)
    keep = keep_blocks.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)
    return keep[..., :queries, :keys]


def _pad_to_blocks(values: torch.Tensor, block_size: int) -> torch.Tensor:
    """(..., tokens) -> (..., blocks, block_size), zero-padded."""
    padded = F.pad(values, (0, -values.shape[-1] % block_size))
    return padded.unflatten(-1, (-1, block_size))


def _block_means(states: torch.Tensor, real: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of the real rows of each block of `states` (batch, heads, tokens, dim), in float32."""
    weights = _pad_to_blocks(real.float(), block_size)  # (batch, 1, blocks, block_size)
    padded = F.pad(states.float(), (0, 0, 0, -states.shape[-2] % block_size))
    sums = (padded.unflatten(-2, (-1, block_size)) * weights.unsqueeze(-1)).sum(dim=-2)
    return sums / weights.sum(dim=-1, keepdim=True).clamp(min=1)


# ---------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------


class _GatherChosen(torch.autograd.Function):
    """scores.gather(-1, indices), keeping for the backward only the compact indices: torch's own
    gather would keep the whole (batch, heads, queries, keys) score matrix."""

    @staticmethod
    def forward(ctx, scores, indices, compact_indices):
        ctx.keys = scores.shape[-1]
        ctx.save_for_backward(compact_indices)
        return scores.gather(-1, indices)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return grad.new_zeros(*grad.shape[:-1], ctx.keys).scatter_(-1, indices.long(), grad), None, None


class _ScatterChosen(torch.autograd.Function):
    """The chosen keys' probabilities placed in a zero matrix over all keys (compact indices kept)."""

    @staticmethod
    def forward(ctx, chosen, indices, compact_indices, keys: int):
        ctx.save_for_backward(compact_indices)
        return chosen.new_zeros(*chosen.shape[:-1], keys).scatter_(-1, indices, chosen)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return grad.gather(-1, indices.long()), None, None, None


def _compact(indices: torch.Tensor, keys: int) -> torch.Tensor:
    """Key positions in the smallest integer type that holds them (int64 takes 4x the memory of int16)."""
    return indices.to(torch.int16 if keys <= torch.iinfo(torch.int16).max else torch.int32)


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
    """Attention with the module's sparsity pattern; same contract as transformers' eager attention.

    query/key/value: (batch, heads, tokens, head_dim). attention_mask: None (no padding), a
    boolean mask (batch, 1, queries, keys) with True at real keys (what `sdpa_mask` builds), or an
    additive float mask. Returns the output (batch, tokens, heads, head_dim) and the attention
    probabilities (batch, heads, queries, keys) after dropout, as eager attention does; these are
    what `output_attentions=True` reports. Padded query positions attend to the real keys of their
    sequence. A sequence with no real token at all gets finite output all the same: with a mask
    pattern it attends densely to all its positions, with a selection (topk, random) to one of them.
    """
    settings = getattr(module, SETTINGS_ATTRIBUTE, None)
    if settings is None:
        raise ValueError(
            f"attention implementation {ATTENTION_NAME!r} is set but this attention module "
            f"({type(module).__name__}) has no sparsity settings; use crisp.attention.sparsify(model, ...) "
            f"rather than set_attn_implementation({ATTENTION_NAME!r})"
        )
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

    pattern = settings.pattern if module.training or settings.apply == "train_and_eval" else "dense"
    registered = PATTERNS[pattern]
    recorder = getattr(module, RECORDER_ATTRIBUTE, None)
    with torch.no_grad():
        if registered.keep is keep_every_real_key:
            chosen = valid_keys
        else:
            pattern_scores = scores.detach()
            if attention_mask is not None:
                pattern_scores = pattern_scores.masked_fill(~valid_keys, float("-inf"))
            pattern_input = AttentionScores(
                scores=pattern_scores,
                query=query.detach(),
                key=key.detach(),
                scaling=scaling,
                valid_keys=valid_keys,
                n_valid=valid_keys.sum(dim=-1, keepdim=True),
                settings=settings,
                training=module.training,
                padded=attention_mask is not None,
            )
            chosen = registered.keep(pattern_input, **settings.options)

    if isinstance(chosen, KeySelection):
        indices = chosen.indices.expand(*scores.shape[:-1], chosen.indices.shape[-1])
        # A row keeps no key only if its sequence has no real token. Normalising nothing is NaN, so
        # such rows keep their first chosen position instead (their output is meaningless anyway).
        within = torch.arange(indices.shape[-1], device=indices.device) < chosen.counts.clamp(min=1)
        keys, compact = scores.shape[-1], _compact(indices, scores.shape[-1])
        chosen_scores = _GatherChosen.apply(scores, indices, compact)
        kept_probabilities = registered.normalise(chosen_scores.masked_fill(~within, float("-inf")))
        if recorder is not None:
            full = kept_probabilities.new_zeros(scores.shape).scatter(-1, indices, kept_probabilities)
            recorder.record(settings.layer_index, full, valid_keys)
        kept_probabilities = F.dropout(kept_probabilities.to(value.dtype), p=dropout, training=module.training)
        probabilities = _ScatterChosen.apply(kept_probabilities, indices, compact, keys)
    else:
        with torch.no_grad():
            keep = chosen & valid_keys
            # A row without any real key attends densely to every position instead (NaN otherwise).
            keep = keep | ~keep.any(dim=-1, keepdim=True)
        probabilities = registered.normalise(scores.masked_fill(~keep, float("-inf")))
        if recorder is not None:
            recorder.record(settings.layer_index, probabilities, valid_keys)
        probabilities = F.dropout(probabilities.to(value.dtype), p=dropout, training=module.training)

    output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
    return output, probabilities


AttentionInterface.register(ATTENTION_NAME, crisp_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def sparsify(
    model,
    pattern: str = "topk",
    sparsity: float | None = 0.8,
    *,
    apply: str = "train_and_eval",
    seed: int = 0,
    **options,
):
    """Make `model` use sparse attention (`pattern`, `sparsity`, the pattern's `options`).

    apply: "train_and_eval" (the pattern in training and evaluation) or "train" (training only;
    evaluation attends densely). seed: the run's seed (random's evaluation masks follow it).
    sparsity: in [0, 1) for topk, random, window and block_topk; 0 (or None) for dense; None for
    sparsemax and entmax15, whose sparsity is measured, not set.

    Works for Hugging Face models whose attention dispatches through `AttentionInterface`
    (DistilBERT, BERT, RoBERTa and most encoders of transformers >= 5). Checks the settings
    (`crisp.patterns.check_experiment`; raises its ExperimentError, a ValueError), stores them with
    the layer index on each attention module, records them on `model.config` (crisp_pattern,
    crisp_sparsity, crisp_pattern_options, crisp_apply, crisp_seed), switches the attention
    implementation to "crisp" and returns the same model.
    """
    check_experiment({"pattern": pattern, "sparsity": sparsity, "options": options, "apply": apply})
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (the run's seed), got {seed!r}")
    info = PATTERNS_INFO[pattern]
    if pattern not in PATTERNS:
        raise ValueError(f"attention pattern {pattern!r} is declared in crisp.patterns but not registered")
    if info.sparsity == SPARSITY_ADAPTIVE:
        sparsity = None
    elif info.sparsity == SPARSITY_ZERO:
        sparsity = 0.0
    else:
        sparsity = float(sparsity)
    options = {name: options.get(name, option.default) for name, option in info.options.items()}

    modules = _attention_modules(model)
    for layer_index, module in enumerate(modules):
        setattr(module, SETTINGS_ATTRIBUTE, SparseAttention(pattern, sparsity, options, apply, seed, layer_index))
    model.config.crisp_pattern = pattern
    model.config.crisp_sparsity = sparsity
    model.config.crisp_pattern_options = dict(options)
    model.config.crisp_apply = apply
    model.config.crisp_seed = seed
    model.set_attn_implementation(ATTENTION_NAME)
    if model.config._attn_implementation != ATTENTION_NAME:
        raise ValueError(
            f"{type(model).__name__} cannot switch to the {ATTENTION_NAME!r} attention: its attention "
            f"layers do not go through transformers' AttentionInterface (transformers >= 5 needed)"
        )
    return model


def _attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules of `model`, in order, as transformers records them for
    `output_attentions` (the `_can_record_outputs["attentions"]` class of the model).

    Raises ValueError when they cannot be found: numbering them wrongly would give every layer the
    same evaluation masks without a word.
    """
    recorded = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    attention_class = getattr(recorded, "target_class", recorded)
    modules = (
        [module for module in model.modules() if isinstance(module, attention_class)]
        if isinstance(attention_class, type)
        else []
    )
    if not modules:
        raise ValueError(
            f"cannot find the attention layers of {type(model).__name__}: crisp numbers them from the "
            f"model's _can_record_outputs['attentions'] (transformers >= 5 encoders such as DistilBERT, "
            f"BERT and RoBERTa declare it)"
        )
    return modules


# ---------------------------------------------------------------------------------------------
# Diagnostics: what the attention actually does on some batches
# ---------------------------------------------------------------------------------------------


class AttentionRecorder:
    """Per layer sums over real query tokens of the attention entropy (nats, mean over heads) and
    of the fraction of the row's real keys that got a non-zero probability (mean over heads).

    Sums stay on the device during the forwards; `summary()` reads them back once.
    """

    def __init__(self, layers: int):
        self._totals: list[torch.Tensor | None] = [None] * layers  # (entropy sum, kept sum, rows)

    @torch.no_grad()
    def record(self, layer_index: int, probabilities: torch.Tensor, valid_keys: torch.Tensor) -> None:
        probabilities = probabilities.float()
        entropy = torch.special.entr(probabilities).sum(dim=-1).mean(dim=1)  # (batch, queries)
        kept = ((probabilities > 0) & valid_keys).sum(dim=-1).float().mean(dim=1)
        n_valid = valid_keys[:, 0].sum(dim=-1)
        if valid_keys.shape[-2] == valid_keys.shape[-1]:  # self-attention: a query is real if its key is
            real_queries = valid_keys[:, 0].diagonal(dim1=-2, dim2=-1)
        else:
            real_queries = n_valid > 0
        weights = real_queries.float()
        totals = torch.stack([(entropy * weights).sum(), (kept / n_valid.clamp(min=1) * weights).sum(), weights.sum()])
        previous = self._totals[layer_index]
        self._totals[layer_index] = totals if previous is None else previous + totals

    def summary(self) -> dict[str, list[float | None]]:
        """{"attention_entropy": [per layer], "kept_fraction": [per layer]}; None for a layer that
        saw no real query token."""
        entropy, kept = [], []
        for totals in self._totals:
            entropy_sum, kept_sum, rows = totals.tolist() if totals is not None else (0.0, 0.0, 0.0)
            entropy.append(entropy_sum / rows if rows else None)
            kept.append(kept_sum / rows if rows else None)
        return {"attention_entropy": entropy, "kept_fraction": kept}


@contextlib.contextmanager
def attention_diagnostics(model) -> Iterator[AttentionRecorder]:
    """While active, record every forward's attention entropy and kept fraction per layer.

    The model must have been sparsified (any pattern, dense included). Outside the block the
    attention does no extra work.
    """
    modules = _attention_modules(model)
    if any(getattr(module, SETTINGS_ATTRIBUTE, None) is None for module in modules):
        raise ValueError("attention_diagnostics needs a sparsified model: call crisp.attention.sparsify first")
    recorder = AttentionRecorder(len(modules))
    for module in modules:
        setattr(module, RECORDER_ATTRIBUTE, recorder)
    try:
        yield recorder
    finally:
        for module in modules:
            setattr(module, RECORDER_ATTRIBUTE, None)
