"""Sparse attention: what a run relies on, checked on tiny random-init encoders of each architecture."""

import json
from types import SimpleNamespace

import pytest
import torch
import transformers

from crisp.attention import (
    PATTERNS,
    AttentionScores,
    available_patterns,
    crisp_attention,
    keep_count,
    keep_top_k,
    register_pattern,
    sparsify,
)

ARCHITECTURES = ["distilbert", "bert", "roberta"]
# Real lengths of the padded batch used throughout: long, medium, a single token.
LENGTHS = [12, 7, 1]


def tiny_model(architecture: str, seed: int = 0):
    """A 2-layer random-init classifier, dropout off so that masks and outputs are deterministic."""
    torch.manual_seed(seed)
    if architecture == "distilbert":
        config = transformers.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0, attention_dropout=0.0
        )
        return transformers.DistilBertForSequenceClassification(config)
    shared = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if architecture == "bert":
        return transformers.BertForSequenceClassification(transformers.BertConfig(**shared))
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**shared))


def padded_batch(model, lengths=LENGTHS, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    max_length = max(max(lengths), 1)
    input_ids = torch.randint(3, 100, (len(lengths), max_length), generator=generator)
    attention_mask = torch.zeros(len(lengths), max_length, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    input_ids = input_ids.masked_fill(attention_mask == 0, model.config.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def query_key_weights(model):
    """The query and key projection weights of every attention layer, whatever the architecture."""
    suffixes = ("q_lin.weight", "k_lin.weight", "self.query.weight", "self.key.weight")
    weights = [parameter for name, parameter in model.named_parameters() if name.endswith(suffixes)]
    assert len(weights) == 4  # 2 layers x (query, key)
    return weights


def assert_rows_keep(attentions, attention_mask, sparsity, exact=True):
    """Every query row, padded or not, keeps keep_count(n_valid) real keys and sums to 1."""
    for layer in attentions:
        assert torch.isfinite(layer).all()
        for row, n_valid in enumerate(attention_mask.sum(dim=1).tolist()):
            probabilities = layer[row].float()  # (heads, queries, keys)
            assert (probabilities[..., n_valid:] == 0).all(), "padding keys got attention"
            kept = (probabilities > 0).sum(dim=-1)
            expected = keep_count(n_valid, sparsity)
            if exact:
                assert (kept == expected).all(), f"row {row}: kept {kept.unique().tolist()}, expected {expected}"
            else:  # bfloat16 scores can tie at the threshold, and ties are kept
                assert (kept >= expected).all()
            sums = probabilities.sum(dim=-1)
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5 if exact else 1e-2, rtol=0)


def test_keep_count_rule():
    assert keep_count(10, 0.7) == 3  # (1 - 0.7) * 10 is 3.0000000000000004 in floats
    assert keep_count(128, 0.8) == 26
    assert keep_count(64, 0.5) == 32
    assert keep_count(5, 0.0) == 5
    assert keep_count(1, 0.95) == 1  # at least one key
    assert keep_count(0, 0.5) == 0  # nothing to keep in an empty sequence
    lengths = torch.arange(0, 200)
    assert keep_count(lengths, 0.3).tolist() == [keep_count(n, 0.3) for n in range(200)]
    with pytest.raises(ValueError, match="sparsity"):
        keep_count(10, 1.0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("pattern", ["dense", "topk"])
def test_zero_sparsity_equals_dense_eager_attention(architecture, pattern):
    model = tiny_model(architecture).eval()
    batch = padded_batch(model)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model(**batch).logits
        sparsify(model, pattern, 0.0)
        logits = model(**batch).logits
    assert (logits - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("pattern", ["topk", "random"])
def test_each_row_keeps_k_real_keys(architecture, pattern):
    model = sparsify(tiny_model(architecture).eval(), pattern, 0.6)
    batch = padded_batch(model)
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)
    assert len(outputs.attentions) == 2
    assert_rows_keep(outputs.attentions, batch["attention_mask"], 0.6)


def test_topk_keeps_the_highest_scores():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 2, 9, 8).unbind(0)
    valid = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    valid[1, ..., 5:] = False  # second sequence: 5 real tokens
    module = SimpleNamespace(
        config=SimpleNamespace(crisp_pattern="topk", crisp_sparsity=0.5, crisp_pattern_options={}),
        training=False,
    )
    _, probabilities = crisp_attention(module, query, key, value, valid, scaling=0.5)
    scores = (query @ key.transpose(-1, -2) * 0.5).masked_fill(~valid, float("-inf"))
    for row, n_valid in enumerate([9, 5]):
        k = keep_count(n_valid, 0.5)
        highest = scores[row].topk(k).indices
        expected = torch.zeros_like(scores[row], dtype=torch.bool).scatter(-1, highest, True)
        assert torch.equal(probabilities[row] > 0, expected)


def test_threshold_keeps_ties():
    """Documented behaviour: entries equal to the k-th largest value all survive."""
    values = torch.tensor([[1.0, 2.0, 2.0, 3.0], [4.0, 1.0, 3.0, 2.0]])
    keep = keep_top_k(values, torch.tensor([[2], [2]]))
    assert keep.tolist() == [[False, True, True, True], [True, False, True, False]]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_no_nan_for_single_token_and_fully_padded_sequences(architecture, sparsity):
    # k_max over the batch is 12 while one sequence has 1 real token and one has none at all.
    model = sparsify(tiny_model(architecture).train(), "topk", sparsity)
    batch = padded_batch(model, lengths=[12, 1, 0])
    outputs = model(**batch, labels=torch.tensor([0, 1, 0]), output_attentions=True)
    outputs.loss.backward()
    assert torch.isfinite(outputs.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for layer in outputs.attentions:
        assert (layer[1, :, :, 0] == 1).all(), "every query of the 1-token sequence attends to its one key"
        # A sequence without real tokens falls back to dense attention over all its positions.
        assert (layer[2] > 0).all()
        torch.testing.assert_close(layer[2].sum(dim=-1), torch.ones_like(layer[2][..., 0]))
    assert_rows_keep([layer[:2] for layer in outputs.attentions], batch["attention_mask"][:2], sparsity)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_gradients_reach_query_and_key(architecture):
    model = sparsify(tiny_model(architecture).train(), "topk", 0.8)
    batch = padded_batch(model)
    model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
    for weight in query_key_weights(model):
        assert torch.isfinite(weight.grad).all()
        assert weight.grad.abs().sum() > 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_runs_under_cpu_bfloat16_autocast(architecture):
    model = sparsify(tiny_model(architecture).train(), "topk", 0.5)
    batch = padded_batch(model, lengths=[12, 7, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch, labels=torch.tensor([0, 1, 1]), output_attentions=True)
    outputs.loss.backward()
    assert torch.isfinite(outputs.logits.float()).all()
    for weight in query_key_weights(model):
        assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0
    attentions = [layer[:2] for layer in outputs.attentions]
    assert_rows_keep(attentions, batch["attention_mask"][:2], 0.5, exact=False)


def test_random_pattern_fresh_in_training_fixed_in_evaluation():
    model = sparsify(tiny_model("distilbert"), "random", 0.5, seed=7)
    batch = padded_batch(model)

    def masks():
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        assert_rows_keep(attentions, batch["attention_mask"], 0.5)
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
    assert not torch.equal(first[0], masks()[0]), "another seed gives other evaluation masks"


def test_topk_differs_from_random():
    model = tiny_model("bert").eval()
    batch = padded_batch(model)
    with torch.no_grad():
        topk = sparsify(model, "topk", 0.6)(**batch, output_attentions=True).attentions[0] > 0
        random = sparsify(model, "random", 0.6)(**batch, output_attentions=True).attentions[0] > 0
    assert not torch.equal(topk, random)


def test_invalid_settings_are_rejected_with_a_clear_message():
    model = tiny_model("distilbert")
    with pytest.raises(ValueError, match="unknown attention pattern 'top-k'.*dense, random, topk"):
        sparsify(model, "top-k", 0.5)
    for sparsity in (1.0, -0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
            sparsify(model, "topk", sparsity)
    with pytest.raises(ValueError, match="pattern 'topk' got options \\['seed'\\]"):
        sparsify(model, "topk", 0.5, seed=1)
    with pytest.raises(ValueError, match="pattern 'dense' keeps every key"):
        sparsify(model, "dense", 0.5)


def test_crisp_attention_without_sparsify_explains_what_to_do():
    model = tiny_model("distilbert")
    model.set_attn_implementation("crisp")
    with pytest.raises(ValueError, match="use crisp.attention.sparsify"):
        model(**padded_batch(model))


def test_new_patterns_plug_into_the_registry():
    @register_pattern("first_key_only")
    def first_key_only(attention: AttentionScores) -> torch.Tensor:
        keep = torch.zeros_like(attention.scores, dtype=torch.bool)
        keep[..., 0] = True
        return keep

    try:
        assert "first_key_only" in available_patterns()
        with pytest.raises(ValueError, match="already registered"):
            register_pattern("first_key_only")(first_key_only)
        model = sparsify(tiny_model("roberta").eval(), "first_key_only", 0.0)
        with torch.no_grad():
            attentions = model(**padded_batch(model), output_attentions=True).attentions
        assert all((layer[..., 0] == 1).all() for layer in attentions)
    finally:
        PATTERNS.pop("first_key_only", None)


def test_settings_are_saved_with_the_model(tmp_path):
    model = sparsify(tiny_model("bert"), "random", 0.3, seed=4)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    settings = (saved["crisp_pattern"], saved["crisp_sparsity"], saved["crisp_pattern_options"])
    assert settings == ("random", 0.3, {"seed": 4})
