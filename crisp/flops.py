"""An honest FLOP account for sparse attention in Hugging Face encoders and decoders.

The paper claims a "20 % FLOP reduction per layer". Whether that holds depends on what is counted,
so this module reports three views of the same sparse configuration, per encoder layer and for one
sequence of n tokens (d = hidden size, h = heads, d_ff = FFN width; a multiply-add is 2 FLOPs):

    component           dense forward FLOPs
    qkv_projections     6 n d²          three d x d projections
    qk_scores           2 n² d          Q Kᵀ, all heads together
    softmax             5 h n²          see SOFTMAX_FORWARD_FLOPS_PER_SCORE
    attention_values    2 n² d          softmax(Q Kᵀ) V
    output_projection   2 n d²
    ffn                 4 n d d_ff      two d x d_ff matmuls (16 n d² at d_ff = 4d)

Families differ (their shape is declared in crisp.families and read by `Architecture.from_config`):
grouped-query attention projects keys and values to kv_heads x head_dim < d (qkv_projections
2 n d² + 4 n d d_kv); a gated MLP has three d x d_ff projections (6 n d d_ff); ALBERT applies one
set of layer weights to every layer (same FLOPs per layer, shared parameters); a decoder's query i
sees keys 0 .. i and a sliding-window layer (ModernBERT's local layers, Qwen2's) only the keys in
its window. The score components above count every (query, key) pair, as our implementation and
eager attention compute them; the ideal views count only the pairs a query sees (see below).

Biases, layer norms, GELU, dropout, residual additions and the 1/sqrt(d_head) scale are left out:
each is O(n d) or O(h n²) element-wise work, and FlopCounterMode does not count them either. Nor
is the top-k selection itself (comparisons, not arithmetic), so as_executed is a lower bound.

Views of a sparse configuration (pattern, sparsity) in which every query keeps
k = keep_count(n, sparsity) keys (topk, random, window and block_topk all keep that many):

- as_executed: what our implementation does. Every pattern computes every score (top-k must see
  them all to choose), and A V is a dense matmul (topk and random scatter their k probabilities
  back into the full matrix), so nothing is saved: the count equals dense. topk and random run
  the softmax on their k kept scores only, but choosing them compares all n scores of the row,
  which costs at least as much as the softmax it spares; the count keeps the dense softmax.
- ideal_sparse: a kernel that skips masked entries. qk_scores, softmax and attention_values count
  sum over queries of k_i = keep_count(seen_i, sparsity), seen_i the keys query i sees (n in an
  encoder, i + 1 in a decoder, fewer in a sliding window), instead of n²; projections and FFN are
  untouched. Its reduction is against the dense model run by such a kernel (every seen key), so a
  decoder's causal mask does not count as a saving of sparsity. For top-k this is an upper bound (top-k itself needs
  every score); it is what a pattern known before the scores (block, local) could reach.
- paper_accounting: ideal_sparse restricted to the attention sub-layer (qkv_projections,
  qk_scores, softmax, attention_values, output_projection; FFN excluded). This is the only reading
  under which DistilBERT (d = 768, h = 12) at n = 512 and 80 % sparsity saves 20 %: 19.97 % without
  softmax, 20.26 % with our softmax count. The whole layer (ideal_sparse) saves about 8 % at
  n = 512 and about 2 % at n = 128, because the projections and the FFN dominate.

Patterns with their own costs or without a set sparsity:

- block_topk chooses key blocks from pooled scores: queries and keys are mean-pooled in blocks of
  `block_size` tokens (2 n d) and every query block scores every key block, 2 B² d with
  B = ceil(n / block_size). No gradient flows through the choice, so training counts it once. It
  is the `block_scores` component, in every view including as_executed, since it is work done on
  top of the dense scores. A query block keeps whole key blocks, so it may keep up to
  block_size - 1 keys more than k; the ideal views count k, as for topk.
- sparsemax and entmax15 are adaptive: how many keys a row keeps is known only after the scores.
  as_executed is the dense count (their normaliser sorts the row, which costs more than the
  softmax counted here); ideal_sparse and paper_accounting are null, and the kept fraction each
  run realises is in its metrics.json (diagnostics.kept_fraction).

Training = forward + backward. The backward of a matmul costs two matmuls of the same size (one
gradient for each operand), so 2x its forward; this holds for the weight matmuls in full
fine-tuning and for Q Kᵀ and A V, whose operands are both activations. The softmax backward is
counted separately (SOFTMAX_BACKWARD_FLOPS_PER_SCORE). A sparse kernel skips masked entries in
the backward too, so ideal_sparse scales the backward by k / n as well.

`measure_forward_flops` checks the analytic model against torch's FlopCounterMode on a real model.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

# keep_count is the rule the attention patterns follow, so the account counts the keys training
# keeps. torch, transformers and crisp.attention are imported only where a real model is counted
# (measure_forward_flops, _measurement_model): `crisp tables` reads FLOPs reports without them.
from crisp.patterns import PATTERNS_INFO, SPARSITY_ADAPTIVE, keep_count

if TYPE_CHECKING:
    import pandas
    import torch

# A numerically safe softmax per score: subtract the running row maximum (a compare and a
# subtraction), exponentiate, add to the row sum, divide by it. Counting exp as 1 FLOP is a
# convention; a hardware exp costs more, which only makes softmax's share larger.
SOFTMAX_FORWARD_FLOPS_PER_SCORE = 5
# dS = P * (dP - rowsum(P * dP)): a product, an addition to the row sum, a subtraction, a product.
SOFTMAX_BACKWARD_FLOPS_PER_SCORE = 4
# Backward of C = A B computes dA = dC Bᵀ and dB = Aᵀ dC: two matmuls of the forward's size.
MATMUL_BACKWARD_PER_FORWARD = 2

COMPONENTS = (
    "qkv_projections",
    "qk_scores",
    "softmax",
    "attention_values",
    "output_projection",
    "ffn",
)
ATTENTION_SUBLAYER = tuple(c for c in COMPONENTS if c != "ffn")
# Extra component of block_topk: pooled block scores, computed to choose the kept blocks.
BLOCK_SCORES = "block_scores"
DEFAULT_BLOCK_SIZE = PATTERNS_INFO["block_topk"].options["block_size"].default
VIEWS = ("as_executed", "ideal_sparse", "paper_accounting")
ADAPTIVE_NOTE = (
    "adaptive pattern: the kept fraction is not set up front; as_executed is the dense count and the "
    "realised kept fraction is in each run's metrics.json (diagnostics.kept_fraction)"
)
PASSES = ("forward", "training")
ROW_COLUMNS = (
    "experiment",
    "pattern",
    "sparsity",
    "seq_len",
    "view",
    "component",
    "pass",
    "dense_flops",
    "flops",
    "reduction",
)

# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Architecture:
    """The numbers of a transformer classifier that its FLOPs depend on.

    key_value_heads: heads of the key and value projections (None: as many as `heads`).
    mlp_projections: d x d_ff matrices in the MLP (2; 3 in a gated MLP).
    causal: a query sees only the keys at or before it.
    windows: per layer, None (the query sees every key) or the sliding window w of that layer: a
      causal query i sees keys i - w < j <= i, a bidirectional one keys |i - j| <= w. Empty: no window.
    head_tokens: "first" (a d x d layer and the classifier on the first token) or "all" (the
      decoders' classifier on every token).
    embedding_projection: the embedding width projected to d before the layers (ALBERT), or 0.
    """

    layers: int
    hidden: int
    heads: int
    intermediate: int
    key_value_heads: int | None = None
    mlp_projections: int = 2
    causal: bool = False
    windows: tuple[int | None, ...] = ()
    head_tokens: str = "first"
    embedding_projection: int = 0

    # DistilBertConfig names first (dim, hidden_dim, ...), then BERT / RoBERTa / MiniLM names, then
    # GPT-2's. hidden_dim must be tried before intermediate_size and dim before hidden_size:
    # DistilBERT's "hidden_dim" is the FFN width, not the model width.
    _CONFIG_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {
        "layers": ("n_layers", "num_hidden_layers", "n_layer"),
        "hidden": ("dim", "hidden_size", "n_embd"),
        "heads": ("n_heads", "num_attention_heads", "n_head"),
        "intermediate": ("hidden_dim", "intermediate_size", "n_inner"),
    }

    @property
    def key_value_width(self) -> int:
        """kv_heads x head_dim: the width of the key and value projections."""
        return self.hidden * (self.key_value_heads or self.heads) // self.heads

    @classmethod
    def from_config(cls, config) -> Architecture:
        """Read the numbers from a transformers config; the family's shape from crisp.families."""
        from crisp.families import FlopShape, family_of

        values = {}
        for field, names in cls._CONFIG_NAMES.items():
            found = [getattr(config, name) for name in names if isinstance(getattr(config, name, None), int)]
            if field == "intermediate" and not found and config.model_type == "gpt2":
                found = [4 * values["hidden"]]  # GPT-2's n_inner = None means 4 d
            if not found:
                raise ValueError(
                    f"{type(config).__name__} has none of the attributes {' / '.join(names)} "
                    f"needed for the {field} of the model; crisp.flops reads the families of "
                    f"crisp.families. Pass an Architecture(layers, hidden, heads, intermediate) instead."
                )
            values[field] = found[0]
        family = family_of(config.model_type)
        shape = family.flops if family is not None else FlopShape()
        kv_heads = getattr(config, "num_key_value_heads", None)
        embedding = getattr(config, "embedding_size", None)
        return cls(
            **values,
            key_value_heads=kv_heads if isinstance(kv_heads, int) and kv_heads != values["heads"] else None,
            mlp_projections=shape.mlp_projections,
            causal=family.causal if family is not None else False,
            windows=_layer_windows(config, values["layers"]),
            head_tokens=shape.head_tokens,
            embedding_projection=embedding if shape.embedding_projection and isinstance(embedding, int) else 0,
        )


def _layer_windows(config, layers: int) -> tuple[int | None, ...]:
    """Per layer, the sliding window the model's mask applies (transformers' layer_types), if any."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not isinstance(window, int):
        return ()
    if layer_types:
        windows = tuple(window if kind == "sliding_attention" else None for kind in layer_types[:layers])
    else:
        windows = (window,) * layers  # Mistral: every layer
    return windows if any(w is not None for w in windows) else ()


def seen_keys(arch: Architecture, seq_len: int, layer: int = 0) -> list[int]:
    """How many keys each query of a sequence of seq_len real tokens sees in `layer`."""
    window = arch.windows[layer] if arch.windows else None
    seen = []
    for i in range(seq_len):
        first, last = 0, (i if arch.causal else seq_len - 1)
        if window is not None:
            first = max(0, i - window + 1) if arch.causal else max(0, i - window)
            last = last if arch.causal else min(seq_len - 1, i + window)
        seen.append(last - first + 1)
    return seen


# --------------------------------------------------------------------------- analytic model


def layer_flops(arch: Architecture, seq_len: int, keys_per_query: float | None = None) -> dict:
    """Forward and training FLOPs of one layer for one sequence, by component.

    keys_per_query (a mean over queries) < seq_len gives the count of a kernel that computes only
    the kept scores. Returns {"forward": {component: flops}, "training": {component: flops}}.
    """
    n, d = seq_len, arch.hidden
    k = seq_len if keys_per_query is None else keys_per_query
    pairs = round(n * k)  # (query, key) pairs per head
    scores = arch.heads * pairs
    forward = {
        "qkv_projections": 2 * n * d * d + 2 * 2 * n * d * arch.key_value_width,
        "qk_scores": 2 * pairs * d,
        "softmax": SOFTMAX_FORWARD_FLOPS_PER_SCORE * scores,
        "attention_values": 2 * pairs * d,
        "output_projection": 2 * n * d * d,
        "ffn": arch.mlp_projections * 2 * n * d * arch.intermediate,
    }
    training = {component: flops * (1 + MATMUL_BACKWARD_PER_FORWARD) for component, flops in forward.items()}
    training["softmax"] = (SOFTMAX_FORWARD_FLOPS_PER_SCORE + SOFTMAX_BACKWARD_FLOPS_PER_SCORE) * scores
    return {"forward": forward, "training": training}


def _reduction(flops: float, dense_flops: float) -> float:
    return 1.0 - flops / dense_flops if dense_flops else 0.0


def _view_entry(components: dict, dense_components: dict) -> dict:
    total, dense_total = sum(components.values()), sum(dense_components.values())
    return {
        "components": components,
        "total": total,
        "dense_total": dense_total,
        "reduction": _reduction(total, dense_total),
    }


def block_scores_flops(arch: Architecture, seq_len: int, block_size: int) -> int:
    """Forward FLOPs of block_topk's choice: mean-pool queries and keys, score block pairs."""
    blocks = math.ceil(seq_len / block_size)
    return 2 * blocks * blocks * arch.hidden + 2 * seq_len * arch.hidden


def is_adaptive(pattern: str, sparsity: float | None) -> bool:
    """sparsemax / entmax15 (and a sparse pattern given no sparsity): kept keys not known up front."""
    info = PATTERNS_INFO.get(pattern)
    if info is not None:
        return info.sparsity == SPARSITY_ADAPTIVE
    return pattern != "dense" and sparsity is None


def layer_account(arch: Architecture, seq_len: int, pattern: str, sparsity: float | None, options=None) -> dict:
    """Every view of one layer at one sequence length.

    Returns {"seq_len", "keys_per_query", "keep_fraction", "dense": {pass: {component: flops}},
    "views": {view: {pass: {"components", "total", "dense_total", "reduction"}} or None}}.
    Adaptive patterns (sparsity None) have keys_per_query, keep_fraction and the ideal views None.
    """
    options = options or {}
    adaptive = is_adaptive(pattern, sparsity)
    if not adaptive and sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity} (pattern {pattern!r})")
    dense = layer_flops(arch, seq_len)
    # Every sparse pattern with a set sparsity (topk, random, window, block_topk) keeps
    # keep_count(seen, sparsity) keys of the `seen` keys of each query; a mean over the layers.
    layers = range(len(arch.windows) if arch.windows else 1)
    seen = [seen_keys(arch, seq_len, layer) for layer in layers]
    seen_mean = sum(map(sum, seen)) / (len(seen) * seq_len)
    if pattern == "dense":
        keys = seen_mean
    elif adaptive:
        keys = None
    else:
        keys = sum(keep_count(v, sparsity) for row in seen for v in row) / (len(seen) * seq_len)
    if keys is not None and keys == int(keys):
        keys = int(keys)
    sparse = layer_flops(arch, seq_len, keys_per_query=keys)
    dense_seen = layer_flops(arch, seq_len, keys_per_query=seen_mean)
    extra = {"forward": {}, "training": {}}
    if pattern == "block_topk":
        block = block_scores_flops(arch, seq_len, int(options.get("block_size", DEFAULT_BLOCK_SIZE)))
        extra = {"forward": {BLOCK_SCORES: block}, "training": {BLOCK_SCORES: block}}
    views = {"as_executed": {}, "ideal_sparse": {}, "paper_accounting": {}}
    for pass_name in PASSES:
        dense_pass, sparse_pass = dense[pass_name], {**sparse[pass_name], **extra[pass_name]}
        ideal_dense = dense_seen[pass_name]  # the dense model on a kernel that skips unseen keys
        views["as_executed"][pass_name] = _view_entry({**dense_pass, **extra[pass_name]}, dense_pass)
        views["ideal_sparse"][pass_name] = _view_entry(dict(sparse_pass), ideal_dense)
        views["paper_accounting"][pass_name] = _view_entry(
            {c: sparse_pass[c] for c in sparse_pass if c != "ffn"},
            {c: ideal_dense[c] for c in ATTENTION_SUBLAYER},
        )
    if adaptive:
        views["ideal_sparse"] = views["paper_accounting"] = None
    return {
        "seq_len": seq_len,
        "keys_per_query": keys,
        "keep_fraction": None if keys is None else keys / seen_mean,
        "dense": dense,
        "views": views,
    }


def classification_head_flops(arch: Architecture, num_labels: int) -> int:
    """Forward FLOPs of the sequence-classification head on the first token.

    DistilBERT (pre_classifier + classifier), BERT (pooler + classifier), RoBERTa (dense +
    out_proj), ELECTRA, ALBERT and ModernBERT all apply a d x d and a d x num_labels layer to one
    token. The decoders' classifier (GPT-2, Llama, Qwen2: `score`) is counted per token by
    `analytic_forward_matmul_flops`, since it runs on every token.
    """
    if arch.head_tokens == "all":
        return 2 * arch.hidden * num_labels
    return 2 * arch.hidden * arch.hidden + 2 * arch.hidden * num_labels


def analytic_forward_matmul_flops(arch: Architecture, seq_len: int, num_labels: int) -> dict:
    """What FlopCounterMode should see for one sequence: matmuls only, no softmax."""
    forward = layer_flops(arch, seq_len)["forward"]
    per_layer = sum(forward.values()) - forward["softmax"]
    head = classification_head_flops(arch, num_labels) * (seq_len if arch.head_tokens == "all" else 1)
    head += 2 * seq_len * arch.embedding_projection * arch.hidden  # ALBERT's embedding projection
    return {"per_layer": per_layer, "head": head, "total": arch.layers * per_layer + head}


def training_flops_per_example(model_config_or_arch, seq_len: int, num_labels: int) -> int:
    """Dense training FLOPs of one example of seq_len tokens: 3 x the analytic forward matmuls.

    A matmul's backward costs two forwards (MATMUL_BACKWARD_PER_FORWARD), the assumption that
    test_training_costs_three_forwards_of_matmuls checks against FlopCounterMode.
    """
    arch = _architecture(model_config_or_arch)
    forward = analytic_forward_matmul_flops(arch, seq_len, num_labels)["total"]
    return (1 + MATMUL_BACKWARD_PER_FORWARD) * forward


def _architecture(model_config_or_arch) -> Architecture:
    if isinstance(model_config_or_arch, Architecture):
        return model_config_or_arch
    return Architecture.from_config(model_config_or_arch)


# --------------------------------------------------------------------------- measured counter


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q Kᵀ plus A V of scaled_dot_product_attention, from (batch, heads, tokens, head_dim) shapes."""
    batch, heads, queries, head_dim = query_shape
    keys, value_dim = key_shape[2], value_shape[3]
    return 2 * batch * heads * queries * keys * head_dim + 2 * batch * heads * queries * keys * value_dim


# The layers as FlopCounterMode names them: BERT-like ...layer.<i>, GPT-2 ...h.<i>, Llama and
# ModernBERT ...layers.<i>, ALBERT ...albert_layers.<i> (one shared layer, run once per layer).
_ENCODER_LAYER_NAME = re.compile(r"\.(?:layer|layers|h|albert_layers)\.(\d+)$")


def measure_forward_flops(model: torch.nn.Module, seq_len: int, batch_size: int = 1) -> dict:
    """Count the FLOPs of one forward pass of `model` with torch's FlopCounterMode.

    The input is seq_len real tokens (no padding) per sequence. Counts are per sequence. The
    counter sees matmuls (including CPU SDPA, through _sdpa_flops) but not softmax,
    layer norm or other element-wise work; compare with analytic_forward_matmul_flops.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = model.config
    device = next(model.parameters()).device
    # Ids from 1 on: no token is the pad id 0 of the tiny models (a decoder reads the last non-pad one).
    ids = torch.arange(batch_size * seq_len, device=device) % (config.vocab_size - 1) + 1
    input_ids = ids.view(batch_size, seq_len)
    attention_mask = torch.ones_like(input_ids)
    # FlopCounterMode knows the CUDA SDPA kernels but counts the CPU flash kernel as 0 FLOPs.
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    counter = FlopCounterMode(display=False, custom_mapping=cpu_sdpa)
    with torch.no_grad(), counter:
        model(input_ids=input_ids, attention_mask=attention_mask)

    by_module = counter.get_flop_counts()
    layers = {}
    for name, counts in by_module.items():
        match = _ENCODER_LAYER_NAME.search(name)
        if match:
            layers[int(match.group(1))] = sum(counts.values()) // batch_size
    if not layers:
        raise ValueError(
            f"no encoder layers (modules named '...layer.<i>') found in {type(model).__name__}; "
            f"measure_forward_flops supports DistilBERT, BERT, RoBERTa and MiniLM models"
        )
    per_layer = [layers[i] for i in sorted(layers)]
    layer_count = Architecture.from_config(config).layers
    if len(per_layer) < layer_count:  # shared layer weights (ALBERT): one module counted for every layer
        per_layer = [sum(per_layer) // layer_count] * layer_count
    total = counter.get_total_flops() // batch_size
    return {
        "seq_len": seq_len,
        "batch_size": batch_size,
        "attention_implementation": getattr(config, "_attn_implementation", None),
        "num_labels": config.num_labels,
        "per_layer": per_layer,
        "encoder": sum(per_layer),
        "total": total,
        "by_operation": {str(op): flops // batch_size for op, flops in by_module.get("Global", {}).items()},
        "counter": "torch.utils.flop_counter.FlopCounterMode: matmuls only, per sequence",
    }


# --------------------------------------------------------------------------- report


def _assumptions() -> dict:
    return {
        "flops_per_multiply_add": 2,
        "softmax_forward_flops_per_score": SOFTMAX_FORWARD_FLOPS_PER_SCORE,
        "softmax_backward_flops_per_score": SOFTMAX_BACKWARD_FLOPS_PER_SCORE,
        "matmul_backward_per_forward": MATMUL_BACKWARD_PER_FORWARD,
        "not_counted": (
            "biases, layer norms, activations, dropout, residuals, score scaling, top-k selection, embeddings"
        ),
        "as_executed": (
            "Q K^T and A V are dense matmuls, the softmax counted dense (topk/random normalise k scores per "
            "row after a selection over all n): no saving (block_topk adds block_scores)"
        ),
        "ideal_sparse": "a kernel computing only the kept scores: qk_scores, softmax, attention_values x k/n",
        "paper_accounting": "ideal_sparse over the attention sub-layer only (FFN excluded)",
        "block_scores": "block_topk: mean-pooled query blocks x key blocks, 2 B^2 d + pooling 2 n d, no backward",
        "adaptive": ADAPTIVE_NOTE,
        "apply": "the views describe a sparse forward; with apply 'train' evaluation runs dense",
        "training": "forward + backward",
    }


def profile_experiment(
    config_obj_or_arch,
    experiment_name: str,
    pattern: str,
    sparsity: float | None,
    sequence_lengths,
    model_name: str = "",
    measured: dict | None = None,
    options: dict | None = None,
) -> dict:
    """The JSON-able FLOP report of one experiment (results/flops/<model>/<experiment>.json).

    Per sequence length: per-layer FLOPs of every view, pass and component next to the dense
    reference, and whole-model totals (encoder layers x per layer; embeddings and classifier head
    are not part of the layer account). Views that do not apply (the ideal views of an adaptive
    pattern) are null, with the reason under "note". `measured`, from measure_forward_flops, adds a
    section comparing the counter with the analytic matmul count at the measured length.
    """
    arch = _architecture(config_obj_or_arch)
    by_seq_len = []
    for seq_len in sequence_lengths:
        account = layer_account(arch, int(seq_len), pattern, sparsity, options)
        account["model_totals"] = {
            view: None if passes is None else {name: arch.layers * entry["total"] for name, entry in passes.items()}
            for view, passes in account["views"].items()
        }
        account["model_totals"]["dense"] = {
            pass_name: arch.layers * sum(components.values()) for pass_name, components in account["dense"].items()
        }
        by_seq_len.append(account)
    report = {
        "experiment": experiment_name,
        "model": model_name,
        "pattern": pattern,
        "sparsity": sparsity,
        "options": dict(options or {}),
        "note": ADAPTIVE_NOTE if is_adaptive(pattern, sparsity) else None,
        "architecture": {**asdict(arch), "windows": list(arch.windows)},
        "assumptions": _assumptions(),
        "by_seq_len": by_seq_len,
    }
    if measured is not None:
        analytic = analytic_forward_matmul_flops(arch, measured["seq_len"], measured["num_labels"])
        report["measured"] = {
            **measured,
            "view": "as_executed",
            "analytic_matmul_per_layer": analytic["per_layer"],
            "analytic_matmul_total": analytic["total"],
            "relative_difference_total": measured["total"] / analytic["total"] - 1.0,
        }
    return report


def flops_rows(report: dict) -> list[dict]:
    """Long-format rows of results/tables/flops.csv, one per (seq_len, view, component, pass).

    Views that are null in the report (the ideal views of an adaptive pattern) give no rows.
    """
    rows = []
    for account in report["by_seq_len"]:
        for view in VIEWS:
            if account["views"][view] is None:
                continue
            for pass_name in PASSES:
                entry = account["views"][view][pass_name]
                dense = account["dense"][pass_name]
                named = [(c, flops, dense.get(c, 0)) for c, flops in entry["components"].items()]
                named.append(("total", entry["total"], entry["dense_total"]))
                for component, flops, dense_flops in named:
                    rows.append(
                        {
                            "experiment": report["experiment"],
                            "pattern": report["pattern"],
                            "sparsity": report["sparsity"],
                            "seq_len": account["seq_len"],
                            "view": view,
                            "component": component,
                            "pass": pass_name,
                            "dense_flops": dense_flops,
                            "flops": flops,
                            "reduction": _reduction(flops, dense_flops),
                        }
                    )
    return rows


def flops_table(reports) -> pandas.DataFrame:
    import pandas

    rows = [row for report in reports for row in flops_rows(report)]
    return pandas.DataFrame(rows, columns=list(ROW_COLUMNS))


# --------------------------------------------------------------------------- entry point


def _measurement_model(model_config, attention: dict):
    """A random-init classification model that attends as the experiment trains (crisp.train)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from crisp.attention import sparsify

    torch.manual_seed(0)  # weights do not change the count; a seed keeps the run reproducible
    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(model_config)).eval()
    return sparsify(
        model,
        attention["pattern"],
        attention.get("sparsity"),
        apply=attention.get("apply", "train_and_eval"),
        **(attention.get("options") or {}),
    )


def run_profile(settings: dict, out) -> dict:
    """Write the FLOP report of one (model, experiment) to `out` and return it.

    settings is crisp.settings.flops_settings: {"model": spec, "model_revision": commit or None,
    "experiment": name, "attention": {pattern, sparsity, options, apply, attention_dropout},
    "profiling": {"sequence_lengths", "measure_seq_len"}}. With measure_seq_len, a random-init model with the
    experiment's attention is counted by FlopCounterMode at that length.
    """
    from crisp.modeling import load_model_config

    for key in ("model", "experiment", "attention", "profiling"):
        if key not in settings:
            raise ValueError(f"FLOP settings have no {key!r} key; got {sorted(settings)}")
    attention, profiling = settings["attention"], settings["profiling"]
    if "pattern" not in attention:
        raise ValueError(f"experiment {settings['experiment']!r} has no 'pattern' key; got {sorted(attention)}")
    pattern, sparsity = attention["pattern"], attention.get("sparsity")
    sparsity = None if sparsity is None else float(sparsity)
    model_config = load_model_config(settings["model"], revision=settings.get("model_revision"))
    measured = None
    if profiling.get("measure_seq_len") is not None:
        model = _measurement_model(model_config, attention)
        measured = measure_forward_flops(model, int(profiling["measure_seq_len"]))
    report = profile_experiment(
        model_config,
        settings["experiment"],
        pattern,
        sparsity,
        profiling["sequence_lengths"],
        model_name=settings["model"],
        measured=measured,
        options=attention.get("options") or {},
    )
    report["apply"] = attention.get("apply")
    report["attention_dropout"] = attention.get("attention_dropout")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report
