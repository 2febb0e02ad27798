"""An honest FLOP account for sparse attention in BERT-family encoders.

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

Biases, layer norms, GELU, dropout, residual additions and the 1/sqrt(d_head) scale are left out:
each is O(n d) or O(h n²) element-wise work, and FlopCounterMode does not count them either. Nor
is the top-k selection itself (comparisons, not arithmetic), so as_executed is a lower bound.

Views of a sparse configuration (pattern, sparsity) in which every query keeps
k = keep_count(n, sparsity) keys:

- as_executed: what our masked implementation does. Top-k must see every score to choose the
  kept ones, and the masked scores still go through the dense softmax and A V matmul, so nothing
  is saved: the count equals dense.
- ideal_sparse: a kernel that skips masked entries. qk_scores, softmax and attention_values scale
  by k / n; projections and FFN are untouched. For top-k this is an upper bound (top-k itself needs
  every score); it is what a pattern known before the scores (block, local) could reach.
- paper_accounting: ideal_sparse restricted to the attention sub-layer (qkv_projections,
  qk_scores, softmax, attention_values, output_projection; FFN excluded). This is the only reading
  under which DistilBERT (d = 768, h = 12) at n = 512 and 80 % sparsity saves 20 %: 19.97 % without
  softmax, 20.26 % with our softmax count. The whole layer (ideal_sparse) saves about 8 % at
  n = 512 and about 2 % at n = 128, because the projections and the FFN dominate.

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
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# The same rule as the attention patterns, so the account counts the keys training keeps.
from crisp.attention import keep_count, sparsify

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
VIEWS = ("as_executed", "ideal_sparse", "paper_accounting")
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
    """The numbers of a BERT-family encoder that its FLOPs depend on."""

    layers: int
    hidden: int
    heads: int
    intermediate: int

    # DistilBertConfig names first (dim, hidden_dim, ...), then BERT / RoBERTa / MiniLM names.
    # hidden_dim must be tried before intermediate_size and dim before hidden_size: DistilBERT's
    # "hidden_dim" is the FFN width, not the model width.
    _CONFIG_NAMES = {
        "layers": ("n_layers", "num_hidden_layers"),
        "hidden": ("dim", "hidden_size"),
        "heads": ("n_heads", "num_attention_heads"),
        "intermediate": ("hidden_dim", "intermediate_size"),
    }

    @classmethod
    def from_config(cls, config) -> "Architecture":
        """Read the numbers from a transformers config (DistilBERT, BERT, RoBERTa, MiniLM)."""
        values = {}
        for field, names in cls._CONFIG_NAMES.items():
            found = [getattr(config, name) for name in names if isinstance(getattr(config, name, None), int)]
            if not found:
                raise ValueError(
                    f"{type(config).__name__} has none of the attributes {' / '.join(names)} "
                    f"needed for the {field} of the encoder; crisp.flops supports DistilBERT, BERT, "
                    f"RoBERTa and MiniLM configs. Pass an Architecture(layers, hidden, heads, "
                    f"intermediate) instead."
                )
            values[field] = found[0]
        return cls(**values)


# --------------------------------------------------------------------------- analytic model


def layer_flops(arch: Architecture, seq_len: int, keys_per_query: int | None = None) -> dict:
    """Forward and training FLOPs of one encoder layer for one sequence, by component.

    keys_per_query < seq_len gives the count of a kernel that computes only the kept scores.
    Returns {"forward": {component: flops}, "training": {component: flops}}.
    """
    n, d = seq_len, arch.hidden
    k = seq_len if keys_per_query is None else keys_per_query
    scores = arch.heads * n * k
    forward = {
        "qkv_projections": 3 * 2 * n * d * d,
        "qk_scores": 2 * n * k * d,
        "softmax": SOFTMAX_FORWARD_FLOPS_PER_SCORE * scores,
        "attention_values": 2 * n * k * d,
        "output_projection": 2 * n * d * d,
        "ffn": 2 * 2 * n * d * arch.intermediate,
    }
    training = {
        component: flops * (1 + MATMUL_BACKWARD_PER_FORWARD) for component, flops in forward.items()
    }
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


def layer_account(arch: Architecture, seq_len: int, pattern: str, sparsity: float) -> dict:
    """Every view of one layer at one sequence length.

    Returns {"seq_len", "keys_per_query", "keep_fraction", "dense": {pass: {component: flops}},
    "views": {view: {pass: {"components", "total", "dense_total", "reduction"}}}}.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity} (pattern {pattern!r})")
    # Every sparse pattern (topk, random, ...) keeps keep_count(n, sparsity) keys per query.
    keys = seq_len if pattern == "dense" else keep_count(seq_len, sparsity)
    dense = layer_flops(arch, seq_len)
    sparse = layer_flops(arch, seq_len, keys_per_query=keys)
    views = {"as_executed": {}, "ideal_sparse": {}, "paper_accounting": {}}
    for pass_name in PASSES:
        dense_pass, sparse_pass = dense[pass_name], sparse[pass_name]
        views["as_executed"][pass_name] = _view_entry(dict(dense_pass), dense_pass)
        views["ideal_sparse"][pass_name] = _view_entry(dict(sparse_pass), dense_pass)
        views["paper_accounting"][pass_name] = _view_entry(
            {c: sparse_pass[c] for c in ATTENTION_SUBLAYER},
            {c: dense_pass[c] for c in ATTENTION_SUBLAYER},
        )
    return {
        "seq_len": seq_len,
        "keys_per_query": keys,
        "keep_fraction": keys / seq_len,
        "dense": dense,
        "views": views,
    }


def classification_head_flops(arch: Architecture, num_labels: int) -> int:
    """Forward FLOPs of the sequence-classification head on the first token.

    DistilBERT (pre_classifier + classifier), BERT (pooler + classifier) and RoBERTa
    (dense + out_proj) all apply a d x d and a d x num_labels layer to one token.
    """
    return 2 * arch.hidden * arch.hidden + 2 * arch.hidden * num_labels


def analytic_forward_matmul_flops(arch: Architecture, seq_len: int, num_labels: int) -> dict:
    """What FlopCounterMode should see for one sequence: matmuls only, no softmax."""
    forward = layer_flops(arch, seq_len)["forward"]
    per_layer = sum(forward.values()) - forward["softmax"]
    head = classification_head_flops(arch, num_labels)
    return {"per_layer": per_layer, "head": head, "total": arch.layers * per_layer + head}


# --------------------------------------------------------------------------- measured counter


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q Kᵀ plus A V of scaled_dot_product_attention, from (batch, heads, tokens, head_dim) shapes."""
    batch, heads, queries, head_dim = query_shape
    keys, value_dim = key_shape[2], value_shape[3]
    return 2 * batch * heads * queries * keys * head_dim + 2 * batch * heads * queries * keys * value_dim


# FlopCounterMode knows the CUDA SDPA kernels but counts the CPU flash kernel as 0 FLOPs.
SDPA_CPU_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}

_ENCODER_LAYER_NAME = re.compile(r"\.layer\.(\d+)$")


def measure_forward_flops(model: torch.nn.Module, seq_len: int, batch_size: int = 1) -> dict:
    """Count the FLOPs of one forward pass of `model` with torch's FlopCounterMode.

    The input is seq_len real tokens (no padding) per sequence. Counts are per sequence. The
    counter sees matmuls (including CPU SDPA, through SDPA_CPU_FLOP_FORMULAS) but not softmax,
    layer norm or other element-wise work; compare with analytic_forward_matmul_flops.
    """
    config = model.config
    device = next(model.parameters()).device
    input_ids = (torch.arange(batch_size * seq_len, device=device) % config.vocab_size).view(batch_size, seq_len)
    attention_mask = torch.ones_like(input_ids)
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOP_FORMULAS)
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
        "not_counted": "biases, layer norms, activations, dropout, residuals, score scaling, top-k selection, embeddings",
        "as_executed": "top-k masking computes Q K^T, softmax and A V densely: no saving",
        "ideal_sparse": "a kernel computing only the kept scores: qk_scores, softmax, attention_values x k/n",
        "paper_accounting": "ideal_sparse over the attention sub-layer only (FFN excluded)",
        "training": "forward + backward",
    }


def profile_experiment(
    config_obj_or_arch,
    experiment_name: str,
    pattern: str,
    sparsity: float,
    sequence_lengths,
    model_name: str = "",
    measured: dict | None = None,
) -> dict:
    """The JSON-able FLOP report of one experiment (results/flops/<experiment>.json).

    Per sequence length: per-layer FLOPs of every view, pass and component next to the dense
    reference, and whole-model totals (encoder layers x per layer; embeddings and classifier head
    are not part of the layer account). `measured`, from measure_forward_flops, adds a section
    comparing the counter with the analytic matmul count at the measured length.
    """
    if isinstance(config_obj_or_arch, Architecture):
        arch = config_obj_or_arch
    else:
        arch = Architecture.from_config(config_obj_or_arch)
    by_seq_len = []
    for seq_len in sequence_lengths:
        account = layer_account(arch, int(seq_len), pattern, sparsity)
        account["model_totals"] = {
            view: {pass_name: arch.layers * entry["total"] for pass_name, entry in passes.items()}
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
        "architecture": asdict(arch),
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
    """Long-format rows of results/tables/flops.csv, one per (seq_len, view, component, pass)."""
    rows = []
    for account in report["by_seq_len"]:
        for view in VIEWS:
            for pass_name in PASSES:
                entry = account["views"][view][pass_name]
                dense = account["dense"][pass_name]
                named = [(c, flops, dense[c]) for c, flops in entry["components"].items()]
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


def flops_table(reports) -> "pandas.DataFrame":
    import pandas

    rows = [row for report in reports for row in flops_rows(report)]
    return pandas.DataFrame(rows, columns=list(ROW_COLUMNS))


# --------------------------------------------------------------------------- entry point


def _measurement_model(model_config, experiment: dict):
    """A random-init classification model that attends as the experiment trains (crisp.train)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # weights do not change the count; a seed keeps the run reproducible
    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(model_config)).eval()
    return sparsify(model, pattern=experiment["pattern"], sparsity=experiment["sparsity"], **experiment.get("options", {}))


def run_profile(
    model_config,
    experiment_name: str,
    experiment: dict,
    sequence_lengths,
    out_path,
    measure_seq_len: int | None = None,
    model_name: str = "",
) -> dict:
    """Write results/flops/<experiment>.json for one experiment and return the report.

    model_config is a transformers PretrainedConfig; experiment is {pattern, sparsity, options}
    as in config.yaml. With measure_seq_len, a random-init model with the experiment's attention
    is counted by FlopCounterMode at that length. model_name defaults to the config's name_or_path.
    """
    for key in ("pattern", "sparsity"):
        if key not in experiment:
            raise ValueError(f"experiment {experiment_name!r} has no {key!r} key; got {sorted(experiment)}")
    pattern, sparsity = experiment["pattern"], float(experiment["sparsity"])
    measured = None
    if measure_seq_len is not None:
        model = _measurement_model(model_config, experiment)
        measured = measure_forward_flops(model, measure_seq_len)
    report = profile_experiment(
        model_config,
        experiment_name,
        pattern,
        sparsity,
        sequence_lengths,
        model_name=model_name or getattr(model_config, "_name_or_path", "") or "",
        measured=measured,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
