"""Sparse attention for Hugging Face models: where the sparsity of Crisp is applied.

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

What a query *sees* is what the model's own mask lets it attend to: the real (non-padding) keys
of its sequence, and for a decoder only those at or before it, and in a sliding-window layer
(ModernBERT's local layers, Qwen2's and Mistral's optional window) only those inside the window.
Keys it does not see are never kept, whatever the pattern, and k follows what each query row
sees, not the padded length of the batch: sparsity is the same fraction of what a query could
attend to in encoders and decoders alike. Positions that patterns use (window's band, random's
evaluation choice, block_topk's blocks) are positions among the sequence's real tokens, so an
example is treated alike alone and in a batch padded on either side.

Grouped-query attention (Llama, Qwen2: fewer key/value heads than query heads) shares each
key/value head among its group of query heads, as the models' own eager attention does.

`topk` and `random` hand back the positions of their keys (a `KeySelection`): only the k chosen
scores of each row go through the softmax and the dropout (crisp.kept_attention, whose backward
is written out), and are then scattered into the probability matrix for A V. Top-k's choice of a
row depends on that row alone, so a decoder's queries are taken in blocks of rows that read only
the keys before the block's end, skipping most of the future that a causal mask hides. The other
patterns hand back a boolean mask; the scores outside it are set to -inf before a normaliser over
the whole row.

The function is plugged into transformers through its registries (no model code is patched):
`AttentionInterface` gets the attention function under the name "crisp", and
`AttentionMaskInterface` gets `sdpa_mask` (never skipping a causal mask), which hands the function
a boolean mask of what each query sees (True = visible key). Without that second registration a
custom name receives no mask at all, and padded keys would silently get attention; with
`sdpa_mask`'s own default a causal model without padding would get no mask either (SDPA's
`is_causal` stands in for it), and its queries would see the future.

`sparsify` checks the settings once and stores them on each attention module with its layer index
(and on `model.config`, so that `save_pretrained` records them), and checks on a probe forward
that every attention module really calls the registered function: a model whose layers compute
their own softmax (DeBERTa, MPNet) is refused. The attention function only reads
them: it never validates, never reads a value back from the device, and loops over no heads or rows
(only over a few blocks of rows whose sizes come from the shapes), so it compiles with
`torch.compile(fullgraph=True)` and keeps a GPU's queue of kernels full.

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
from transformers.utils import logging as transformers_logging

from crisp import patterns
from crisp.kept_attention import block_scores, kept_attention, query_blocks
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

    scores:      (batch, heads, queries, keys) scaled pre-softmax scores, -inf at keys the query
                 does not see.
    query, key:  (batch, heads, queries, head_dim) and (batch, key_value_heads, keys, head_dim),
                 for patterns that choose without the scores; with grouped-query attention each
                 key/value head serves `heads // key_value_heads` consecutive query heads.
    scaling:     the factor applied to query . key.
    valid_keys:  (batch, 1, queries, keys) boolean: True where the query sees the key (a real
                 token, and for a decoder or a sliding-window layer one its mask lets it see).
    n_valid:     (batch, 1, queries, 1) number of keys each query row sees.
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

    def real_keys(self) -> torch.Tensor:
        """(batch, 1, 1, keys): keys that some query sees, i.e. the real tokens of the sequence."""
        return self.valid_keys.any(dim=-2, keepdim=True)

    def key_ranks(self) -> torch.Tensor:
        """(batch, 1, 1, keys) int64: each key's position among the real tokens of its sequence
        (0 for the first real token whatever the padding side; padding gets its neighbour's)."""
        return (self.real_keys().long().cumsum(dim=-1) - 1).clamp(min=0)

    def query_ranks(self) -> torch.Tensor:
        """(batch, 1, queries, 1) int64: each query's position among the real tokens (self-attention;
        the plain position when queries and keys differ)."""
        queries, keys = self.scores.shape[-2:]
        if queries == keys:
            return self.key_ranks().transpose(-2, -1)
        return torch.arange(queries, device=self.scores.device).view(1, 1, queries, 1)


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


# What a keep-function returns (RegisteredPattern.selection):
SELECT_MASK = "mask"  # a boolean keep-mask; the normaliser runs over the whole row
SELECT_KEYS = "keys"  # a KeySelection; the softmax runs over the chosen scores only
# A KeySelection whose choice for a row depends only on that row's scores, seen keys and count: the
# attention may ask for it block by block of query rows, each block with only the keys it sees
# (a decoder's rows skip the future), so `scores` has fewer columns than the sequence has keys.
SELECT_KEYS_BY_ROW = "keys_by_row"
SELECTIONS = (SELECT_MASK, SELECT_KEYS, SELECT_KEYS_BY_ROW)


@dataclass(frozen=True)
class RegisteredPattern:
    """keep(AttentionScores, **options) -> per `selection`, a boolean keep-mask broadcastable to the
    scores (it need not exclude unseen keys: the caller does) or a KeySelection (which must not
    choose unseen keys within a row's count); normalise(masked scores) -> float32 probabilities
    (a KeySelection is always normalised by the softmax)."""

    keep: Callable[..., torch.Tensor | KeySelection]
    normalise: Callable[[torch.Tensor], torch.Tensor]
    selection: str = SELECT_MASK


PATTERNS: dict[str, RegisteredPattern] = {}


def register_pattern(
    name: str, normalise: Callable[[torch.Tensor], torch.Tensor] = softmax, selection: str = SELECT_MASK
):
    """Decorator adding a keep-function under `name`; its keyword arguments are its options.

    The pattern must first be declared in `crisp.patterns.PATTERNS_INFO` (so that configurations
    are checked without torch), with the same option names and defaults. `selection` says what the
    function returns (SELECT_MASK, SELECT_KEYS or SELECT_KEYS_BY_ROW); the key selections use the
    softmax.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"pattern {name!r}: selection must be one of {SELECTIONS}, got {selection!r}")
    if selection != SELECT_MASK and normalise is not softmax:
        raise ValueError(f"pattern {name!r}: a pattern that selects keys is normalised by the softmax")

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
        PATTERNS[name] = RegisteredPattern(keep, normalise, selection)
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


@register_pattern("topk", selection=SELECT_KEYS_BY_ROW)
def topk_pattern(attention: AttentionScores) -> KeySelection:
    """Keep exactly keep_count(n_valid, sparsity) highest scores of each row."""
    return select_top_k(
        attention.scores, attention.keep_counts(), attention.max_keep_count(), ordered=attention.padded
    )


@register_pattern("random", selection=SELECT_KEYS)
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
        noise = _position_hash(
            attention.settings.seed, attention.settings.layer_index, scores.shape[1],
            attention.query_ranks(), attention.key_ranks(),
        )
    noise = noise.masked_fill(~attention.valid_keys, -1)
    return select_top_k(noise, attention.keep_counts(), attention.max_keep_count(), ordered=attention.padded)


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (works on ints and on int64 tensors holding values below 2**32;
    products stay below 2**63)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def _position_hash(
    seed: int, layer_index: int, heads: int, query_ranks: torch.Tensor, key_ranks: torch.Tensor
) -> torch.Tensor:
    """(batch, heads, queries, keys) int64 values from the positions among real tokens, distinct
    within each row among the real keys (the key's rank fills the low 16 bits, so ties cannot make
    the choice depend on the row's length, for up to 65,536 keys)."""
    layer_state = _mix32(_mix32(seed & _MASK32) ^ layer_index)
    head = torch.arange(heads, device=key_ranks.device, dtype=torch.int64).view(1, heads, 1, 1)
    state = _mix32(layer_state ^ head)
    state = _mix32(state ^ query_ranks)
    state = _mix32(state ^ key_ranks)
    return (state << 16) | key_ranks


@register_pattern("window")
def window_pattern(attention: AttentionScores) -> torch.Tensor:
    """Keep the first key a query sees plus a band of k - 1 keys around it: exactly k per row.

    Keys are numbered among those the row sees (0 .. n_valid - 1), and the query by the number of
    seen keys before it. The band covers seen keys i - floor((k - 2) / 2) ... of query i, shifted
    inward where it would leave seen keys 1 .. n_valid - 1, so rows at the sequence edges keep as
    many keys as the others. In an encoder the first key is the first token; in a decoder, whose
    query is the last key it sees, the band is the k - 1 keys up to and including the query.
    """
    counts = attention.keep_counts()  # (batch, 1, queries, 1)
    visible = attention.valid_keys
    queries, keys = attention.scores.shape[-2:]
    device = attention.scores.device
    query_position = torch.arange(queries, device=device).view(1, 1, queries, 1)
    key_position = torch.arange(keys, device=device).view(1, 1, 1, keys)
    seen_rank = visible.long().cumsum(dim=-1) - 1  # (batch, 1, queries, keys): among the keys the row sees
    query_rank = (visible & (key_position < query_position)).sum(dim=-1, keepdim=True)
    band = counts - 1
    start = (query_rank - torch.div(band - 1, 2, rounding_mode="floor")).clamp(min=1)
    start = torch.minimum(start, attention.n_valid - band)
    return visible & ((seen_rank == 0) | ((seen_rank >= start) & (seen_rank < start + band)))


@register_pattern("block_topk")
def block_topk_pattern(attention: AttentionScores, block_size: int = 16) -> torch.Tensor:
    """Keep whole key blocks per query block: the best-scoring ones until they hold k seen keys.

    Blocks are `block_size` consecutive real tokens (positions among the real tokens, whatever the
    padding side). A block pair's score is the mean-pooled real queries of the query block . the
    mean-pooled real keys of the key block, so the choice needs no full score matrix and a
    block-sparse kernel could skip the other blocks. Every seen key of a kept block is kept: in an
    encoder a row keeps at least k keys and fewer than k + block_size. In a decoder a key block
    counts the keys the block's last query sees, so its earlier queries may keep fewer than k.
    """
    queries, keys = attention.scores.shape[-2:]
    block_size = min(block_size, max(queries, keys))  # a larger block is one block all the same
    blocks = -(-max(queries, keys) // block_size)
    real_keys = attention.real_keys()  # (batch, 1, 1, keys)
    if queries == keys:
        real_queries = real_keys.transpose(-2, -1)
    else:
        real_queries = torch.ones_like(attention.n_valid, dtype=torch.bool)
    key_block = torch.div(attention.key_ranks(), block_size, rounding_mode="floor")  # (batch, 1, 1, keys)
    query_block = torch.div(attention.query_ranks(), block_size, rounding_mode="floor")  # (batch, 1, queries, 1)
    key_members = F.one_hot(key_block.squeeze(-2), blocks).float() * real_keys.transpose(-2, -1)  # (b, 1, keys, B)
    query_members = F.one_hot(query_block.squeeze(-1), blocks).float() * real_queries  # (b, 1, queries, B)
    pooled_queries = _block_means(attention.query, query_members)
    pooled_keys = _block_means(attention.key, key_members)
    groups = pooled_queries.shape[1] // pooled_keys.shape[1]  # grouped-query attention shares key heads
    pooled_keys = pooled_keys.repeat_interleave(groups, dim=1)
    block_scores = pooled_queries @ pooled_keys.transpose(-2, -1) * attention.scaling  # (b, h, QB, KB)

    # Seen keys of each key block, per query row, then the most any row of a query block sees.
    seen_per_row = attention.valid_keys.float() @ key_members  # (b, 1, queries, KB)
    per_query_block = query_block.expand_as(seen_per_row)
    empty = seen_per_row.new_zeros(seen_per_row.shape[0], 1, blocks, blocks)
    keys_per_block = empty.scatter_reduce(-2, per_query_block, seen_per_row, "amax").long()
    counts = attention.keep_counts().new_zeros(seen_per_row.shape[0], 1, blocks, 1)
    counts = counts.scatter_reduce(-2, query_block, attention.keep_counts(), "amax")
    block_scores = block_scores.masked_fill(keys_per_block == 0, float("-inf"))

    order = block_scores.argsort(dim=-1, descending=True)
    sizes_in_order = keys_per_block.expand_as(block_scores).gather(-1, order)
    covered_before = sizes_in_order.cumsum(dim=-1) - sizes_in_order
    keep_blocks = torch.zeros_like(block_scores, dtype=torch.bool).scatter_(-1, order, covered_before < counts)
    heads = keep_blocks.shape[1]
    keep = keep_blocks.gather(-2, query_block.expand(-1, heads, -1, blocks))  # (b, h, queries, KB)
    return keep.gather(-1, key_block.expand(-1, heads, queries, -1))


def _block_means(states: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Mean of each block's rows of `states` (batch, heads, tokens, dim), in float32; members
    (batch, 1, tokens, blocks) says which real token belongs to which block."""
    sums = members.transpose(-2, -1) @ states.float()  # (batch, heads, blocks, dim)
    return sums / members.sum(dim=-2).unsqueeze(-1).clamp(min=1)


# ---------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------


def _seen_keys(
    module: torch.nn.Module, attention_mask: torch.Tensor | None, batch: int, queries: int, keys: int, device
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """What each query sees, from the mask transformers hands over.

    Returns valid_keys (batch, 1, queries, keys) boolean, the additive mask to add to the scores
    (None unless the caller gave one), and whether the batch came with a mask at all (without one
    every row sees the same number of keys).
    """
    if attention_mask is None and getattr(module, "is_causal", False) and queries > 1:
        # A causal layer called without a mask (the mask function always builds one; a caller may not).
        visible = torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)
        return visible.view(1, 1, queries, keys).expand(batch, 1, queries, keys), None, True
    if attention_mask is None:
        return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device).expand(batch, 1, queries, keys), None, False
    if attention_mask.dtype == torch.bool:
        return attention_mask.expand(batch, 1, queries, keys), None, True
    # An additive mask (0 = attend, a very negative number = masked) given directly by a caller.
    visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return visible.expand(batch, 1, queries, keys), attention_mask, True


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

    query: (batch, heads, tokens, head_dim); key/value: (batch, key_value_heads, tokens, head_dim).
    attention_mask: None (no padding), a boolean mask (batch, 1, queries, keys) with True at the
    keys each query sees (what `sdpa_mask` builds), or an additive float mask. Returns the output
    (batch, tokens, heads, head_dim) and the attention probabilities (batch, heads, queries, keys)
    after dropout, as eager attention does; these are what `output_attentions=True` reports (for
    the patterns that select keys they carry no gradient). Padded query positions attend to the
    real keys of their sequence. A query that sees no key at all (a sequence without any real token,
    a left-padded decoder's padding) gets the mean of the values, as eager attention's uniform
    attention gives it.
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
    batch, heads, queries, _ = query.shape
    keys, groups = key.shape[-2], heads // key.shape[1]
    valid_keys, additive, padded = _seen_keys(module, attention_mask, batch, queries, keys, query.device)
    pattern = settings.pattern if module.training or settings.apply == "train_and_eval" else "dense"
    registered = PATTERNS[pattern]
    recorder = getattr(module, RECORDER_ATTRIBUTE, None)
    dropout = dropout if module.training else 0.0

    if registered.selection == SELECT_MASK:
        output, probabilities = _masked_attention(
            registered, query, key, value, valid_keys, additive, padded, settings, module.training,
            scaling, dropout, recorder,
        )
    else:
        causal = registered.selection == SELECT_KEYS_BY_ROW and getattr(module, "is_causal", False)
        blocks = query_blocks(queries, keys, causal)
        chosen, indices = [], []
        with torch.no_grad():
            for block in blocks:
                scores = block_scores(query, key, block, scaling)
                seen = valid_keys[:, :, block.start:block.stop, :block.keys]
                if additive is not None:
                    scores.add_(additive[..., block.start:block.stop, :block.keys])
                if padded:  # (without a mask every key is seen)
                    scores.masked_fill_(~seen, float("-inf"))
                selection = registered.keep(
                    AttentionScores(
                        scores=scores,
                        query=query[:, :, block.start:block.stop].detach(),
                        key=key[:, :, :block.keys].detach(),
                        scaling=scaling,
                        valid_keys=seen,
                        n_valid=seen.sum(dim=-1, keepdim=True),
                        settings=settings,
                        training=module.training,
                        padded=padded,
                    ),
                    **settings.options,
                )
                positions = selection.indices.expand(*scores.shape[:-1], selection.indices.shape[-1])
                within = torch.arange(positions.shape[-1], device=positions.device) < selection.counts
                block_chosen = scores.gather(-1, positions).masked_fill_(~within, float("-inf"))
                # A row keeps no key only if it sees none. Normalising nothing is NaN, so such rows
                # keep their first chosen position instead (their output is replaced below).
                block_chosen[..., :1].masked_fill_(selection.counts == 0, 0.0)
                chosen.append(block_chosen)
                indices.append(positions)
        if recorder is not None:
            recorder.record(settings.layer_index, _over_keys(blocks, chosen, indices, queries, keys), valid_keys)
        output, probabilities = kept_attention(query, key, value, blocks, chosen, indices, scaling, dropout)

    if padded:
        # A row that sees no key at all (a padded query of a left-padded decoder, a padded query
        # whose sliding window holds no real token) gets the mean of the values, as eager
        # attention's additive mask makes it attend uniformly: models that read such a position
        # (ModernBERT's first token under left padding) then give the logits of eager attention.
        sees_nothing = ~valid_keys.any(dim=-1, keepdim=True)  # (batch, 1, queries, 1)
        mean_value = value.mean(dim=-2, keepdim=True).repeat_interleave(groups, dim=1)
        output = torch.where(sees_nothing, mean_value.to(output.dtype), output)
    output = output.transpose(1, 2).contiguous()
    return output, probabilities


def _masked_attention(
    registered: RegisteredPattern, query, key, value, valid_keys, additive, padded, settings, training,
    scaling, dropout, recorder,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pattern that returns a mask: scores outside it are -inf, the normaliser sees whole rows."""
    groups = query.shape[1] // key.shape[1]
    key_heads, value_heads = key, value
    if groups > 1:  # each key/value head serves `groups` query heads
        key_heads, value_heads = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key_heads.transpose(-2, -1)) * scaling
    if additive is not None:
        scores = scores + additive
    with torch.no_grad():
        if registered.keep is keep_every_real_key:
            keep = valid_keys
        else:
            pattern_input = AttentionScores(
                scores=scores.detach().masked_fill(~valid_keys, float("-inf")),
                query=query.detach(),
                key=key.detach(),
                scaling=scaling,
                valid_keys=valid_keys,
                n_valid=valid_keys.sum(dim=-1, keepdim=True),
                settings=settings,
                training=training,
                padded=padded,
            )
            keep = registered.keep(pattern_input, **settings.options) & valid_keys
        # A row without any seen key attends densely to every position instead (NaN otherwise).
        keep = keep | ~keep.any(dim=-1, keepdim=True)
    probabilities = registered.normalise(scores.masked_fill(~keep, float("-inf")))
    if recorder is not None:
        recorder.record(settings.layer_index, probabilities, valid_keys)
    probabilities = F.dropout(probabilities.to(value.dtype), p=dropout, training=dropout > 0)
    return torch.matmul(probabilities, value_heads), probabilities


def _over_keys(blocks, chosen, indices, queries: int, keys: int) -> torch.Tensor:
    """The probabilities before dropout over all keys (batch, heads, queries, keys), for the recorder."""
    batch, heads = chosen[0].shape[:2]
    full = chosen[0].new_zeros(batch, heads, queries, keys, dtype=torch.float32)
    for block, block_chosen, positions in zip(blocks, chosen, indices, strict=True):
        rows = full[:, :, block.start:block.stop]
        rows.scatter_(-1, positions, softmax(block_chosen))
    return full


def crisp_mask(*args, **kwargs) -> torch.Tensor | None:
    """`sdpa_mask`, except that a causal mask is always built: SDPA can stand in for a causal mask
    without padding with its `is_causal` flag, the crisp attention cannot. (A bidirectional mask
    without padding may still be skipped: None means every key is seen.)"""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTENTION_NAME, crisp_attention)
AttentionMaskInterface.register(ATTENTION_NAME, crisp_mask)


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
    (the families of crisp.families and most models of transformers >= 5). Checks the settings
    (`crisp.patterns.check_experiment`; raises its ExperimentError, a ValueError), stores them with
    the layer index on each attention module, records them on `model.config` (crisp_pattern,
    crisp_sparsity, crisp_pattern_options, crisp_apply, crisp_seed), switches the attention
    implementation to "crisp", checks on a probe forward that every attention layer runs it
    (raises `UnsupportedModelError`, a ValueError, naming the model otherwise) and returns the
    same model.
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

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the refusal below says it in one line
    try:
        model.set_attn_implementation(ATTENTION_NAME)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if model.config._attn_implementation != ATTENTION_NAME:
        raise UnsupportedModelError(model, "it cannot switch its attention implementation")
    modules = _attention_modules(model)
    for layer_index, module in enumerate(modules):
        setattr(module, SETTINGS_ATTRIBUTE, SparseAttention(pattern, sparsity, options, apply, seed, layer_index))
    model.config.crisp_pattern = pattern
    model.config.crisp_sparsity = sparsity
    model.config.crisp_pattern_options = dict(options)
    model.config.crisp_apply = apply
    model.config.crisp_seed = seed
    _probe(model, modules)
    return model


class UnsupportedModelError(ValueError):
    """A model whose attention layers never call the registered attention function."""

    def __init__(self, model, why: str):
        config = model.config
        name = getattr(config, "name_or_path", "") or "the model"
        super().__init__(
            f"{name} ({type(model).__name__}, model_type {config.model_type!r}) cannot be sparsified: {why}, "
            f"so its attention layers never call the function registered with transformers' "
            f"AttentionInterface (they compute their own softmax) and no sparsity would be applied; "
            f"use a family of crisp.families (BERT, RoBERTa, ModernBERT, GPT-2, Llama, Qwen2, ...)"
        )


def _probe(model, modules: list[torch.nn.Module]) -> None:
    """Run one short forward and check that every attention module called `crisp_attention`.

    In evaluation mode and without gradients, so that it draws nothing from the random generators
    (dropout is off; random's evaluation masks are a hash) and leaves training as it would be.
    """
    device = next(model.parameters()).device
    vocabulary = max(getattr(model.config, "vocab_size", 5) or 5, 2)
    input_ids = (torch.arange(4, device=device) % (vocabulary - 1) + 1).view(1, 4)
    recorder = AttentionRecorder(len(modules))
    for module in modules:
        setattr(module, RECORDER_ATTRIBUTE, recorder)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    finally:
        model.train(was_training)
        for module in modules:
            setattr(module, RECORDER_ATTRIBUTE, None)
    missed = [index for index, seen in enumerate(recorder.layers_seen()) if not seen]
    if missed:
        raise UnsupportedModelError(model, f"a probe forward never reached the registered attention in layers {missed}")


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

    def layers_seen(self) -> list[bool]:
        """Whether each layer recorded at least one attention call."""
        return [totals is not None for totals in self._totals]

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
