"""Cost of the sparse attention, measured side by side in one run.

    python benchmarks/attention_speed.py [--device cuda] [--tokens 128] [--batch 16]

Times forward + backward of a 2-layer DistilBERT-sized model (12 heads, 768 wide) with eager
attention, SDPA, and crisp's attention at several patterns, and prints each as a ratio to eager. A top-k mask is computed from the dense
scores, so it adds work rather than saving it: this is the "as executed" view of crisp.flops.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from crisp.attention import sparsify

VARIANTS = [
    ("eager", None, 0.0),
    ("sdpa", None, 0.0),
    ("crisp dense", "dense", 0.0),
    ("crisp topk 50%", "topk", 0.5),
    ("crisp topk 80%", "topk", 0.8),
    ("crisp random 80%", "random", 0.8),
]


def build(implementation: str | None, pattern: str | None, sparsity: float, device: str):
    torch.manual_seed(0)
    config = DistilBertConfig(n_layers=2, attn_implementation=implementation or "eager")
    model = DistilBertForSequenceClassification(config).to(device).train()
    if pattern is not None:
        sparsify(model, pattern=pattern, sparsity=sparsity)
    return model


def seconds_per_step(model, batch: dict, repeats: int, device: str) -> float:
    def step():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 20000, (args.batch, args.tokens), generator=generator)
    lengths = torch.randint(args.tokens // 4, args.tokens + 1, (args.batch,), generator=generator)
    attention_mask = (torch.arange(args.tokens) < lengths[:, None]).long()
    batch = {
        "input_ids": input_ids.to(args.device),
        "attention_mask": attention_mask.to(args.device),
        "labels": torch.zeros(args.batch, dtype=torch.long, device=args.device),
    }

    print(f"2-layer DistilBERT-sized model, batch {args.batch} x {args.tokens} tokens (dynamic lengths), "
          f"forward + backward on {args.device}, {torch.get_num_threads()} CPU threads")
    baseline = None
    for name, pattern, sparsity in VARIANTS:
        implementation = name if pattern is None else None
        seconds = seconds_per_step(build(implementation, pattern, sparsity, args.device), batch, args.repeats, args.device)
        baseline = baseline or seconds
        print(f"  {name:<18} {seconds * 1000:8.1f} ms/step   {seconds / baseline:5.2f} x eager")


if __name__ == "__main__":
    main()
