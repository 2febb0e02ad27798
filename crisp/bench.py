"""`crisp bench`: what sparse attention costs, measured as ratios side by side in one run.

    crisp bench [--device cpu|cuda] [--quick] [--out results/bench/bench.json]
    crisp bench --overhead RESULTS_DIR        share of pipeline job time spent outside training

Sections (keys of the JSON written to --out; the same numbers are printed as tables):

- attention_core: forward + backward of the attention core alone (scores, pattern, softmax, A V)
  for dense eager, dense SDPA and every pattern registered in crisp.attention.PATTERNS at sparsity
  0.8 (adaptive patterns at their own sparsity), as ratios to dense eager.
- training_step: one optimiser step (forward, backward, AdamW) of a DistilBERT-shaped model
  (6 layers, random init) at n = 128, batch 16: top-k 0.8 over the faster dense attention, with
  all tokens real and with SST-2-like lengths padded to n. Goal <= 1.05 (reported, not asserted).
  Its `decoder` entry does the same for a Llama-shaped decoder (causal, grouped-query attention
  with a quarter as many key/value heads, gated MLP) of the same width and depth. Goal <= 1.10.
- finetune_throughput: examples/s through the Hugging Face Trainer on SST-2-like lengths,
  length-grouped batches with dynamic padding over padding every example to 128 tokens (what
  run_glue.py does by default), for a model of the demo's MiniLM-L6-H384 shape, on a data set
  large enough for the Trainer to group as on SST-2 (see grouping_batches). Goal >= 5x.
- attention_memory: memory of the attention core, sparse vs dense (see saved_tensor_bytes).
- compile: torch.compile on vs off for the training step, per attention; skipped with the reason
  where compilation fails on the device.

Each time is the median of several repeats after a warm-up, with min and max beside it. The
variants of a comparison run interleaved, round by round, so that a machine that speeds up or
slows down during the run affects all of them alike; ratios are taken within each round.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_OUT = "results/bench/bench.json"
SECTIONS = ("attention_core", "training_step", "finetune_throughput", "attention_memory", "compile")
SPARSITY = 0.8
TRAINING_STEP_GOAL = 1.05  # top-k step time / faster dense step time
DECODER_STEP_GOAL = 1.10  # the same for the Llama-shaped decoder
THROUGHPUT_GOAL = 5.0  # grouped dynamic padding examples/s / padded-to-128 examples/s
OVERHEAD_GOAL = 0.10  # share of job time outside training
TRAIN_RULES = ("train", "finetune")  # benchmark folders of training jobs (finetune: older runs)

# SST-2 train tokenised by the BERT uncased tokenizer ([CLS] and [SEP] included): mean 13 tokens,
# 95th percentile 33, longest 66. A log-normal with that mean and 95th percentile, clipped to
# [3, 66], stands in for it, so the benchmark needs no download.
SST2_MEAN_TOKENS, SST2_P95_TOKENS, SST2_MAX_TOKENS, MIN_TOKENS = 13.0, 33.0, 66, 3
Z_95 = 1.6448536269514722  # standard normal 95th percentile


@dataclass(frozen=True)
class Shapes:
    """Sizes of one benchmark run: the issue's shapes, or tiny ones for --quick."""

    repeats: int
    warmup: int
    core_batch: int
    core_heads: int
    core_head_dim: int
    core_lengths: tuple[int, ...]
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    step_batch: int
    step_tokens: int
    finetune_model: tuple[int, int, int, int]  # layers, hidden, heads, ffn
    finetune_examples: int
    finetune_batch: int
    finetune_max_length: int
    finetune_padded_steps: int
    finetune_repeats: int
    compile_backend: str


FULL = Shapes(
    repeats=5,
    warmup=1,
    core_batch=32,
    core_heads=12,
    core_head_dim=64,
    core_lengths=(64, 128, 256, 512),
    layers=6,
    hidden=768,
    heads=12,
    ffn=3072,
    vocab=30522,
    step_batch=16,
    step_tokens=128,
    # The shape of the demo's MiniLM-L6-H384: what a CPU user fine-tunes.
    finetune_model=(6, 384, 12, 1536),
    finetune_examples=6400,
    finetune_batch=32,
    finetune_max_length=128,
    finetune_padded_steps=4,
    finetune_repeats=3,
    compile_backend="inductor",
)
# CI: every section's code path and keys, in seconds. The eager compile backend checks that the
# model is captured by torch.compile without paying for code generation.
QUICK = Shapes(
    repeats=1,
    warmup=1,
    core_batch=2,
    core_heads=2,
    core_head_dim=8,
    core_lengths=(16, 32),
    layers=1,
    hidden=32,
    heads=2,
    ffn=64,
    vocab=1000,
    step_batch=4,
    step_tokens=32,
    finetune_model=(1, 32, 2, 64),
    finetune_examples=64,
    finetune_batch=8,
    finetune_max_length=32,
    finetune_padded_steps=2,
    finetune_repeats=1,
    compile_backend="eager",
)


# --------------------------------------------------------------------------- timing


def summary(values) -> dict:
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": len(values)}


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_side_by_side(
    steps: dict[str, Callable], device: str, repeats: int, warmup: int, prepare: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Seconds of each call of each step, the steps interleaved round by round.

    prepare(name), if given, runs untimed before each call of step `name` (e.g. to switch the
    model's attention). Returns {name: [seconds per round]}.
    """
    prepare = prepare or (lambda name: None)
    for name, step in steps.items():
        for _ in range(warmup):
            prepare(name)
            step()
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            prepare(name)
            _synchronize(device)
            started = time.perf_counter()
            step()
            _synchronize(device)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def ratio(seconds: dict[str, list[float]], name: str, reference: str) -> dict:
    """Summary of the per-round ratios seconds[name] / seconds[reference]."""
    return summary(a / b for a, b in zip(seconds[name], seconds[reference], strict=True))


# --------------------------------------------------------------------------- inputs


def sst2_like_lengths(count: int, seed: int = 0, max_tokens: int = SST2_MAX_TOKENS) -> list[int]:
    """Token counts drawn like SST-2's (see SST2_MEAN_TOKENS), clipped to [3, max_tokens]."""
    import numpy as np

    # Log-normal with mean m and 95th percentile p: sigma^2 / 2 - z sigma + ln(p / m) = 0.
    sigma = Z_95 - math.sqrt(Z_95**2 - 2 * math.log(SST2_P95_TOKENS / SST2_MEAN_TOKENS))
    mu = math.log(SST2_MEAN_TOKENS) - sigma**2 / 2
    draws = np.random.default_rng(seed).lognormal(mu, sigma, count)
    return np.clip(np.rint(draws), MIN_TOKENS, min(max_tokens, SST2_MAX_TOKENS)).astype(int).tolist()


def length_summary(lengths) -> dict:
    import numpy as np

    lengths = np.asarray(lengths)
    return {"mean": float(lengths.mean()), "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}


def _distilbert_config(shapes: Shapes, layers: int, hidden: int, heads: int, ffn: int):
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=shapes.vocab,
        n_layers=layers,
        dim=hidden,
        n_heads=heads,
        hidden_dim=ffn,
        max_position_embeddings=max(512, shapes.finetune_max_length),
    )


def distilbert_shaped_model(shapes: Shapes, device: str, layers: int, hidden: int, heads: int, ffn: int):
    """A random-init DistilBERT-architecture classifier in training mode (dense SDPA attention)."""
    import torch
    from transformers import DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = _distilbert_config(shapes, layers, hidden, heads, ffn)
    model = DistilBertForSequenceClassification(config).to(device).train()
    model.set_attn_implementation("sdpa")
    return model


def llama_shaped_model(shapes: Shapes, device: str):
    """A random-init Llama-architecture classifier as wide and deep as the training-step model:
    grouped-query attention (a quarter as many key/value heads), a gated MLP with as many
    parameters as the encoder's FFN (2/3 of its width, three projections)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shapes.vocab,
        hidden_size=shapes.hidden,
        num_hidden_layers=shapes.layers,
        num_attention_heads=shapes.heads,
        num_key_value_heads=max(1, shapes.heads // 4),
        intermediate_size=2 * shapes.ffn // 3,
        max_position_embeddings=max(512, shapes.step_tokens),
        pad_token_id=0,
    )
    model = LlamaForSequenceClassification(config).to(device).train()
    model.set_attn_implementation("sdpa")
    return model


def sparsify_for_bench(model, pattern: str) -> float | None:
    """Sparsify `model` with `pattern` at SPARSITY (dense: 0; adaptive patterns: no sparsity).

    Returns the sparsity used.
    """
    from crisp.attention import sparsify
    from crisp.patterns import PATTERNS_INFO, SPARSITY_ADAPTIVE, SPARSITY_ZERO

    rule = PATTERNS_INFO[pattern].sparsity
    sparsity = {SPARSITY_ZERO: 0.0, SPARSITY_ADAPTIVE: None}.get(rule, SPARSITY)
    sparsify(model, pattern, sparsity)
    return sparsity


def _autocast(device: str):
    """The precision training uses: bf16 (fp16 where bf16 is missing) autocast on CUDA, fp32 on CPU."""
    import torch

    if device != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _precision(device: str) -> str:
    import torch

    if device != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# --------------------------------------------------------------------------- attention core


@dataclass
class AttentionVariant:
    """One attention function with the module it is called with, as transformers would call it."""

    name: str
    pattern: str | None
    sparsity: float | None
    module: object
    function: Callable


def attention_variants(shapes: Shapes, device: str) -> list[AttentionVariant]:
    """Dense eager, dense SDPA and each registered pattern, each on a 1-layer model's attention."""
    from transformers import DistilBertForSequenceClassification
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.distilbert.modeling_distilbert import eager_attention_forward

    from crisp.attention import PATTERNS

    hidden = shapes.core_heads * shapes.core_head_dim
    config = _distilbert_config(shapes, 1, hidden, shapes.core_heads, 4 * hidden)
    config.vocab_size = 64  # only the attention module is used

    def attention_of(model):
        model = model.to(device).train()
        module = model.distilbert.transformer.layer[0].attention
        function = ALL_ATTENTION_FUNCTIONS.get_interface(model.config._attn_implementation, eager_attention_forward)
        return module, function

    variants = []
    for implementation in ("eager", "sdpa"):
        model = DistilBertForSequenceClassification(config)
        model.set_attn_implementation(implementation)
        variants.append(AttentionVariant(f"dense_{implementation}", None, None, *attention_of(model)))
    for pattern in sorted(PATTERNS):
        model = DistilBertForSequenceClassification(config)
        sparsity = sparsify_for_bench(model, pattern)
        name = f"crisp_{pattern}" if sparsity in (None, 0.0) else f"crisp_{pattern}_{sparsity:g}"
        variants.append(AttentionVariant(name, pattern, sparsity, *attention_of(model)))
    return variants


def _core_inputs(shapes: Shapes, seq_len: int, device: str):
    import torch

    dtype = torch.float32 if device != "cuda" else (torch.bfloat16 if _precision(device) == "bf16" else torch.float16)
    generator = torch.Generator().manual_seed(seq_len)
    shape = (shapes.core_batch, shapes.core_heads, seq_len, shapes.core_head_dim)
    query, key, value = (torch.randn(shape, generator=generator).to(device, dtype).requires_grad_() for _ in "qkv")
    grad_output = torch.randn(
        shapes.core_batch, seq_len, shapes.core_heads, shapes.core_head_dim, generator=generator
    ).to(device, dtype)
    return query, key, value, grad_output


def _core_step(variant: AttentionVariant, query, key, value, grad_output, scaling: float) -> Callable:
    """Forward + backward of one attention call, with no padding (what an all-real batch passes)."""
    import torch

    def step():
        output = variant.function(variant.module, query, key, value, None, scaling=scaling, dropout=0.0)[0]
        torch.autograd.grad(output, (query, key, value), grad_output)

    return step


def progress(message: str) -> None:
    """A line on stderr, so that a long run shows where it is."""
    print(f"crisp bench: {message}", file=sys.stderr, flush=True)


def bench_attention_core(shapes: Shapes, device: str, variants: list[AttentionVariant]) -> dict:
    rows = []
    scaling = shapes.core_head_dim**-0.5
    for seq_len in shapes.core_lengths:
        progress(f"attention core, n = {seq_len}")
        query, key, value, grad_output = _core_inputs(shapes, seq_len, device)
        steps = {v.name: _core_step(v, query, key, value, grad_output, scaling) for v in variants}
        seconds = time_side_by_side(steps, device, shapes.repeats, shapes.warmup)
        for variant in variants:
            rows.append(
                {
                    "seq_len": seq_len,
                    "variant": variant.name,
                    "pattern": variant.pattern,
                    "sparsity": variant.sparsity,
                    "seconds": summary(seconds[variant.name]),
                    "ratio_to_dense_eager": ratio(seconds, variant.name, "dense_eager"),
                }
            )
    return {
        "shape": {"batch": shapes.core_batch, "heads": shapes.core_heads, "head_dim": shapes.core_head_dim},
        "what": "forward + backward of the attention function alone, all tokens real, dropout 0",
        "reference": "dense_eager",
        "rows": rows,
    }


# --------------------------------------------------------------------------- attention memory


def saved_tensor_bytes(call: Callable, inputs) -> int:
    """Bytes of the tensors autograd saves for the backward during call(), beyond `inputs`.

    This is what the attention core keeps alive from its forward to its backward, the part of
    training memory that grows with batch x heads x n^2. Storages are counted once however many
    views are saved. Not counted: temporaries freed within the forward (e.g. the top-k values a
    pattern computes under no_grad), which add to a momentary peak but are not held.
    """
    import torch

    exclude = {tensor.untyped_storage().data_ptr() for tensor in inputs}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        call()
    return sum(storages.values())


def _cuda_peak_bytes(step: Callable) -> int:
    """Peak CUDA memory allocated during step() above what was allocated before it."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_attention_memory(shapes: Shapes, device: str, variants: list[AttentionVariant]) -> dict:
    rows = []
    scaling = shapes.core_head_dim**-0.5
    progress("attention memory")
    for seq_len in shapes.core_lengths:
        query, key, value, grad_output = _core_inputs(shapes, seq_len, device)
        saved, peak = {}, {}
        for variant in variants:
            forward = functools.partial(
                variant.function, variant.module, query, key, value, None, scaling=scaling, dropout=0.0
            )
            saved[variant.name] = saved_tensor_bytes(forward, (query, key, value))
            if device == "cuda":
                peak[variant.name] = _cuda_peak_bytes(_core_step(variant, query, key, value, grad_output, scaling))
        for variant in variants:
            row = {
                "seq_len": seq_len,
                "variant": variant.name,
                "saved_for_backward_bytes": saved[variant.name],
                "saved_ratio_to_dense_eager": saved[variant.name] / saved["dense_eager"],
                "cuda_peak_bytes": peak.get(variant.name),
                "cuda_peak_ratio_to_dense_eager": peak[variant.name] / peak["dense_eager"] if peak else None,
            }
            rows.append(row)
    return {
        "what": (
            "saved_for_backward_bytes: tensors autograd keeps from the forward for the backward, beyond "
            "q, k, v (torch.autograd.graph.saved_tensors_hooks, storages counted once); cuda_peak_bytes: "
            "torch.cuda.max_memory_allocated over forward + backward above the inputs (CUDA only)"
        ),
        "shape": {"batch": shapes.core_batch, "heads": shapes.core_heads, "head_dim": shapes.core_head_dim},
        "reference": "dense_eager",
        "rows": rows,
    }


# --------------------------------------------------------------------------- training step


class TrainingStep:
    """One model and optimiser whose attention can be switched between dense and sparse."""

    ATTENTIONS = ("dense_eager", "dense_sdpa", f"topk_{SPARSITY:g}")

    def __init__(self, shapes: Shapes, device: str, decoder: bool = False):
        import torch

        self.device = device
        if decoder:
            self.model = llama_shaped_model(shapes, device)
        else:
            self.model = distilbert_shaped_model(shapes, device, shapes.layers, shapes.hidden, shapes.heads, shapes.ffn)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=True)  # as training uses
        generator = torch.Generator().manual_seed(0)
        size = (shapes.step_batch, shapes.step_tokens)
        self.input_ids = torch.randint(min(1000, shapes.vocab // 2), shapes.vocab, size, generator=generator)
        self.labels = torch.randint(0, 2, (shapes.step_batch,), generator=generator)

    def batch(self, lengths: list[int]) -> dict:
        import torch

        attention_mask = (torch.arange(self.input_ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
        batch = {"input_ids": self.input_ids, "attention_mask": attention_mask, "labels": self.labels}
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    def use(self, attention: str) -> None:
        if attention.startswith("dense_"):
            self.model.set_attn_implementation(attention.removeprefix("dense_"))
        else:
            sparsify_for_bench(self.model, "topk")

    def step(self, batch: dict, model=None) -> Callable:
        model = self.model if model is None else model

        def step():
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(self.device):
                loss = model(**batch).loss
            loss.backward()
            self.optimizer.step()

        return step


def bench_training_step(shapes: Shapes, device: str, trainer: TrainingStep, goal: float = TRAINING_STEP_GOAL) -> dict:
    tokens = shapes.step_tokens
    cases = {
        "all_real": [tokens] * shapes.step_batch,
        "sst2_lengths": sst2_like_lengths(shapes.step_batch, seed=1, max_tokens=tokens),
    }
    topk = TrainingStep.ATTENTIONS[2]
    results = {}
    for case, lengths in cases.items():
        progress(f"training step, {case}")
        batch = trainer.batch(lengths)
        steps = {attention: trainer.step(batch) for attention in TrainingStep.ATTENTIONS}
        seconds = time_side_by_side(steps, device, shapes.repeats, shapes.warmup, prepare=trainer.use)
        faster_dense = min(("dense_eager", "dense_sdpa"), key=lambda name: statistics.median(seconds[name]))
        topk_ratio = ratio(seconds, topk, faster_dense)
        results[case] = {
            "lengths": length_summary(lengths),
            "seconds": {name: summary(values) for name, values in seconds.items()},
            "faster_dense": faster_dense,
            "topk_over_faster_dense": topk_ratio,
            "meets_goal": topk_ratio["median"] <= goal,
        }
    config = trainer.model.config
    return {
        "model": {
            "architecture": config.model_type,
            "layers": shapes.layers,
            "hidden": shapes.hidden,
            "heads": shapes.heads,
            "key_value_heads": getattr(config, "num_key_value_heads", shapes.heads),
            "ffn": getattr(config, "intermediate_size", shapes.ffn) if config.model_type == "llama" else shapes.ffn,
            "init": "random",
        },
        "batch_size": shapes.step_batch,
        "padded_tokens": tokens,
        "what": "forward, backward and AdamW step; sst2_lengths pads SST-2-like lengths to padded_tokens",
        "goal": goal,
        "cases": results,
    }


# --------------------------------------------------------------------------- torch.compile


def bench_compile(shapes: Shapes, device: str, trainer: TrainingStep, dense: str) -> dict:
    """Compiled vs eager training step (all tokens real) for the faster dense attention and top-k."""
    import torch

    batch = trainer.batch([shapes.step_tokens] * shapes.step_batch)
    cases = {}
    for attention in (dense, TrainingStep.ATTENTIONS[2]):
        progress(f"torch.compile ({shapes.compile_backend}), {attention}")
        torch._dynamo.reset()
        trainer.use(attention)
        compiled_model = torch.compile(trainer.model, backend=shapes.compile_backend)
        compiled = trainer.step(batch, compiled_model)
        started = time.perf_counter()
        try:
            compiled()  # the first call compiles
            _synchronize(device)
        except Exception as error:  # noqa: BLE001 - any compiler failure is reported, not raised
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            cases[attention] = {"status": "skipped", "reason": reason[:500]}
            continue
        compile_seconds = time.perf_counter() - started
        seconds = time_side_by_side(
            {"eager": trainer.step(batch), "compiled": compiled}, device, shapes.repeats, shapes.warmup
        )
        cases[attention] = {
            "status": "ok",
            "compile_seconds": compile_seconds,
            "seconds": {name: summary(values) for name, values in seconds.items()},
            "compiled_over_eager": ratio(seconds, "compiled", "eager"),
        }
    torch._dynamo.reset()
    return {"backend": shapes.compile_backend, "what": "training step, all tokens real", "cases": cases}


# --------------------------------------------------------------------------- fine-tuning throughput


def _finetune_dataset(shapes: Shapes, padded: bool):
    import datasets

    lengths = sst2_like_lengths(shapes.finetune_examples, seed=2, max_tokens=shapes.finetune_max_length)
    low = min(1000, shapes.vocab // 2)
    ids = [[low + (7 * i + 13 * j) % (shapes.vocab - low) for j in range(n)] for i, n in enumerate(lengths)]
    if padded:  # run_glue.py's default: the tokenizer pads every example to max_length
        pad = shapes.finetune_max_length
        masks = [[1] * len(row) + [0] * (pad - len(row)) for row in ids]
        ids = [row + [0] * (pad - len(row)) for row in ids]
    else:
        masks = [[1] * len(row) for row in ids]
    labels = [i % 2 for i in range(len(ids))]
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels}), lengths


def _tokenizer():
    """A tokenizer that only pads, with id 0 as BERT's [PAD]: the data set is token ids already, so
    no vocabulary (and no model files) is needed."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocabulary = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=vocabulary, pad_token="[PAD]", unk_token="[UNK]")


def _step_clock(device: str):
    """A Trainer callback timing from the first step's start to the last step's end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        first_start = last_end = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.first_start is None:
                _synchronize(device)
                self.first_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _synchronize(device)
            self.last_end = time.perf_counter()

    return StepClock()


def grouping_batches(examples: int, batch_size: int) -> int:
    """Batches per mega-batch of the Trainer's length grouping (transformers' get_length_grouped_indices).

    The Trainer sorts by length within mega-batches of this many batches (50 once the data set has
    200 batches or more, as SST-2 has), so a run needs that many examples to group as on real data.
    """
    return max(1, min(examples // (4 * batch_size), 50))


def bench_finetune_throughput(shapes: Shapes, device: str) -> dict:
    """Examples/s of Trainer.train() on SST-2-like lengths, padded to max_length vs grouped by length.

    The data set is large enough for the grouping to work as on SST-2; grouped batches are timed over
    one whole mega-batch (its batches range from the longest to the shortest, like every other
    mega-batch of the epoch), padded batches (all the same size) over a few steps. The clock runs
    from the first step's start to the last step's end: the setup of a train() call does not grow
    with the data.
    """
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments, default_data_collator

    progress("fine-tuning throughput")
    model = distilbert_shaped_model(shapes, device, *shapes.finetune_model)
    tokenizer = _tokenizer()
    grouped_steps = grouping_batches(shapes.finetune_examples, shapes.finetune_batch)
    padded_steps = min(grouped_steps, shapes.finetune_padded_steps)
    variants = {
        # name: (dataset padded up front?, sampling strategy, collator, steps timed)
        "padded_to_max_length": (True, "random", default_data_collator, padded_steps),
        "grouped_dynamic": (False, "group_by_length", DataCollatorWithPadding(tokenizer), grouped_steps),
    }
    datasets_, lengths = {}, None
    for name, (padded, *_) in variants.items():
        datasets_[name], lengths = _finetune_dataset(shapes, padded)

    def trainer(name: str, output_dir: str, max_steps: int) -> Trainer:
        _, strategy, collator, _ = variants[name]
        arguments = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=shapes.finetune_batch,
            max_steps=max_steps,
            learning_rate=1e-5,
            optim="adamw_torch_fused",  # as training uses
            train_sampling_strategy=strategy,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=0,
            use_cpu=device == "cpu",
            bf16=_precision(device) == "bf16",
            fp16=_precision(device) == "fp16",
            dataloader_pin_memory=device == "cuda",
        )
        run = Trainer(model=model, args=arguments, train_dataset=datasets_[name], data_collator=collator)
        run.remove_callback(PrinterCallback)  # the final metrics dict, printed by the Trainer
        return run

    with tempfile.TemporaryDirectory() as output_dir:
        examples_per_s = {name: [] for name in variants}
        for name in variants:  # warm-up: a short run of each
            trainer(name, output_dir, max_steps=1).train()
        for _ in range(shapes.finetune_repeats):
            for name, (*_, steps) in variants.items():
                run, clock = trainer(name, output_dir, steps), _step_clock(device)
                run.add_callback(clock)
                run.train()
                examples_per_s[name].append(steps * shapes.finetune_batch / (clock.last_end - clock.first_start))
    grouped, padded = examples_per_s["grouped_dynamic"], examples_per_s["padded_to_max_length"]
    speedup = summary(a / b for a, b in zip(grouped, padded, strict=True))
    return {
        "what": "Trainer.train() steps (first start to last end), dense SDPA attention, random-init model",
        "model": dict(zip(("layers", "hidden", "heads", "ffn"), shapes.finetune_model, strict=True)),
        "examples": shapes.finetune_examples,
        "batch_size": shapes.finetune_batch,
        "max_length": shapes.finetune_max_length,
        "steps_timed": {name: steps for name, (*_, steps) in variants.items()},
        "lengths": length_summary(lengths),
        "examples_per_s": {name: summary(values) for name, values in examples_per_s.items()},
        "grouped_over_padded": speedup,
        "goal": THROUGHPUT_GOAL,
        "meets_goal": speedup["median"] >= THROUGHPUT_GOAL,
    }


# --------------------------------------------------------------------------- pipeline overhead


def pipeline_overhead(results_dir) -> dict:
    """Share of job time spent outside training, from the Snakemake `benchmark:` files.

    Every *.tsv under RESULTS_DIR/benchmarks/ is one job; its rule is the first folder below
    benchmarks/ (or the file's name for files directly in it). Training jobs are those of the rules
    in TRAIN_RULES. Each job counts the mean of its rows' wall seconds (column "s"; one row per
    --benchmark-repeats repeat). Snakemake's own time between jobs is not in these files.
    """
    import pandas

    folder = Path(results_dir) / "benchmarks"
    files = sorted(folder.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no Snakemake benchmark files (*.tsv) under {folder}; run the pipeline first")
    by_rule: dict[str, dict] = {}
    for path in files:
        relative = path.relative_to(folder)
        rule = relative.parts[0] if len(relative.parts) > 1 else path.stem
        table = pandas.read_csv(path, sep="\t")
        if "s" not in table.columns or table.empty:
            raise ValueError(f"{path} is not a Snakemake benchmark file: it has no rows with an 's' column")
        entry = by_rule.setdefault(rule, {"jobs": 0, "seconds": 0.0})
        entry["jobs"] += 1
        entry["seconds"] += float(table["s"].mean())
    total = sum(entry["seconds"] for entry in by_rule.values())
    train = sum(entry["seconds"] for rule, entry in by_rule.items() if rule in TRAIN_RULES)
    return {
        "results": str(results_dir),
        "what": "sum of job wall seconds per rule from benchmark: files; share = non-training / all jobs",
        "train_rules": list(TRAIN_RULES),
        "jobs": len(files),
        "job_seconds": total,
        "train_seconds": train,
        "outside_train_seconds": total - train,
        "outside_train_share": (total - train) / total if total else 0.0,
        "goal": OVERHEAD_GOAL,
        "by_rule": dict(sorted(by_rule.items())),
    }


# --------------------------------------------------------------------------- report


def environment(device: str, shapes: Shapes, quick: bool, command: str) -> dict:
    import torch
    import transformers

    return {
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if device == "cuda"
        else (platform.processor() or platform.machine()),
        "precision": _precision(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "quick": quick,
        "shapes": asdict(shapes),
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run_bench(
    device: str = "cpu",
    quick: bool = False,
    sections=SECTIONS,
    repeats: int | None = None,
    command: str = "crisp bench",
) -> dict:
    """Run the selected sections; returns the JSON-able report (see the module docstring)."""
    import torch

    shapes = QUICK if quick else FULL
    if repeats is not None:
        shapes = Shapes(**{**asdict(shapes), "repeats": repeats, "finetune_repeats": min(repeats, 3)})
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report = {"environment": environment(device, shapes, quick, command)}
    if {"attention_core", "attention_memory"} & set(sections):
        variants = attention_variants(shapes, device)
        if "attention_core" in sections:
            report["attention_core"] = bench_attention_core(shapes, device, variants)
        if "attention_memory" in sections:
            report["attention_memory"] = bench_attention_memory(shapes, device, variants)
        del variants
    if {"training_step", "compile"} & set(sections):
        trainer = TrainingStep(shapes, device)
        dense = "dense_sdpa"
        if "training_step" in sections:
            report["training_step"] = bench_training_step(shapes, device, trainer)
            dense = report["training_step"]["cases"]["all_real"]["faster_dense"]
            progress("training step, Llama-shaped decoder")
            decoder = TrainingStep(shapes, device, decoder=True)
            report["training_step"]["decoder"] = bench_training_step(shapes, device, decoder, DECODER_STEP_GOAL)
            del decoder
        if "compile" in sections:
            report["compile"] = bench_compile(shapes, device, trainer, dense)
        del trainer
    if "finetune_throughput" in sections:
        report["finetune_throughput"] = bench_finetune_throughput(shapes, device)
    return report


def _spread(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    return f"{stats['median'] * scale:.{digits}f} ({stats['min'] * scale:.{digits}f}-{stats['max'] * scale:.{digits}f})"


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def format_report(report: dict) -> str:
    """Markdown tables of a report: median (min-max) everywhere."""
    import pandas

    parts = []
    env = report.get("environment")
    if env:
        parts.append(
            f"`{env['command']}` on {env['device']} ({env['device_name']}, {env['precision']}, "
            f"{env['threads']} threads), torch {env['torch']}, transformers {env['transformers']}, "
            f"{env['date']}"
        )
    core = report.get("attention_core")
    if core:
        frame = pandas.DataFrame(
            [
                {"variant": row["variant"], "n": row["seq_len"], "x": _spread(row["ratio_to_dense_eager"])}
                for row in core["rows"]
            ]
        ).pivot(index="variant", columns="n", values="x")
        shape = core["shape"]
        parts.append(
            f"Attention core, forward + backward, batch {shape['batch']}, {shape['heads']} heads, "
            f"head size {shape['head_dim']}: time / dense eager\n\n" + frame.to_markdown()
        )
    memory = report.get("attention_memory")
    if memory:
        frame = pandas.DataFrame(
            [
                {
                    "variant": row["variant"],
                    "n": row["seq_len"],
                    "x": f"{_bytes(row['saved_for_backward_bytes'])} ({row['saved_ratio_to_dense_eager']:.2f}x)"
                    + (f", peak {_bytes(row['cuda_peak_bytes'])}" if row["cuda_peak_bytes"] is not None else ""),
                }
                for row in memory["rows"]
            ]
        ).pivot(index="variant", columns="n", values="x")
        parts.append("Attention core memory saved for backward (x dense eager)\n\n" + frame.to_markdown())
    for step in (report.get("training_step"), (report.get("training_step") or {}).get("decoder")):
        if not step:
            continue
        rows = []
        for case, entry in step["cases"].items():
            row = {"batch": f"{case} (mean {entry['lengths']['mean']:.0f} tokens)"}
            row.update({f"{name} ms": _spread(stats, 1000, 0) for name, stats in entry["seconds"].items()})
            row["faster dense"] = entry["faster_dense"]
            row["topk / faster dense"] = _spread(entry["topk_over_faster_dense"])
            row[f"goal <= {step['goal']}"] = "met" if entry["meets_goal"] else "not met"
            rows.append(row)
        model = step["model"]
        shape = (
            f"Llama shape ({model['key_value_heads']} key/value heads)"
            if model.get("architecture") == "llama"
            else "DistilBERT shape"
        )
        parts.append(
            f"Training step, {model['layers']}-layer {shape}, batch {step['batch_size']} x "
            f"{step['padded_tokens']} tokens\n\n" + pandas.DataFrame(rows).to_markdown(index=False)
        )
    compiled = report.get("compile")
    if compiled:
        rows = []
        for attention, entry in compiled["cases"].items():
            if entry["status"] == "ok":
                rows.append(
                    {
                        "attention": attention,
                        "eager ms": _spread(entry["seconds"]["eager"], 1000, 0),
                        "compiled ms": _spread(entry["seconds"]["compiled"], 1000, 0),
                        "compiled / eager": _spread(entry["compiled_over_eager"]),
                        "compile s": f"{entry['compile_seconds']:.0f}",
                    }
                )
            else:
                rows.append({"attention": attention, "eager ms": "skipped", "compiled ms": entry["reason"][:80]})
        parts.append(
            f"torch.compile (backend {compiled['backend']}), training step\n\n"
            + pandas.DataFrame(rows).to_markdown(index=False)
        )
    finetune = report.get("finetune_throughput")
    if finetune:
        rows = [
            {
                "batches": name,
                "steps timed": finetune["steps_timed"][name],
                "examples/s": _spread(stats, digits=1),
            }
            for name, stats in finetune["examples_per_s"].items()
        ]
        ratio_text = _spread(finetune["grouped_over_padded"])
        rows.append({"batches": "grouped / padded", "steps timed": "", "examples/s": ratio_text})
        parts.append(
            f"Fine-tuning throughput through the Trainer, {finetune['examples']} SST-2-like examples "
            f"(mean {finetune['lengths']['mean']:.0f} tokens), batch {finetune['batch_size']}, "
            f"goal >= {finetune['goal']}x: {'met' if finetune['meets_goal'] else 'not met'}\n\n"
            + pandas.DataFrame(rows).to_markdown(index=False)
        )
    return "\n\n".join(parts)


def format_overhead(overhead: dict) -> str:
    import pandas

    frame = pandas.DataFrame(
        [
            {
                "rule": rule,
                "jobs": entry["jobs"],
                "seconds": round(entry["seconds"], 1),
                "share": f"{entry['seconds'] / overhead['job_seconds']:.1%}" if overhead["job_seconds"] else "-",
            }
            for rule, entry in overhead["by_rule"].items()
        ]
    )
    verdict = "met" if overhead["outside_train_share"] < overhead["goal"] else "not met"
    return (
        frame.to_markdown(index=False) + f"\n\nOutside training: {overhead['outside_train_seconds']:.1f} s of "
        f"{overhead['job_seconds']:.1f} s job time = {overhead['outside_train_share']:.1%} "
        f"(goal < {overhead['goal']:.0%}: {verdict})"
    )


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="where to run (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and one repeat: checks every section in under a minute"
    )
    parser.add_argument("--out", default=None, help=f"JSON file to write (default {DEFAULT_OUT})")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 5; quick 1)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)} (default all)"
    )
    parser.add_argument(
        "--overhead",
        metavar="RESULTS_DIR",
        default=None,
        help="instead of benchmarking, report the share of pipeline job time outside training "
        "from RESULTS_DIR/benchmarks/",
    )
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.overhead:
        result = pipeline_overhead(args.overhead)
        print(format_overhead(result))
    else:
        sections = [name.strip() for name in args.sections.split(",") if name.strip()]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown --sections {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        command = " ".join(
            ["crisp bench", f"--device {device}"]
            + (["--quick"] if args.quick else [])
            + ([f"--repeats {args.repeats}"] if args.repeats is not None else [])
            + ([f"--sections {','.join(sections)}"] if tuple(sections) != SECTIONS else [])
        )
        result = run_bench(device, quick=args.quick, sections=sections, repeats=args.repeats, command=command)
        print(format_report(result))
    out = args.out or (None if args.overhead else DEFAULT_OUT)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nWrote {out}")
    return result


if __name__ == "__main__":
    main(
        add_arguments(
            argparse.ArgumentParser(
                prog="crisp bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
            )
        ).parse_args()
    )
