"""Every pattern on every family of crisp.families, padded on either side: the tiny:<family> specs.

What a query sees is read from the model's own eager attention (a key it sees gets a probability
above 0, one it does not see exactly 0), so the checks need nothing family-specific: causal
decoders, sliding-window layers and grouped-query heads are covered by the same assertions.
"""

import copy
import functools
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from crisp.attention import ATTENTION_NAME, attention_diagnostics, crisp_attention, keep_count, sparsify
from crisp.families import FAMILIES, TINY_NAMES, tiny_family
from crisp.modeling import load_model, load_tokenizer

NAMES = list(TINY_NAMES)
SIDES = ["right", "left"]
FIXED_K = ["topk", "random", "window"]
SPARSE = [*FIXED_K, "block_topk"]
BLOCK_SIZE = 4
SENTENCES = [
    "good .",
    "a long and rather tedious film , but the ending is lovely and the cast does fine work throughout .",
    "not my kind of movie at all .",
]


@functools.cache
def _tiny(name: str):
    torch.manual_seed(0)
    return load_model(f"tiny:{name}")


def tiny(name: str):
    """The tiny model of a family, dropout off (masks and outputs deterministic), eager attention."""
    model = copy.deepcopy(_tiny(name))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    for module in model.modules():  # decoders read their rate from the module
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    model.set_attn_implementation("eager")
    return model.eval()


@functools.cache
def _tokenizer(name: str, side: str):
    tokenizer = load_tokenizer(f"tiny:{name}")
    tokenizer.padding_side = side
    return tokenizer


def batch_of(name: str, side: str, sentences=SENTENCES):
    return dict(_tokenizer(name, side)(sentences, padding=True, return_tensors="pt", return_token_type_ids=False))


def sparsified(model, pattern, sparsity):
    sparsity = 0.0 if pattern == "dense" else sparsity
    return sparsify(model, pattern, sparsity, **({"block_size": BLOCK_SIZE} if pattern == "block_topk" else {}))


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def attentions(model, batch):
    with torch.no_grad():
        return model(**batch, output_attentions=True).attentions


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", NAMES)
def test_zero_sparsity_equals_dense_on_every_layer(name, side):
    model = tiny(name)
    batch = batch_of(name, side)
    dense = logits(model, batch)
    for pattern in ["dense", *SPARSE]:
        sparse = logits(sparsified(model, pattern, 0.0), batch)
        assert (sparse - dense).abs().max() <= 1e-5, pattern


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", NAMES)
def test_each_real_query_keeps_k_of_the_keys_it_sees(name, side):
    model = tiny(name)
    batch = batch_of(name, side)
    seen = [layer > 0 for layer in attentions(model, batch)]  # eager: what each query sees
    real = batch["attention_mask"].bool()
    for layer_seen in seen:  # no query sees padding; a decoder's query sees no later key
        assert not (layer_seen & ~real[:, None, None, :] & real[:, None, :, None]).any()
        if tiny_family(name).causal:
            assert not layer_seen.triu(diagonal=1)[real[:, None, :, None].expand_as(layer_seen)].any()
    for pattern in SPARSE:
        kept_layers = attentions(sparsified(model, pattern, 0.6), batch)
        for layer_seen, layer_kept in zip(seen, kept_layers, strict=True):
            kept = layer_kept > 0
            rows = real[:, None, :].expand(kept.shape[:-1])  # real query rows
            assert not (kept & ~layer_seen)[rows].any(), f"{pattern} kept a key its query does not see"
            counts, visible = kept.sum(dim=-1)[rows], layer_seen.sum(dim=-1)[rows]
            expected = keep_count(visible, 0.6)
            if pattern in FIXED_K:
                assert torch.equal(counts, expected), pattern
            else:  # block_topk keeps whole blocks: k to k + block_size - 1 where a row sees every real
                # key; where rows of a block see different keys (causal, sliding window), at least one
                sees_all = visible == real.sum(dim=-1)[:, None, None].expand(kept.shape[:-1])[rows]
                strict = (counts >= expected) & (counts < expected + BLOCK_SIZE)
                assert torch.where(sees_all, strict, counts >= 1).all(), pattern
            sums = layer_kept.sum(dim=-1)[rows]
            torch.testing.assert_close(sums, torch.ones_like(sums))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", NAMES)
def test_an_example_alone_and_in_a_padded_batch_gives_the_same_logits(name, side):
    model = tiny(name)
    batch, alone = batch_of(name, side), batch_of(name, side, SENTENCES[:1])
    if (logits(model, batch)[0] - logits(model, alone)[0]).abs().max() > 1e-5:
        pytest.skip(f"dense tiny:{name} depends on {side} padding itself (absolute positions, first-token pooling)")
    for pattern in SPARSE:
        model = sparsified(model, pattern, 0.6)
        torch.testing.assert_close(logits(model, batch)[0], logits(model, alone)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_training_steps_lower_the_loss_with_finite_gradients(name):
    side = tiny_family(name).padding_side
    torch.manual_seed(0)
    model = sparsify(tiny(name).train(), "topk", 0.8)
    batch = {**batch_of(name, side), "labels": torch.tensor([1, 0, 0])}
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_and_load_keep_the_settings(name, tmp_path):
    model = sparsify(tiny(name), "random", 0.5, seed=3)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["crisp_pattern"], saved["crisp_sparsity"], saved["crisp_seed"]) == ("random", 0.5, 3)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    config = loaded.config
    sparsify(loaded, config.crisp_pattern, config.crisp_sparsity, apply=config.crisp_apply, seed=config.crisp_seed)
    batch = batch_of(name, tiny_family(name).padding_side)
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch))


@pytest.mark.parametrize("name", NAMES)
def test_attention_dropout_reaches_the_attention_of_every_family(name, monkeypatch):
    torch.manual_seed(0)
    model = sparsify(load_model(f"tiny:{name}", attention_dropout=0.37).train(), "dense", 0.0)
    rates = []

    def recording(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        rates.append(dropout)
        return crisp_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, ATTENTION_NAME, recording)
    model(**batch_of(name, "right"))
    assert rates and set(rates) == {0.37}, rates
    assert getattr(model.config, FAMILIES[model.config.model_type].attention_dropout_key) == 0.37


@pytest.mark.parametrize("name", NAMES)
def test_the_tiny_tokenizer_pads_on_the_familys_side_with_the_models_pad_id(name):
    tokenizer = load_tokenizer(f"tiny:{name}")
    assert tokenizer.pad_token_id is not None and _tiny(name).config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.padding_side == tiny_family(name).padding_side


def test_a_tokenizer_without_pad_token_pads_with_its_eos(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<eos>": 0, "a": 1, "b": 2}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<eos>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == 0


def deberta_v2():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, name_or_path="microsoft/deberta-v3-small")
    return DebertaV2ForSequenceClassification(config)


def test_a_model_whose_layers_never_call_the_registered_attention_is_refused():
    with pytest.raises(ValueError) as raised:
        sparsify(deberta_v2(), "topk", 0.8)
    message = str(raised.value)
    assert "\n" not in message
    assert "microsoft/deberta-v3-small" in message and "DebertaV2ForSequenceClassification" in message
    assert "deberta-v2" in message and "never call" in message


def test_the_probe_notices_a_layer_that_bypasses_the_registered_attention(monkeypatch):
    model = tiny("bert")
    layer = model.bert.encoder.layer[1].attention.self

    def own_softmax(hidden_states, attention_mask=None, **kwargs):  # as DeBERTa or MPNet compute it
        return hidden_states, None

    monkeypatch.setattr(layer, "forward", own_softmax)
    with pytest.raises(ValueError, match=r"never reached the registered attention in layers \[1\]"):
        sparsify(model, "topk", 0.8)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "modernbert"])
def test_kept_fraction_is_measured_on_what_each_query_sees(name):
    model = tiny(name)
    batch = batch_of(name, tiny_family(name).padding_side)
    real = batch["attention_mask"].bool()
    expected = []
    for layer_seen in (layer > 0 for layer in attentions(model, batch)):
        visible = layer_seen[:, 0].sum(dim=-1)[real]  # keys each real query sees
        expected.append((keep_count(visible, 0.5) / visible).mean().item())
    model = sparsify(model, "topk", 0.5)
    with torch.no_grad(), attention_diagnostics(model) as diagnostics:
        model(**batch)
    assert diagnostics.summary()["kept_fraction"] == pytest.approx(expected)
