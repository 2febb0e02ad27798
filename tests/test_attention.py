"""Sparse attention: what a run relies on, checked on tiny random-init encoders of each architecture."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import transformers
from entmax import entmax15, sparsemax

from crisp.attention import (
    PATTERNS,
    RECORDER_ATTRIBUTE,
    SETTINGS_ATTRIBUTE,
    AttentionScores,
    SparseAttention,
    attention_diagnostics,
    crisp_attention,
    keep_count,
    keep_top_k,
    pattern_options,
    register_pattern,
    sparsify,
)
from crisp.families import tiny_family
from crisp.patterns import PATTERNS_INFO, ExperimentError, PatternInfo, check_experiment

ARCHITECTURES = ["distilbert", "bert", "roberta"]
# Real lengths of the padded batch used throughout: long, medium, a single token.
LENGTHS = [12, 7, 1]
FIXED_K = ["topk", "random", "window"]  # patterns that keep exactly keep_count keys per row
SPARSE = FIXED_K + ["block_topk"]
ADAPTIVE = ["sparsemax", "entmax15"]
ALL_PATTERNS = ["dense"] + SPARSE + ADAPTIVE
BLOCK_SIZE = 4  # block_topk's blocks in these tests, small so that short sequences have several


def tiny_model(architecture: str, seed: int = 0):
    """The 2-layer random-init classifier of a family (crisp.families), with a 100-token vocabulary
    and dropout off, so that masks and outputs are deterministic."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(tiny_family(architecture).tiny(100))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def padded_batch(model, lengths=LENGTHS, seed: int = 0, padded_length: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    max_length = padded_length or max(max(lengths), 1)
    input_ids = torch.randint(3, 100, (len(lengths), max_length), generator=generator)
    attention_mask = torch.zeros(len(lengths), max_length, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    input_ids = input_ids.masked_fill(attention_mask == 0, model.config.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def sparsify_as_tested(model, pattern, sparsity=0.6, **settings):
    """sparsify with the sparsity each pattern takes (0 for dense, none for the adaptive ones)."""
    sparsity = {"dense": 0.0, "sparsemax": None, "entmax15": None}.get(pattern, sparsity)
    options = {"block_size": BLOCK_SIZE} if pattern == "block_topk" else {}
    return sparsify(model, pattern, sparsity, **options, **settings)


def query_key_weights(model):
    """The query and key projection weights of every attention layer, whatever the architecture."""
    suffixes = ("q_lin.weight", "k_lin.weight", "self.query.weight", "self.key.weight")
    weights = [parameter for name, parameter in model.named_parameters() if name.endswith(suffixes)]
    assert len(weights) == 4  # 2 layers x (query, key)
    return weights


def assert_valid_attention(attentions, attention_mask, atol=1e-5):
    """No NaN, padding keys never kept, every row sums to 1."""
    for layer in attentions:
        assert torch.isfinite(layer).all()
        for row, n_valid in enumerate(attention_mask.sum(dim=1).tolist()):
            probabilities = layer[row].float()  # (heads, queries, keys)
            assert (probabilities[..., n_valid:] == 0).all(), "padding keys got attention"
            sums = probabilities.sum(dim=-1)
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=atol, rtol=0)


def assert_rows_keep(attentions, attention_mask, pattern, sparsity):
    """Every query row, padded or not, keeps keep_count(n_valid) real keys (block_topk: whole blocks
    holding at least that many, fewer than one block more)."""
    for layer in attentions:
        for row, n_valid in enumerate(attention_mask.sum(dim=1).tolist()):
            kept = (layer[row] > 0).sum(dim=-1)
            expected = keep_count(n_valid, sparsity)
            if pattern == "block_topk":
                assert (kept >= expected).all() and (kept < expected + BLOCK_SIZE).all(), kept.unique().tolist()
            else:
                assert (kept == expected).all(), f"row {row}: kept {kept.unique().tolist()}, expected {expected}"


def attention_module(pattern="topk", sparsity=0.5, options=None, apply="train_and_eval", seed=0, training=False):
    """A stand-in attention module carrying the settings that sparsify would store."""
    settings = SparseAttention(pattern, sparsity, options or {}, apply, seed, layer_index=0)
    return SimpleNamespace(**{SETTINGS_ATTRIBUTE: settings}, training=training)


# ---------------------------------------------------------------------------------------------
# How many keys, and which
# ---------------------------------------------------------------------------------------------


def test_keep_count_rule():
    assert keep_count(10, 0.7) == 3  # (1 - 0.7) * 10 is 3.0000000000000004 in floats
    assert keep_count(128, 0.8) == 26
    assert keep_count(64, 0.5) == 32
    assert keep_count(5, 0.0) == 5
    assert keep_count(1, 0.95) == 1  # at least one key
    assert keep_count(0, 0.5) == 0  # nothing to keep in an empty sequence
    lengths = torch.arange(0, 600)
    for sparsity in (0.3, 0.7, 0.8, 0.1234567, 0.0, 0.999):
        assert keep_count(lengths, sparsity).tolist() == [keep_count(n, sparsity) for n in range(600)]
    with pytest.raises(ValueError, match="sparsity"):
        keep_count(10, 1.0)


def test_keep_top_k_keeps_exactly_k_even_on_ties():
    values = torch.tensor([[1.0, 2.0, 2.0, 3.0], [4.0, 1.0, 3.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    keep = keep_top_k(values, torch.tensor([[2], [2], [3]]), k_max=3)
    assert keep.sum(dim=-1).tolist() == [2, 2, 3]
    assert keep[0, 3] and keep[0, 1:3].sum() == 1  # the 3, then one of the tied 2s
    assert keep[1].tolist() == [True, False, True, False]


def old_topk_attention(query, key, value, valid, scaling, sparsity):
    """The top-k before the sync-free rewrite (lookup table read back from the device, threshold
    mask), kept here to check that the new one chooses the same keys when no scores tie."""
    scores = query @ key.transpose(-2, -1) * scaling
    n_valid = valid.sum(dim=-1, keepdim=True)
    table = torch.tensor([keep_count(n, sparsity) for n in range(int(n_valid.max()) + 1)])
    counts = table[n_valid]
    masked = scores.masked_fill(~valid, float("-inf"))
    top = masked.topk(max(int(counts.max()), 1), dim=-1).values
    threshold = top.gather(-1, (counts - 1).clamp(min=0).expand(*scores.shape[:-1], 1))
    keep = (masked >= threshold) & valid
    keep |= ~keep.any(dim=-1, keepdim=True)
    probabilities = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    return (probabilities @ value).transpose(1, 2), probabilities


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8])
def test_topk_matches_the_previous_implementation_on_padded_batches(sparsity):
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 4, 3, 20, 8).unbind(0)
    valid = torch.zeros(4, 1, 20, 20, dtype=torch.bool)
    for row, length in enumerate([20, 13, 1, 0]):
        valid[row, ..., :length] = True
    expected_output, expected_probabilities = old_topk_attention(query, key, value, valid, 0.35, sparsity)
    output, probabilities = crisp_attention(attention_module("topk", sparsity), query, key, value, valid, 0.35)
    real = slice(0, 3)  # the sequence without real tokens attends anywhere now (see the NaN test)
    assert torch.equal(probabilities[real] > 0, expected_probabilities[real] > 0)
    torch.testing.assert_close(probabilities[real], expected_probabilities[real])
    torch.testing.assert_close(output[real], expected_output[real])
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("pattern", ["topk", "random"])
def test_a_batch_without_padding_mask_keeps_the_same_keys(pattern):
    """Without a padding mask every row keeps as many keys and the chosen ones are not sorted."""
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 3, 10, 8).unbind(0)
    everything = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    output, probabilities = crisp_attention(attention_module(pattern, 0.8), query, key, value, None)
    expected_output, expected = crisp_attention(attention_module(pattern, 0.8), query, key, value, everything)
    assert torch.equal(probabilities > 0, expected > 0)
    assert ((probabilities > 0).sum(dim=-1) == keep_count(10, 0.8)).all()
    torch.testing.assert_close(output, expected_output)


def test_topk_gradients_match_the_masked_softmax():
    """The selection path (softmax over the k chosen scores, scattered back) has the gradients of a
    softmax over all scores with the others set to -inf."""
    torch.manual_seed(1)
    inputs = [tensor.requires_grad_() for tensor in torch.randn(3, 3, 2, 11, 8).unbind(0)]
    valid = torch.ones(3, 1, 11, 11, dtype=torch.bool)
    valid[1, ..., 6:] = False
    valid[2, ..., 1:] = False
    grad_output = torch.randn(3, 11, 2, 8)
    output, _ = crisp_attention(attention_module("topk", 0.7), *inputs, valid, 0.4)
    gradients = torch.autograd.grad((output * grad_output).sum(), inputs)
    expected_output, _ = old_topk_attention(*inputs, valid, 0.4, 0.7)
    expected = torch.autograd.grad((expected_output * grad_output).sum(), inputs)
    for gradient, reference in zip(gradients, expected, strict=True):
        torch.testing.assert_close(gradient, reference)


def causal_gqa_inputs(length=70, dtype=torch.float64):
    """Query (2 sequences, 4 heads), key and value (2 key/value heads) of a decoder, and its mask:
    each query sees the real keys at or before it; sequence 0 is right-padded, 1 left-padded."""
    torch.manual_seed(3)
    query = torch.randn(2, 4, length, 8, dtype=dtype, requires_grad=True)
    key, value = (torch.randn(2, 2, length, 8, dtype=dtype, requires_grad=True) for _ in range(2))
    real = torch.ones(2, length, dtype=torch.bool)
    real[0, 50:] = False
    real[1, :9] = False
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return query, key, value, (causal & real[:, None, :])[:, None]


def causal_module(pattern="topk", sparsity=0.8, training=True):
    module = attention_module(pattern, sparsity, training=training)
    module.is_causal = True
    return module


def test_causal_query_blocks_have_the_gradients_of_the_masked_softmax():
    """A decoder's queries go through top-k in blocks of rows that read only the keys before the
    block's end. Output and gradients are those of one softmax over all scores with every key but
    the chosen ones at -inf (grouped-query heads, both padding sides, rows of 1 to 61 seen keys)."""
    from crisp.kept_attention import query_blocks

    query, key, value, visible = causal_gqa_inputs()
    assert len(query_blocks(70, 70, causal=True)) == 3
    grad_output = torch.randn(2, 70, 4, 8, dtype=torch.float64)
    output, probabilities = crisp_attention(causal_module(), query, key, value, visible, 0.3)
    gradients = torch.autograd.grad((output * grad_output).sum(), (query, key, value))

    keep = keep_top_k(
        (query.detach() @ key.detach().repeat_interleave(2, 1).transpose(-2, -1)).masked_fill(~visible, float("-inf")),
        keep_count(visible.sum(dim=-1, keepdim=True), 0.8), keep_count(70, 0.8),
    ) & visible
    sees_nothing = ~visible.any(dim=-1, keepdim=True)  # sequence 1's left padding
    assert torch.equal((probabilities > 0) & ~sees_nothing, keep)
    key_heads, value_heads = (tensor.repeat_interleave(2, 1) for tensor in (key, value))
    scores = (query @ key_heads.transpose(-2, -1) * 0.3).masked_fill(~keep, float("-inf"))
    expected = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ value_heads
    expected = torch.where(sees_nothing, value_heads.mean(dim=-2, keepdim=True), expected).transpose(1, 2)
    tolerance = {"rtol": 1e-5, "atol": 1e-6}  # the softmax runs in float32
    torch.testing.assert_close(output, expected, **tolerance)
    for gradient, reference in zip(
        gradients, torch.autograd.grad((expected * grad_output).sum(), (query, key, value)), strict=True
    ):
        torch.testing.assert_close(gradient, reference, **tolerance)


def test_causal_query_blocks_drop_out_what_one_block_drops_out():
    """Blocks or not, the dropout applies to the chosen probabilities only, rescaled by 1 / (1 - p)."""
    query, key, value, visible = causal_gqa_inputs(dtype=torch.float32)
    _, kept = crisp_attention(causal_module(training=False), query, key, value, visible, 0.3)
    torch.manual_seed(11)
    _, dropped = crisp_attention(causal_module(), query, key, value, visible, 0.3, dropout=0.25)
    survivors = dropped > 0
    assert ((dropped > 0) <= (kept > 0)).all() and 0 < survivors.sum() < (kept > 0).sum()
    torch.testing.assert_close(dropped[survivors], kept[survivors] / 0.75)


@pytest.mark.parametrize("pattern", ["topk", "random"])
def test_a_selection_keeps_less_than_dense_for_the_backward(pattern):
    """What autograd holds from forward to backward: the chosen probabilities and their compact key
    positions, neither the score matrix a plain gather would keep nor the probabilities over all
    keys that dense attention keeps."""
    from crisp.bench import saved_tensor_bytes

    torch.manual_seed(0)
    query, key, value = (tensor.requires_grad_() for tensor in torch.randn(3, 2, 4, 64, 16).unbind(0))

    def saved(module):
        return saved_tensor_bytes(lambda: crisp_attention(module, query, key, value, None), (query, key, value))

    dense = saved(attention_module("dense", 0.0, training=True))
    sparse = saved(attention_module(pattern, 0.8, training=True))
    probabilities = 2 * 4 * 64 * 64 * 4  # float32 bytes of one (batch, heads, queries, keys) matrix
    assert dense >= probabilities
    assert sparse < dense - 0.5 * probabilities, (sparse, dense)


def test_training_dropout_touches_only_the_kept_keys():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 2, 16, 8).unbind(0)
    valid = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    valid[1, ..., 10:] = False
    module = attention_module("topk", 0.75, training=True)
    _, kept = crisp_attention(attention_module("topk", 0.75), query, key, value, valid)
    torch.manual_seed(5)
    _, dropped = crisp_attention(module, query, key, value, valid, dropout=0.5)
    assert ((dropped > 0) <= (kept > 0)).all(), "dropout must not bring back a dropped key"
    survivors = dropped > 0
    assert 0 < survivors.sum() < (kept > 0).sum()
    torch.testing.assert_close(dropped[survivors], kept[survivors] * 2)  # inverted dropout: kept / (1 - p)
    torch.manual_seed(5)
    _, again = crisp_attention(module, query, key, value, valid, dropout=0.5)
    assert torch.equal(again, dropped), "the same seed draws the same dropout"


def test_topk_keeps_the_highest_scores():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 2, 9, 8).unbind(0)
    valid = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    valid[1, ..., 5:] = False  # second sequence: 5 real tokens
    _, probabilities = crisp_attention(attention_module("topk", 0.5), query, key, value, valid, scaling=0.5)
    scores = (query @ key.transpose(-1, -2) * 0.5).masked_fill(~valid, float("-inf"))
    for row, n_valid in enumerate([9, 5]):
        highest = scores[row].topk(keep_count(n_valid, 0.5)).indices
        expected = torch.zeros_like(scores[row], dtype=torch.bool).scatter(-1, highest, True)
        assert torch.equal(probabilities[row] > 0, expected)


def test_topk_keeps_exactly_k_under_bfloat16_autocast_with_ties():
    torch.manual_seed(0)
    query = torch.randn(2, 2, 16, 8)
    key = torch.randn(2, 2, 4, 8).repeat_interleave(4, dim=2)  # each key four times: scores tie in fours
    value = torch.randn(2, 2, 16, 8)
    valid = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    valid[1, ..., 11:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, probabilities = crisp_attention(attention_module("topk", 0.7), query, key, value, valid)
    scores = query @ key.transpose(-1, -2)
    assert (scores == scores.roll(1, dims=-1)).any(), "the test needs tied scores"
    kept = (probabilities > 0).sum(dim=-1)
    assert (kept[0] == keep_count(16, 0.7)).all() and (kept[1] == keep_count(11, 0.7)).all()


def test_window_keeps_the_first_token_and_a_band_around_each_query():
    module = attention_module("window", 0.5)  # 10 real keys -> k = 5: the first token and a band of 4
    query, key, value = torch.randn(3, 1, 1, 12, 4).unbind(0)
    valid = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    valid[..., :10] = True
    _, probabilities = crisp_attention(module, query, key, value, valid)
    kept = [torch.nonzero(row).flatten().tolist() for row in probabilities[0, 0] > 0]
    assert kept[0] == [0, 1, 2, 3, 4]  # query 0: the band shifts inward
    assert kept[1] == [0, 1, 2, 3, 4]
    assert kept[5] == [0, 4, 5, 6, 7]  # i - 1 .. i + 2
    assert kept[9] == [0, 6, 7, 8, 9]  # last real query: shifted inward at the end
    assert kept[11] == [0, 6, 7, 8, 9]  # a padded query attends like the last real one


def test_block_topk_keeps_the_best_blocks_by_pooled_scores():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 1, 2, 10, 8).unbind(0)
    valid = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    valid[..., 9:] = False  # 9 real tokens: key blocks of 4, 4 and 1 real keys
    module = attention_module("block_topk", 0.5, {"block_size": 4})  # k = 5: two blocks
    _, probabilities = crisp_attention(module, query, key, value, valid, scaling=0.5)
    blocks = [range(4), range(4, 8), range(8, 9)]
    for head in range(2):
        for query_block in blocks:
            pooled_query = query[0, head, list(query_block)].mean(dim=0)
            block_scores = torch.stack([pooled_query @ key[0, head, list(block)].mean(dim=0) for block in blocks])
            best = block_scores.argsort(descending=True).tolist()
            chosen, covered = [], 0
            for index in best:  # best blocks first, until they hold k = 5 real keys
                if covered < 5:
                    chosen.append(index)
                    covered += len(blocks[index])
            expected = torch.zeros(10, dtype=torch.bool)
            for index in chosen:
                expected[list(blocks[index])] = True
            for position in query_block:
                assert torch.equal(probabilities[0, head, position] > 0, expected)


@pytest.mark.parametrize("pattern, normaliser", [("sparsemax", sparsemax), ("entmax15", entmax15)])
def test_adaptive_normalisers_are_the_entmax_package_over_real_keys(pattern, normaliser):
    torch.manual_seed(0)
    query, key, value = (torch.randn(3, 2, 2, 9, 8) * 2).unbind(0)
    valid = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    valid[1, ..., 6:] = False
    _, probabilities = crisp_attention(attention_module(pattern, None), query, key, value, valid, scaling=1.0)
    scores = query @ key.transpose(-1, -2)
    torch.testing.assert_close(probabilities[0], normaliser(scores[0], dim=-1))
    torch.testing.assert_close(probabilities[1, ..., :6], normaliser(scores[1, ..., :6], dim=-1))
    assert (probabilities[1, ..., 6:] == 0).all()
    assert (probabilities == 0).any(), "sharp scores should leave some keys out"


# ---------------------------------------------------------------------------------------------
# Every pattern in real models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("pattern", ["dense", *SPARSE])
def test_zero_sparsity_equals_dense_eager_attention(architecture, pattern):
    model = tiny_model(architecture).eval()
    batch = padded_batch(model)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model(**batch).logits
        sparsify_as_tested(model, pattern, 0.0)
        logits = model(**batch).logits
    assert (logits - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_each_row_keeps_its_keys_and_no_padding(architecture, pattern):
    model = sparsify_as_tested(tiny_model(architecture).eval(), pattern, 0.6)
    batch = padded_batch(model)
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)
    assert len(outputs.attentions) == 2
    assert_valid_attention(outputs.attentions, batch["attention_mask"])
    if pattern in SPARSE:
        assert_rows_keep(outputs.attentions, batch["attention_mask"], pattern, 0.6)


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_no_nan_for_single_token_and_fully_padded_sequences(pattern, sparsity):
    # The largest count is 12 while one sequence has 1 real token and one has none at all.
    model = sparsify_as_tested(tiny_model("bert").train(), pattern, sparsity)
    batch = padded_batch(model, lengths=[12, 1, 0])
    outputs = model(**batch, labels=torch.tensor([0, 1, 0]), output_attentions=True)
    outputs.loss.backward()
    assert torch.isfinite(outputs.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for layer in outputs.attentions:
        assert (layer[1, :, :, 0] == 1).all(), "every query of the 1-token sequence attends to its one key"
        # A sequence without real tokens attends to some of its positions (dense: all of them).
        assert torch.isfinite(layer[2]).all() and (layer[2] >= 0).all()
        torch.testing.assert_close(layer[2].sum(dim=-1), torch.ones_like(layer[2][..., 0]))
        if pattern == "dense":
            assert (layer[2] > 0).all()
    assert_valid_attention([layer[:2] for layer in outputs.attentions], batch["attention_mask"][:2])


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_training_gradients_reach_query_and_key(pattern):
    for architecture in ARCHITECTURES if pattern == "topk" else ["bert"]:
        model = sparsify_as_tested(tiny_model(architecture).train(), pattern, 0.8)
        batch = padded_batch(model)
        model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
        for weight in query_key_weights(model):
            assert torch.isfinite(weight.grad).all()
            assert weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_runs_under_cpu_bfloat16_autocast(pattern):
    model = sparsify_as_tested(tiny_model("roberta").train(), pattern, 0.5)
    batch = padded_batch(model, lengths=[12, 7, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch, labels=torch.tensor([0, 1, 1]), output_attentions=True)
    outputs.loss.backward()
    assert torch.isfinite(outputs.logits.float()).all()
    for weight in query_key_weights(model):
        assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0
    attentions = [layer[:2] for layer in outputs.attentions]
    assert_valid_attention(attentions, batch["attention_mask"][:2], atol=1e-2)
    if pattern in SPARSE:
        assert_rows_keep(attentions, batch["attention_mask"][:2], pattern, 0.5)


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_attention_compiles_without_graph_breaks(pattern):
    """fullgraph=True fails on any graph break, so on any value read back to the host; the
    aot_eager backend traces forward and backward without a slow C++ compile."""
    torch.manual_seed(0)
    query, key, value = (torch.randn(3, 2, 2, 10, 8) * 2).unbind(0)
    valid = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    valid[1, ..., 6:] = False
    sparsity = {"dense": 0.0, "sparsemax": None, "entmax15": None}.get(pattern, 0.6)
    options = {"block_size": BLOCK_SIZE} if pattern == "block_topk" else {}
    module = attention_module(pattern, sparsity, options)

    def attention(query, key, value):
        return crisp_attention(module, query, key, value, valid)[0]

    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")
    inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    compiled_inputs = [tensor.clone().requires_grad_() for tensor in (query, key, value)]
    attention(*inputs).square().sum().backward()
    compiled(*compiled_inputs).square().sum().backward()
    for eager, compiled_tensor in zip(inputs, compiled_inputs):
        torch.testing.assert_close(compiled_tensor.grad, eager.grad)


def test_causal_query_blocks_compile_without_graph_breaks():
    """The blocks come from the shapes alone, so a decoder's top-k compiles with fullgraph=True."""
    query, key, value, visible = causal_gqa_inputs(dtype=torch.float32)
    module = causal_module()

    def attention(query, key, value):
        return crisp_attention(module, query, key, value, visible)[0]

    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")
    inputs = [tensor.detach().clone().requires_grad_() for tensor in (query, key, value)]
    compiled_inputs = [tensor.detach().clone().requires_grad_() for tensor in (query, key, value)]
    attention(*inputs).square().sum().backward()
    compiled(*compiled_inputs).square().sum().backward()
    for eager, compiled_tensor in zip(inputs, compiled_inputs, strict=True):
        torch.testing.assert_close(compiled_tensor.grad, eager.grad)


# ---------------------------------------------------------------------------------------------
# Where the pattern applies, the random control, diagnostics
# ---------------------------------------------------------------------------------------------


def test_apply_train_evaluates_densely():
    model = tiny_model("distilbert")
    batch = padded_batch(model)
    with torch.no_grad():
        dense_logits = sparsify(model.eval(), "dense", 0.0)(**batch).logits
        sparsify(model, "topk", 0.8, apply="train")
        outputs = model(**batch, output_attentions=True)
        torch.testing.assert_close(outputs.logits, dense_logits)
        assert_rows_keep(outputs.attentions, batch["attention_mask"], "dense", 0.0)
        model.train()
        assert_rows_keep(model(**batch, output_attentions=True).attentions, batch["attention_mask"], "topk", 0.8)


def test_random_pattern_fresh_in_training_fixed_in_evaluation():
    model = sparsify(tiny_model("distilbert"), "random", 0.5, seed=7)
    batch = padded_batch(model)

    def masks():
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        assert_rows_keep(attentions, batch["attention_mask"], "random", 0.5)
        return [layer > 0 for layer in attentions]

    model.train()
    first, second = masks(), masks()
    assert not torch.equal(first[0], second[0]), "training steps should draw new masks"
    torch.manual_seed(123)
    seeded = masks()
    torch.manual_seed(123)
    assert all(torch.equal(a, b) for a, b in zip(seeded, masks())), "training masks follow torch's seed"

    model.eval()
    first, second = masks(), masks()
    assert all(torch.equal(a, b) for a, b in zip(first, second)), "evaluation masks must repeat"
    assert not torch.equal(first[0], first[1]), "each layer has its own evaluation masks"
    sparsify(model, "random", 0.5, seed=8)
    assert not torch.equal(first[0], masks()[0]), "another run seed gives other evaluation masks"


def test_random_evaluation_mask_depends_only_on_the_example():
    """Not on its place in the batch, the batch's padded length or the evaluation batch size."""
    model = sparsify(tiny_model("bert").eval(), "random", 0.5, seed=3)
    alone = padded_batch(model, lengths=[7])
    example = {name: tensor[0] for name, tensor in alone.items()}

    def masks_of_example(batch, row):
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        return [layer[row, :, :7, :7] > 0 for layer in attentions]

    expected = masks_of_example(alone, 0)
    other = padded_batch(model, lengths=[12, 3, 9, 5], seed=1, padded_length=20)
    for row in (0, 2):  # the example placed at different rows of a larger batch, padded to 20
        batch = {name: tensor.clone() for name, tensor in other.items()}
        batch["input_ids"][row] = model.config.pad_token_id
        batch["input_ids"][row, :7] = example["input_ids"][:7]
        batch["attention_mask"][row] = 0
        batch["attention_mask"][row, :7] = 1
        assert all(torch.equal(a, b) for a, b in zip(expected, masks_of_example(batch, row)))


def test_diagnostics_against_hand_made_attention():
    """Uniform attention over n keys has entropy log n and keeps every key."""
    query = torch.zeros(1, 2, 6, 4)  # all scores 0: uniform over the real keys
    key, value = torch.randn(2, 1, 2, 6, 4).unbind(0)
    valid = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    valid[..., :4] = True
    module = attention_module("dense", 0.0)
    from crisp.attention import AttentionRecorder

    setattr(module, RECORDER_ATTRIBUTE, AttentionRecorder(1))
    crisp_attention(module, query, key, value, valid)
    summary = getattr(module, RECORDER_ATTRIBUTE).summary()
    assert summary["attention_entropy"][0] == pytest.approx(math.log(4), abs=1e-6)  # 4 real query tokens
    assert summary["kept_fraction"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("pattern, sparsity, kept", [("dense", 0.0, 1.0), ("topk", 0.5, 0.5), ("window", 0.75, 0.25)])
def test_diagnostics_in_a_model(pattern, sparsity, kept):
    model = sparsify(tiny_model("distilbert").eval(), pattern, sparsity)
    with torch.no_grad(), attention_diagnostics(model) as diagnostics:
        for seed in range(2):  # accumulated over every forward of the block
            model(**padded_batch(model, lengths=[16, 8], seed=seed))
    summary = diagnostics.summary()
    assert summary["kept_fraction"] == pytest.approx([kept, kept])
    assert len(summary["attention_entropy"]) == 2
    # Keeping fewer keys can only concentrate the attention: below the entropy of uniform over 16.
    assert all(0 < entropy < math.log(16) for entropy in summary["attention_entropy"])
    assert all(
        getattr(module, RECORDER_ATTRIBUTE) is None for module in model.modules() if hasattr(module, RECORDER_ATTRIBUTE)
    )


def test_diagnostics_measure_the_adaptive_patterns():
    model = sparsify(tiny_model("bert").eval(), "sparsemax", None)
    for module in model.modules():  # sharp scores, so that sparsemax leaves keys out
        if hasattr(module, SETTINGS_ATTRIBUTE):
            module.query.weight.data *= 20
    with torch.no_grad(), attention_diagnostics(model) as diagnostics:
        model(**padded_batch(model, lengths=[16, 8]))
    assert all(0 < kept < 1 for kept in diagnostics.summary()["kept_fraction"])


# ---------------------------------------------------------------------------------------------
# Settings: checked once, catalogue and registry agree
# ---------------------------------------------------------------------------------------------


def test_catalogue_and_registered_implementations_agree():
    assert sorted(PATTERNS) == sorted(PATTERNS_INFO)
    for name, info in PATTERNS_INFO.items():
        declared = {option: spec.default for option, spec in info.options.items()}
        assert pattern_options(PATTERNS[name].keep) == declared, name


@pytest.mark.parametrize(
    "spec",
    [
        {"pattern": "dense", "sparsity": 0.0},
        {"pattern": "dense"},
        {"pattern": "topk", "sparsity": 0.8, "options": {}, "apply": "train", "attention_dropout": None},
        {"pattern": "random", "sparsity": 0.8, "attention_dropout": 0.3},
        {"pattern": "window", "sparsity": 0},
        {"pattern": "block_topk", "sparsity": 0.5, "options": {"block_size": 1}},
        {"pattern": "sparsemax"},
        {"pattern": "entmax15", "sparsity": None, "apply": "train_and_eval"},
    ],
)
def test_valid_experiments_pass(spec):
    check_experiment(spec)


@pytest.mark.parametrize(
    "spec, key, message",
    [
        ({"pattern": "top-k", "sparsity": 0.5}, "pattern", "unknown attention pattern 'top-k'"),
        ({"sparsity": 0.5}, "pattern", "an experiment needs a pattern"),
        ({"pattern": ["topk"], "sparsity": 0.5}, "pattern", "unknown attention pattern"),
        ({"pattern": "topk", "sparsity": float("nan")}, "sparsity", r"in \[0, 1\)"),
        ({"pattern": "topk", "sparsity": 0.5, "sparse": 1}, "sparse", "unknown experiment key"),
        ({"pattern": "topk"}, "sparsity", "needs a sparsity"),
        ({"pattern": "topk", "sparsity": 1.0}, "sparsity", r"in \[0, 1\)"),
        ({"pattern": "topk", "sparsity": True}, "sparsity", r"in \[0, 1\)"),
        ({"pattern": "topk", "sparsity": "0.5"}, "sparsity", r"in \[0, 1\)"),
        ({"pattern": "dense", "sparsity": 0.5}, "sparsity", "keeps every key"),
        ({"pattern": "sparsemax", "sparsity": 0.5}, "sparsity", "chooses its own sparsity"),
        ({"pattern": "random", "sparsity": 0.5, "options": {"seed": -1}}, "options.seed", "run's seed"),
        ({"pattern": "topk", "sparsity": 0.5, "options": {"seed": 1}}, "options.seed", "has no option 'seed'"),
        ({"pattern": "block_topk", "sparsity": 0.5, "options": {"block_size": 0}}, "options.block_size", ">= 1"),
        ({"pattern": "block_topk", "sparsity": 0.5, "options": {"block_size": 2.5}}, "options.block_size", "integer"),
        ({"pattern": "block_topk", "sparsity": 0.5, "options": {"block_size": True}}, "options.block_size", "integer"),
        ({"pattern": "topk", "sparsity": 0.5, "options": [1]}, "options", "mapping"),
        ({"pattern": "topk", "sparsity": 0.5, "apply": "eval"}, "apply", "train_and_eval"),
        ({"pattern": "dense", "attention_dropout": 1.0}, "attention_dropout", r"in \[0, 1\)"),
        ({"pattern": "dense", "attention_dropout": "0.1"}, "attention_dropout", r"in \[0, 1\)"),
    ],
)
def test_invalid_experiments_name_the_key(spec, key, message):
    with pytest.raises(ExperimentError, match=message) as raised:
        check_experiment(spec)
    assert raised.value.key == key
    assert isinstance(raised.value, ValueError)


def test_sparsify_rejects_invalid_settings_with_a_clear_message():
    model = tiny_model("distilbert")
    with pytest.raises(ValueError, match="unknown attention pattern 'top-k'.*block_topk, dense, entmax15"):
        sparsify(model, "top-k", 0.5)
    for sparsity in (1.0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
            sparsify(model, "topk", sparsity)
    with pytest.raises(ValueError, match="pattern 'topk' has no option 'block_size'"):
        sparsify(model, "topk", 0.5, block_size=4)
    with pytest.raises(ValueError, match="pattern 'dense' keeps every key"):
        sparsify(model, "dense", 0.5)
    for seed in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="seed must be an integer"):
            sparsify(model, "random", 0.5, seed=seed)


def test_crisp_attention_without_sparsify_explains_what_to_do():
    model = tiny_model("distilbert")
    model.set_attn_implementation("crisp")
    with pytest.raises(ValueError, match="use crisp.attention.sparsify"):
        model(**padded_batch(model))


def test_layers_that_cannot_be_found_fail_loudly(monkeypatch):
    model = tiny_model("bert")
    monkeypatch.setattr(type(model), "_can_record_outputs", None, raising=False)
    with pytest.raises(ValueError, match="cannot find the attention layers of BertForSequenceClassification"):
        sparsify(model, "random", 0.5)


def test_sparsify_numbers_the_layers_in_order():
    model = sparsify(tiny_model("roberta"), "topk", 0.5)
    settings = [module.crisp_settings for module in model.modules() if hasattr(module, SETTINGS_ATTRIBUTE)]
    assert [setting.layer_index for setting in settings] == [0, 1]


def test_new_patterns_plug_into_the_registry(monkeypatch):
    def first_key_only(attention: AttentionScores) -> torch.Tensor:
        keep = torch.zeros_like(attention.scores, dtype=torch.bool)
        keep[..., 0] = True
        return keep

    with pytest.raises(ValueError, match="declare attention pattern 'first_key_only' in crisp.patterns"):
        register_pattern("first_key_only")(first_key_only)
    monkeypatch.setitem(PATTERNS_INFO, "first_key_only", PatternInfo("required", "the first token only"))
    monkeypatch.setattr("crisp.attention.PATTERNS", dict(PATTERNS))
    register_pattern("first_key_only")(first_key_only)
    with pytest.raises(ValueError, match="already registered"):
        register_pattern("first_key_only")(first_key_only)
    model = sparsify(tiny_model("roberta").eval(), "first_key_only", 0.0)
    with torch.no_grad():
        attentions = model(**padded_batch(model), output_attentions=True).attentions
    assert all((layer[..., 0] == 1).all() for layer in attentions)
    with pytest.raises(ValueError, match="selection must be one of"):
        register_pattern("first_key_only", selection="positions")
    with pytest.raises(ValueError, match="normalised by the softmax"):
        register_pattern("first_key_only", normalise=sparsemax, selection="keys")


def test_registered_options_must_match_the_catalogue(monkeypatch):
    monkeypatch.setitem(PATTERNS_INFO, "strided", PatternInfo("required", "every other key"))
    monkeypatch.setattr("crisp.attention.PATTERNS", dict(PATTERNS))

    def strided(attention: AttentionScores, stride: int = 2) -> torch.Tensor:
        return attention.valid_keys

    with pytest.raises(ValueError, match="takes options"):
        register_pattern("strided")(strided)


def test_settings_are_saved_with_the_model(tmp_path):
    model = sparsify(tiny_model("bert"), "block_topk", 0.3, apply="train", seed=4)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    keys = ("crisp_pattern", "crisp_sparsity", "crisp_pattern_options", "crisp_apply", "crisp_seed")
    assert [saved[key] for key in keys] == ["block_topk", 0.3, {"block_size": 16}, "train", 4]


def test_a_block_larger_than_the_sequence_is_one_block():
    model = sparsify(tiny_model("bert").eval(), "block_topk", 0.5, block_size=10**9)
    batch = padded_batch(model)
    with torch.no_grad():
        attentions = model(**batch, output_attentions=True).attentions
    assert_rows_keep(attentions, batch["attention_mask"], "dense", 0.0)
