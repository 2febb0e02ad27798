"""Model specs: bundled and tiny models offline, local folders, slugs, and failing fast on the Hub."""

import pytest
import torch

from crisp import hub, modeling
from crisp.families import FAMILIES, TINY_NAMES
from crisp.modeling import (
    HubUnreachableError,
    load_model,
    load_model_config,
    load_tokenizer,
    model_slug,
    resolve_spec,
)

UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def unreachable_hub(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_ENDPOINT)
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)


def classify(model, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, return_tensors="pt", return_token_type_ids=False)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_resolve_spec_tells_the_kinds_apart(tmp_path):
    assert resolve_spec("distilbert-base-uncased").kind == "hub"
    assert resolve_spec("google-bert/bert-base-uncased").kind == "hub"
    assert resolve_spec("bundled:minilm").kind == "bundled"
    assert resolve_spec("tiny:roberta") == modeling.ModelSpec("tiny:roberta", "tiny", "roberta")
    assert resolve_spec(str(tmp_path)).kind == "local"


@pytest.mark.parametrize("spec", ["./no-such-model", "~/no-such-model", "/no/such/model", "a/b/c"])
def test_a_missing_local_directory_is_a_clear_error(spec):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_spec(spec)


@pytest.mark.parametrize("spec", ["tiny:gpt3", "bundled:bert"])
def test_unknown_builtin_models_list_the_choices(spec):
    with pytest.raises(ValueError, match="Available"):
        resolve_spec(spec)


def test_model_slug_is_filesystem_safe(tmp_path):
    assert model_slug("bundled:minilm") == "bundled-minilm"
    assert model_slug("tiny:bert") == "tiny-bert"
    assert model_slug("distilbert-base-uncased") == "distilbert-base-uncased"
    assert model_slug("google-bert/bert-base-uncased") == "google-bert--bert-base-uncased"
    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    first.mkdir(parents=True), second.mkdir(parents=True)
    assert model_slug(str(first)).startswith("model-")
    assert "/" not in model_slug(str(first))
    assert model_slug(str(first)) != model_slug(str(second))  # same basename, different folders


def sentence_similarities(model, tokenizer, sentences):
    """Cosine similarities of mean-pooled encoder outputs (how all-MiniLM-L6-v2 embeds sentences)."""
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return embeddings @ embeddings.T


def test_bundled_minilm_loads_pretrained_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer("bundled:minilm")
    model = load_model("bundled:minilm", num_labels=2, id2label={0: "negative", 1: "positive"})
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert model.config.id2label == {0: "negative", 1: "positive"}
    logits = classify(model, tokenizer, ["a charming film .", "dull and far too long ."])
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    # Pretrained weights tell a paraphrase from an unrelated sentence (about 0.66 vs 0.09); randomly
    # initialised ones give every pair about 0.95.
    sentences = ["a cat sits on the mat .", "a kitten is resting on a rug .", "the stock market fell sharply ."]
    similar = sentence_similarities(model, tokenizer, sentences)
    assert similar[0, 1] - similar[0, 2] > 0.3, similar


@pytest.mark.parametrize("architecture", list(TINY_NAMES))
def test_tiny_models_are_small_and_pad_consistently(architecture):
    spec = f"tiny:{architecture}"
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)
    config = model.config
    assert config.model_type == TINY_NAMES[architecture]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 4)
    assert config.vocab_size == len(tokenizer) and config.pad_token_id == tokenizer.pad_token_id == 0
    short, long = "good .", "a long and rather tedious film , but the ending is lovely ."
    together = classify(model, tokenizer, [short, long])
    alone = classify(model, tokenizer, [short])
    assert torch.isfinite(together).all()
    # Padding must change nothing: pad id, attention mask and position ids agree.
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)


def test_tiny_model_weights_follow_the_torch_seed():
    def weights(seed):
        torch.manual_seed(seed)
        return load_model("tiny:bert").state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["classifier.weight"], other["classifier.weight"])


def test_model_config_carries_the_classification_head():
    config = load_model_config("tiny:distilbert", num_labels=3, id2label={0: "neg", 1: "neutral", 2: "pos"})
    assert config.num_labels == 3 and config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    with pytest.raises(ValueError, match="num_labels"):
        load_model_config("tiny:bert", num_labels=2, id2label={0: "only"})


def test_a_saved_model_folder_loads_as_a_local_spec(tmp_path):
    torch.manual_seed(0)
    saved = load_model("tiny:bert")
    saved.save_pretrained(tmp_path / "my-model")
    load_tokenizer("tiny:bert").save_pretrained(tmp_path / "my-model")
    loaded = load_model(str(tmp_path / "my-model"))
    encoder_weight = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(saved.state_dict()[encoder_weight], loaded.state_dict()[encoder_weight])
    assert len(load_tokenizer(str(tmp_path / "my-model"))) == len(load_tokenizer("tiny:bert"))


def test_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_config(str(tmp_path))


@pytest.mark.parametrize("loader", [load_tokenizer, load_model_config, load_model])
def test_an_uncached_hub_model_fails_fast_with_offline_advice(unreachable_hub, loader):
    with pytest.raises(HubUnreachableError) as raised:
        loader("crisp-tests/model-that-is-not-cached")
    message = str(raised.value)
    assert "crisp-tests/model-that-is-not-cached" in message
    assert "cannot be reached" in message and UNREACHABLE_ENDPOINT in message
    assert "not in the local Hugging Face cache" in message
    assert "models: [bundled:minilm]" in message and "models: [/path/to/dir]" in message
    assert "snakemake --cores all --configfile config/demo.yaml" in message
    assert isinstance(raised.value, RuntimeError)


def test_offline_mode_is_respected_without_probing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: pytest.fail("probed the Hub"))
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE=1"):
        load_model_config("distilbert-base-uncased")


def test_a_cached_hub_model_loads_without_the_hub(unreachable_hub, tmp_path, monkeypatch):
    # Lay out a Hugging Face cache entry by hand, as a download would have left it.
    torch.manual_seed(0)
    snapshot = tmp_path / "hub" / "models--crisp-tests--tiny-bert" / "snapshots" / ("0" * 40)
    load_model("tiny:bert").save_pretrained(snapshot)
    load_tokenizer("tiny:bert").save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub.huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: pytest.fail("probed the Hub"))

    model = load_model("crisp-tests/tiny-bert")
    tokenizer = load_tokenizer("crisp-tests/tiny-bert")
    assert model.config.hidden_size == 64 and len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("architecture", ["distilbert", "bert", "roberta"])
def test_attention_dropout_sets_the_architectures_own_key_and_nothing_else(architecture):
    # Every family's key reaching its attention: tests/test_families.py.
    spec = f"tiny:{architecture}"
    key = FAMILIES[architecture].attention_dropout_key
    default = load_model_config(spec).to_dict()
    raised = load_model_config(spec, attention_dropout=0.37).to_dict()
    assert raised[key] == 0.37 != default[key]
    assert {name for name in raised if raised[name] != default.get(name)} == {key}
    assert load_model_config(spec, attention_dropout=None).to_dict() == default

    # the model built from it drops attention probabilities at that rate, and hidden states as before
    torch.manual_seed(0)
    model = load_model(spec, attention_dropout=0.37)
    rates = {module.p for name, module in model.named_modules()
             if isinstance(module, torch.nn.Dropout) and "attention" in name and "output" not in name}
    assert rates == {0.37}, rates


def test_attention_dropout_out_of_range_is_refused():
    with pytest.raises(ValueError, match="attention_dropout"):
        load_model_config("tiny:bert", attention_dropout=1.0)
