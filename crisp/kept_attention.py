"""Attention over the keys each query row keeps: softmax, dropout and A V for a `KeySelection`.

`crisp.attention` chooses, for every query row, the positions of the keys it keeps; this module
turns the chosen scores into the attention output, with a backward written out by hand: the
softmax and the dropout run on the k chosen scores of each row only, and from forward to backward
only the chosen probabilities, their (int16) positions and the dropout's mask are kept, neither the
score matrix nor the probability matrix over all keys, so that the training step of a sparse model
costs about what a dense one costs and holds less than dense eager attention does.

Queries are taken in blocks of rows. In a causal layer the rows [start, stop) of a block see no key
at or after `stop`, so the block reads only the first `stop` keys: the score, A V and gradient
products of a decoder skip the future keys that eager attention multiplies and then masks, as
SDPA's causal kernel does. An encoder is one block over every key.

Grouped-query attention (fewer key/value heads than query heads) multiplies the `groups` query
heads of a key/value head against it at once, without copying keys and values per query head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A causal layer's queries are split into blocks of at least this many rows, and at most
# MAX_QUERY_BLOCKS blocks: fewer rows per block leaves each product too small to run at speed on a
# CPU (16 rows measured slower than 32 on a Llama-shaped layer of 128 tokens).
MIN_BLOCK_ROWS = 32
MAX_QUERY_BLOCKS = 8


@dataclass(frozen=True)
class QueryBlock:
    """Query rows [start, stop), which see no key at or after `keys`."""

    start: int
    stop: int
    keys: int


def query_blocks(queries: int, keys: int, causal: bool) -> tuple[QueryBlock, ...]:
    """The blocks of query rows of one attention call (their sizes come from the shapes alone).

    A causal self-attention (as many queries as keys, query i seeing keys 0..i at most) gets
    blocks whose keys stop where their rows stop; anything else is one block over all keys.
    """
    if not causal or queries != keys or queries < 2 * MIN_BLOCK_ROWS:
        return (QueryBlock(0, queries, keys),)
    rows = max(MIN_BLOCK_ROWS, -(-queries // MAX_QUERY_BLOCKS))
    return tuple(QueryBlock(start, min(start + rows, queries), min(start + rows, queries))
                 for start in range(0, queries, rows))


def grouped(states: torch.Tensor, key_value_heads: int) -> torch.Tensor:
    """(batch, heads, rows, dim) -> (batch, key_value_heads, groups * rows, dim): the query heads
    that share a key/value head, stacked, so that one product serves all of them."""
    batch, heads, rows, dim = states.shape
    return states.reshape(batch, key_value_heads, (heads // key_value_heads) * rows, dim)


@torch.no_grad()
def block_scores(query: torch.Tensor, key: torch.Tensor, block: QueryBlock, scaling: float) -> torch.Tensor:
    """(batch, heads, rows of the block, keys of the block) scaled scores, outside autograd."""
    batch, heads, _, _ = query.shape
    rows = block.stop - block.start
    scores = grouped(query[:, :, block.start:block.stop], key.shape[1]) @ key[:, :, :block.keys].transpose(-2, -1)
    return scores.view(batch, heads, rows, block.keys).mul_(scaling)


class _KeptAttention(torch.autograd.Function):
    """out = softmax(chosen scores) (dropped out) scattered over the block's keys, times V.

    Inputs after query, key, value and the settings: one chosen-score tensor per block
    (batch, heads, rows, k; -inf where a row keeps fewer than k), then one index tensor per block
    (the key position of each chosen score, distinct within a row, below the block's `keys`).
    Returns the output (batch, heads, queries, dim) and, without gradient, the probabilities
    after dropout over all keys (batch, heads, queries, keys), as eager attention returns them.
    """

    @staticmethod
    def forward(ctx, query, key, value, blocks, scaling, dropout, *chosen_and_indices):
        count = len(blocks)
        chosen, indices = chosen_and_indices[:count], chosen_and_indices[count:]
        batch, heads, queries, dim = query.shape
        keys, key_value_heads = key.shape[2], key.shape[1]
        kept, dropped, outputs, over_keys = [], [], [], []  # per block
        for block, scores, positions in zip(blocks, chosen, indices, strict=True):
            # In float32 even under bfloat16 autocast: exp of -inf and sums of few terms stay exact.
            probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32)
            used = probabilities.to(value.dtype)
            keep = None
            if dropout > 0:  # as torch's own dropout: Bernoulli(1 - p) noise, scaled by 1 / (1 - p)
                keep = torch.empty_like(used).bernoulli_(1 - dropout)
                used = used * keep.div_(1 - dropout)
                keep = keep.bool()
            rows = block.stop - block.start
            block_over_keys = used.new_zeros(batch, heads, rows, block.keys).scatter_(-1, positions, used)
            product = grouped(block_over_keys, key_value_heads) @ value[:, :, :block.keys]
            outputs.append(product.view(batch, heads, rows, dim))
            over_keys.append(block_over_keys)
            kept.append(probabilities)
            dropped.append(keep)
        if count == 1:
            output, probabilities = outputs[0], over_keys[0]
        else:
            output = torch.cat(outputs, dim=2)
            probabilities = value.new_zeros(batch, heads, queries, keys)
            for block, block_over_keys in zip(blocks, over_keys, strict=True):
                probabilities[:, :, block.start:block.stop, :block.keys] = block_over_keys
        ctx.blocks, ctx.dropout = blocks, dropout
        ctx.scaling = scaling
        # Not the probabilities over all keys: rebuilt in the backward from the chosen ones, they
        # cost a scatter there, and holding them from forward to backward cost more on a CPU.
        ctx.save_for_backward(
            query, key, value, *kept, *[keep for keep in dropped if keep is not None],
            *[_compact(positions, keys) for positions in indices],
        )
        ctx.mark_non_differentiable(probabilities)
        return output, probabilities

    @staticmethod
    def backward(ctx, grad_output, _grad_probabilities):
        blocks, scaling, dropout = ctx.blocks, ctx.scaling, ctx.dropout
        count = len(blocks)
        saved = ctx.saved_tensors
        query, key, value = saved[:3]
        kept = saved[3:3 + count]
        dropped = saved[3 + count:3 + 2 * count] if dropout > 0 else (None,) * count
        indices = saved[len(saved) - count:]
        batch, heads, _, dim = query.shape
        keys, key_value_heads = key.shape[2], key.shape[1]
        grad_queries, grad_key, grad_value = [None] * count, None, None
        # The block that sees every key first, so that its products start the key and value gradients.
        order = sorted(range(count), key=lambda index: -blocks[index].keys)
        for index in order:
            block, probabilities, keep = blocks[index], kept[index], dropped[index]
            rows, seen, positions = block.stop - block.start, block.keys, indices[index].long()
            grad_rows = grouped(grad_output[:, :, block.start:block.stop].to(value.dtype), key_value_heads)
            used = probabilities.to(value.dtype)
            if keep is not None:
                used = used * keep / (1 - dropout)
            over_keys = used.new_zeros(batch, heads, rows, seen).scatter_(-1, positions, used)
            grad_block_value = grouped(over_keys, key_value_heads).transpose(-2, -1) @ grad_rows
            grad_over_keys = (grad_rows @ value[:, :, :seen].transpose(-2, -1)).view(batch, heads, rows, seen)
            grad_kept = grad_over_keys.gather(-1, positions).float()
            if keep is not None:
                grad_kept = grad_kept * keep / (1 - dropout)
            # The softmax's backward, on the chosen scores only (the others have probability 0).
            grad_scores = probabilities * (grad_kept - (probabilities * grad_kept).sum(dim=-1, keepdim=True))
            grad_scores = grad_scores.mul_(scaling).to(key.dtype)
            grad_block = grad_scores.new_zeros(batch, heads, rows, seen).scatter_(-1, positions, grad_scores)
            grad_block = grouped(grad_block, key_value_heads)
            grad_queries[index] = (grad_block @ key[:, :, :seen]).view(batch, heads, rows, dim)
            block_queries = grouped(query[:, :, block.start:block.stop], key_value_heads)
            grad_block_key = grad_block.transpose(-2, -1) @ block_queries
            if grad_key is None and seen == keys:
                grad_key, grad_value = grad_block_key, grad_block_value
            else:
                if grad_key is None:
                    grad_key, grad_value = torch.zeros_like(key), torch.zeros_like(value)
                grad_key[:, :, :seen] += grad_block_key
                grad_value[:, :, :seen] += grad_block_value
        grad_query = grad_queries[0] if count == 1 else torch.cat(grad_queries, dim=2)
        return grad_query, grad_key, grad_value, None, None, None, *([None] * (2 * count))


def _compact(indices: torch.Tensor, keys: int) -> torch.Tensor:
    """Key positions in the smallest integer type that holds them (int64 takes 4x the memory of int16)."""
    return indices.to(torch.int16 if keys <= torch.iinfo(torch.int16).max else torch.int32)


def kept_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocks: tuple[QueryBlock, ...],
    chosen: list[torch.Tensor],
    indices: list[torch.Tensor],
    scaling: float,
    dropout: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (batch, heads, queries, dim) and probabilities over all keys, from each
    block's chosen scores (batch, heads, rows, k) and their key positions (same shape, int64).

    query: (batch, heads, queries, dim); key, value: (batch, key_value_heads, keys, dim) with
    key_value_heads dividing heads. Gradients reach query, key and value (not the chosen scores,
    whose gradient is computed from query and key); `dropout` is the rate in training, else 0.
    """
    return _KeptAttention.apply(query, key, value, blocks, scaling, dropout, *chosen, *indices)
