"""What differs between model families, declared once per family.

Crisp sparsifies any architecture whose attention layers call transformers' registered attention
function (`ALL_ATTENTION_FUNCTIONS`); `crisp.attention.sparsify` checks that on a probe forward.
What the rest of Crisp needs to know about a family is one `Family` entry in `FAMILIES`, keyed by
the config's `model_type`:

- attention_dropout_key: the config key of the dropout on attention probabilities (what
  `dropout_control` raises);
- causal: whether a query sees only the keys at or before it (decoders);
- padding_side: the side its `tiny:` spec pads on (Hub tokenizers keep their own); the collator
  pads on the tokenizer's side;
- tiny: how to build the 2-layer random-init config of its `tiny:<family>` spec;
- the FLOP shape (`crisp.flops.Architecture.from_config` reads it from the config with `shape`).

Adding a family is one entry here plus its tests (tests/test_families.py runs every pattern on
every entry). This module imports nothing heavy: the Snakefile checks `tiny:` specs with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Shape of the tiny models: small enough to train a few steps in a test on two CPU cores.
TINY_LAYERS = 2
TINY_HIDDEN = 64
TINY_HEADS = 4
TINY_KEY_VALUE_HEADS = 2  # the decoders with grouped-query attention share each key/value head by 2
TINY_INTERMEDIATE = 128
TINY_MAX_POSITIONS = 512
# The local layers of the tiny ModernBERT and Qwen2 see this many keys around (before) a query,
# fewer than the test sentences hold, so that the window is part of what a query sees.
TINY_WINDOW = 8
# The tiny models borrow the bundled MiniLM (BERT uncased) vocabulary: [PAD] = 0, [CLS] = 101, [SEP] = 102.
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102


@dataclass(frozen=True)
class FlopShape:
    """How a family's layers differ from a BERT layer, for the FLOP account.

    mlp_projections: d x d_ff matrices in the MLP (2; 3 for gated MLPs: gate, up, down).
    head_tokens: "first" (a d x d dense layer then the classifier on the first token) or "all"
    (decoders: the classifier on every token, the last real one is read).
    shared_layers: one set of layer weights applied `layers` times (ALBERT).
    embedding_projection: the embeddings (config.embedding_size wide) are projected to the hidden
    size before the layers (ALBERT).
    """

    mlp_projections: int = 2
    head_tokens: str = "first"
    shared_layers: bool = False
    embedding_projection: bool = False


@dataclass(frozen=True)
class Family:
    model_type: str
    attention_dropout_key: str
    tiny: Callable[..., object]  # (vocab_size, **classification head) -> PretrainedConfig
    causal: bool = False
    padding_side: str = "right"
    flops: FlopShape = field(default_factory=FlopShape)
    hub_example: str = ""


def _encoder_sizes() -> dict:
    return {
        "num_hidden_layers": TINY_LAYERS,
        "hidden_size": TINY_HIDDEN,
        "num_attention_heads": TINY_HEADS,
        "intermediate_size": TINY_INTERMEDIATE,
        "max_position_embeddings": TINY_MAX_POSITIONS,
        "pad_token_id": PAD_ID,
    }


def _decoder_sizes() -> dict:
    return {
        "num_hidden_layers": TINY_LAYERS,
        "hidden_size": TINY_HIDDEN,
        "num_attention_heads": TINY_HEADS,
        "num_key_value_heads": TINY_KEY_VALUE_HEADS,
        "intermediate_size": TINY_INTERMEDIATE,
        "max_position_embeddings": TINY_MAX_POSITIONS,
        "pad_token_id": PAD_ID,
        "bos_token_id": CLS_ID,
        "eos_token_id": SEP_ID,
        "tie_word_embeddings": False,
    }


def _tiny_distilbert(vocab_size, **head):
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=vocab_size, n_layers=TINY_LAYERS, dim=TINY_HIDDEN, n_heads=TINY_HEADS,
        hidden_dim=TINY_INTERMEDIATE, max_position_embeddings=TINY_MAX_POSITIONS, pad_token_id=PAD_ID, **head,
    )


def _tiny_bert(vocab_size, **head):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, **_encoder_sizes(), **head)


def _roberta_like(config_class, vocab_size, **head):
    # RoBERTa numbers positions from pad_token_id + 1, so with pad id 0 the first token gets
    # position 1 and max_length tokens need max_length + 1 rows (+1 spare, as in roberta-base).
    sizes = {**_encoder_sizes(), "max_position_embeddings": TINY_MAX_POSITIONS + 2}
    return config_class(vocab_size=vocab_size, **sizes, type_vocab_size=1, bos_token_id=CLS_ID, eos_token_id=SEP_ID,
                        **head)


def _tiny_roberta(vocab_size, **head):
    from transformers import RobertaConfig

    return _roberta_like(RobertaConfig, vocab_size, **head)


def _tiny_xlm_roberta(vocab_size, **head):
    from transformers import XLMRobertaConfig

    return _roberta_like(XLMRobertaConfig, vocab_size, **head)


def _tiny_electra(vocab_size, **head):
    from transformers import ElectraConfig

    return ElectraConfig(vocab_size=vocab_size, embedding_size=TINY_HIDDEN, **_encoder_sizes(), **head)


def _tiny_albert(vocab_size, **head):
    from transformers import AlbertConfig

    # One group of shared layer weights, applied TINY_LAYERS times, as in albert-base-v2.
    return AlbertConfig(vocab_size=vocab_size, embedding_size=TINY_HIDDEN, num_hidden_groups=1, inner_group_num=1,
                        **_encoder_sizes(), bos_token_id=CLS_ID, eos_token_id=SEP_ID, **head)


def _tiny_modernbert(vocab_size, **head):
    from transformers import ModernBertConfig

    # Layer 0 global, layer 1 local (a window of TINY_WINDOW keys each side), as every third layer
    # of ModernBERT-base is global.
    return ModernBertConfig(vocab_size=vocab_size, **_encoder_sizes(), global_attn_every_n_layers=2,
                            local_attention=2 * TINY_WINDOW, cls_token_id=CLS_ID, sep_token_id=SEP_ID,
                            bos_token_id=CLS_ID, eos_token_id=SEP_ID, **head)


def _tiny_gpt2(vocab_size, **head):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_layer=TINY_LAYERS, n_embd=TINY_HIDDEN, n_head=TINY_HEADS,
                      n_inner=TINY_INTERMEDIATE, n_positions=TINY_MAX_POSITIONS, pad_token_id=PAD_ID,
                      bos_token_id=CLS_ID, eos_token_id=SEP_ID, **head)


def _tiny_llama(vocab_size, **head):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, **_decoder_sizes(), **head)


def _tiny_qwen2(vocab_size, **head):
    from transformers import Qwen2Config

    # The last layer uses a sliding window (Qwen2's optional use_sliding_window).
    return Qwen2Config(vocab_size=vocab_size, **_decoder_sizes(), use_sliding_window=True,
                       sliding_window=TINY_WINDOW, max_window_layers=TINY_LAYERS - 1, **head)


GATED = FlopShape(mlp_projections=3)
DECODER = FlopShape(head_tokens="all")
GATED_DECODER = FlopShape(mlp_projections=3, head_tokens="all")

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("distilbert", "attention_dropout", _tiny_distilbert, hub_example="distilbert-base-uncased"),
        Family("bert", "attention_probs_dropout_prob", _tiny_bert, hub_example="google-bert/bert-base-uncased"),
        Family("roberta", "attention_probs_dropout_prob", _tiny_roberta, hub_example="FacebookAI/roberta-base"),
        Family("electra", "attention_probs_dropout_prob", _tiny_electra,
               hub_example="google/electra-base-discriminator"),
        Family("albert", "attention_probs_dropout_prob", _tiny_albert,
               flops=FlopShape(shared_layers=True, embedding_projection=True), hub_example="albert/albert-base-v2"),
        Family("xlm-roberta", "attention_probs_dropout_prob", _tiny_xlm_roberta,
               hub_example="FacebookAI/xlm-roberta-base"),
        Family("modernbert", "attention_dropout", _tiny_modernbert, flops=GATED,
               hub_example="answerdotai/ModernBERT-base"),
        Family("gpt2", "attn_pdrop", _tiny_gpt2, causal=True, flops=DECODER, hub_example="openai-community/gpt2"),
        Family("llama", "attention_dropout", _tiny_llama, causal=True, padding_side="left", flops=GATED_DECODER,
               hub_example="HuggingFaceTB/SmolLM2-135M"),
        Family("qwen2", "attention_dropout", _tiny_qwen2, causal=True, padding_side="left", flops=GATED_DECODER,
               hub_example="Qwen/Qwen2.5-0.5B"),
    )
}
# `tiny:<name>` names: the model_type, except XLM-RoBERTa's dash, which a spec spells with an underscore.
TINY_NAMES: dict[str, str] = {model_type.replace("-", "_"): model_type for model_type in FAMILIES}


def family_of(model_type: str) -> Family | None:
    """The declared family of a config's model_type, or None for an architecture not declared here."""
    return FAMILIES.get(model_type)


def tiny_family(name: str) -> Family:
    """The family of a `tiny:<name>` spec (KeyError for an unknown name)."""
    return FAMILIES[TINY_NAMES[name]]
