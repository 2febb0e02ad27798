"""The FLOP account: the paper's figures, the three views, and agreement with FlopCounterMode."""

import itertools
import json

import pandas
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, DistilBertConfig, PretrainedConfig

from crisp.attention import sparsify
from crisp.families import TINY_NAMES, tiny_family
from crisp.flops import (
    ATTENTION_SUBLAYER,
    COMPONENTS,
    Architecture,
    analytic_forward_matmul_flops,
    flops_rows,
    flops_table,
    keep_count,
    layer_account,
    measure_forward_flops,
    profile_experiment,
    run_profile,
    seen_keys,
    training_flops_per_example,
)

DISTILBERT = Architecture(layers=6, hidden=768, heads=12, intermediate=3072)
CONTRACT_COLUMNS = [
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
]


def tiny_config(name: str):
    """The tiny:<name> config of crisp.families, with a small vocabulary (it initialises faster)."""
    return tiny_family(name).tiny(128)


def reduction(seq_len, view, pattern="topk", sparsity=0.8, pass_name="forward", arch=DISTILBERT):
    return layer_account(arch, seq_len, pattern, sparsity)["views"][view][pass_name]["reduction"]


# --------------------------------------------------------------------------- the paper's figures


def test_paper_twenty_percent_holds_only_for_the_attention_sublayer_at_512_tokens():
    assert round(reduction(512, "paper_accounting"), 2) == 0.20
    # The same figure counting matmuls only, as the paper's "projections + QKᵀ + AV" arithmetic does.
    views = layer_account(DISTILBERT, 512, "topk", 0.8)["views"]["paper_accounting"]["forward"]
    dense = layer_account(DISTILBERT, 512, "dense", 0.0)["views"]["paper_accounting"]["forward"]["components"]
    matmuls = [c for c in ATTENTION_SUBLAYER if c != "softmax"]
    saved = 1 - sum(views["components"][c] for c in matmuls) / sum(dense[c] for c in matmuls)
    assert round(saved, 2) == 0.20


def test_whole_layer_saves_about_8_percent_at_512_and_2_percent_at_128():
    assert round(100 * reduction(512, "ideal_sparse")) == 8
    assert round(100 * reduction(128, "ideal_sparse")) == 2
    assert round(100 * reduction(512, "ideal_sparse", pass_name="training")) == 8


def test_keep_count_is_ceiling_of_kept_share_and_at_least_one():
    assert keep_count(512, 0.8) == 103
    assert keep_count(128, 0.5) == 64
    assert keep_count(10, 0.3) == 7
    assert keep_count(4, 0.99) == 1


# --------------------------------------------------------------------------- the three views


@pytest.mark.parametrize("pattern, sparsity", [("dense", 0.0), ("topk", 0.0)])
def test_dense_configuration_saves_nothing_in_any_view(pattern, sparsity):
    rows = flops_rows(profile_experiment(DISTILBERT, "dense_baseline", pattern, sparsity, [64, 512]))
    assert rows and all(row["reduction"] == 0 and row["flops"] == row["dense_flops"] for row in rows)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8, 0.99])
def test_masked_execution_saves_nothing_at_any_sparsity(sparsity):
    for seq_len in (64, 512):
        for pass_name in ("forward", "training"):
            assert reduction(seq_len, "as_executed", sparsity=sparsity, pass_name=pass_name) == 0


def test_ideal_saving_grows_with_sparsity():
    sparsities = [0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]
    for view in ("ideal_sparse", "paper_accounting"):
        savings = [reduction(512, view, sparsity=s) for s in sparsities]
        assert savings[0] == 0
        assert all(later > earlier for earlier, later in itertools.pairwise(savings))


def test_ideal_saving_touches_only_score_components():
    views = layer_account(DISTILBERT, 256, "topk", 0.5)["views"]["ideal_sparse"]["forward"]["components"]
    dense = layer_account(DISTILBERT, 256, "dense", 0.0)["dense"]["forward"]
    for component in ("qkv_projections", "output_projection", "ffn"):
        assert views[component] == dense[component]
    for component in ("qk_scores", "softmax", "attention_values"):
        assert views[component] == dense[component] // 2


# --------------------------------------------------------------------------- architecture


def test_architecture_reads_distilbert_and_bert_names():
    assert Architecture.from_config(DistilBertConfig()) == DISTILBERT
    assert Architecture.from_config(tiny_config("bert")) == Architecture(2, 64, 4, 128)
    assert Architecture.from_config(tiny_config("roberta")) == Architecture(2, 64, 4, 128)


def test_architecture_reads_each_familys_shape():
    llama, qwen2 = Architecture.from_config(tiny_config("llama")), Architecture.from_config(tiny_config("qwen2"))
    assert (llama.key_value_heads, llama.key_value_width, llama.mlp_projections, llama.causal) == (2, 32, 3, True)
    assert qwen2.windows == (None, 8) and llama.windows == ()
    assert Architecture.from_config(tiny_config("modernbert")).windows == (None, 8)
    assert Architecture.from_config(tiny_config("gpt2")) == Architecture(2, 64, 4, 128, causal=True, head_tokens="all")
    assert Architecture.from_config(tiny_config("albert")).layers == 2


def test_a_query_sees_its_causal_and_windowed_keys():
    assert seen_keys(Architecture(1, 8, 2, 8), 5) == [5] * 5
    assert seen_keys(Architecture(1, 8, 2, 8, causal=True), 5) == [1, 2, 3, 4, 5]
    assert seen_keys(Architecture(1, 8, 2, 8, causal=True, windows=(3,)), 5) == [1, 2, 3, 3, 3]
    assert seen_keys(Architecture(1, 8, 2, 8, windows=(1,)), 5) == [2, 3, 3, 3, 2]


def test_causal_ideal_counts_only_seen_keys_and_sparsity_saves_against_the_causal_dense():
    arch = Architecture(layers=1, hidden=64, heads=4, intermediate=128, causal=True)
    account = layer_account(arch, 10, "topk", 0.5)
    expected_pairs = sum(keep_count(i + 1, 0.5) for i in range(10))  # 1, 1, 2, 2, ... 5, 5
    ideal = account["views"]["ideal_sparse"]["forward"]
    assert ideal["components"]["qk_scores"] == 2 * expected_pairs * 64
    assert ideal["dense_total"] < sum(account["dense"]["forward"].values())  # the causal dense skips the future
    dense_ideal = layer_account(arch, 10, "dense", 0.0)["views"]["ideal_sparse"]["forward"]
    assert dense_ideal["reduction"] == 0 and dense_ideal["components"]["qk_scores"] == 2 * 55 * 64
    assert account["keep_fraction"] == pytest.approx(expected_pairs / 55)


def test_grouped_query_attention_and_gated_mlp_change_projections_only():
    base = Architecture(layers=1, hidden=64, heads=4, intermediate=128)
    gqa = Architecture(layers=1, hidden=64, heads=4, intermediate=128, key_value_heads=1, mlp_projections=3)
    dense, grouped = layer_account(base, 16, "dense", 0.0)["dense"]["forward"], layer_account(gqa, 16, "dense", 0.0)
    grouped = grouped["dense"]["forward"]
    assert grouped["qkv_projections"] == 2 * 16 * 64 * 64 + 4 * 16 * 64 * 16
    assert grouped["ffn"] == 3 * 2 * 16 * 64 * 128 == dense["ffn"] * 3 // 2
    assert grouped["qk_scores"] == dense["qk_scores"]


def test_unsupported_config_names_the_missing_attributes():
    with pytest.raises(ValueError, match="intermediate_size"):
        Architecture.from_config(PretrainedConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2))


# --------------------------------------------------------------------------- measured counter


def random_model(config, attention: str):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    return model.eval()


@pytest.mark.parametrize("attention", ["eager", "sdpa", "crisp"])
@pytest.mark.parametrize("family", list(TINY_NAMES))
def test_analytic_forward_matches_flop_counter(family, attention):
    """Dense analytic matmuls = counted FLOPs; for "crisp" at 80 % top-k too (masking saves nothing)."""
    config = tiny_config(family)
    if attention == "crisp":
        model = sparsify(random_model(config, "eager"), pattern="topk", sparsity=0.8)
    else:
        model = random_model(config, attention)
    assert model.config._attn_implementation == attention
    seq_len = 32
    measured = measure_forward_flops(model, seq_len, batch_size=2)
    analytic = analytic_forward_matmul_flops(Architecture.from_config(config), seq_len, config.num_labels)
    # At this size Q Kᵀ and A V are 8 % of a layer: an uncounted attention kernel fails the 1 %.
    assert measured["per_layer"] == pytest.approx([analytic["per_layer"]] * 2, rel=0.01)
    assert measured["total"] == pytest.approx(analytic["total"], rel=0.01)


def test_analytic_forward_matches_flop_counter_at_distilbert_size():
    config = DistilBertConfig(vocab_size=1000)  # layer sizes of distilbert-base; a small vocabulary inits faster
    measured = measure_forward_flops(random_model(config, "sdpa"), seq_len=128)
    analytic = analytic_forward_matmul_flops(DISTILBERT, 128, config.num_labels)
    assert len(measured["per_layer"]) == 6
    assert measured["total"] == pytest.approx(analytic["total"], rel=0.01)


def test_training_costs_three_forwards_of_matmuls():
    """The account's assumption: a matmul's backward costs twice its forward."""
    config = tiny_config("bert")
    model = random_model(config, "eager").train()
    input_ids = torch.arange(32).view(1, 32) % config.vocab_size
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids).logits.sum().backward()
    analytic = analytic_forward_matmul_flops(Architecture.from_config(config), 32, config.num_labels)
    assert counter.get_total_flops() == pytest.approx(3 * analytic["total"], rel=0.01)


# --------------------------------------------------------------------------- report and rows


def test_rows_follow_the_flops_table_contract():
    report = profile_experiment(DISTILBERT, "aggressive_sparse", "topk", 0.8, [128, 512], model_name="distilbert")
    rows = flops_rows(report)
    table = flops_table([report])
    assert list(table.columns) == CONTRACT_COLUMNS
    assert all(list(row) == CONTRACT_COLUMNS for row in rows)
    assert set(table["view"]) == {"as_executed", "ideal_sparse", "paper_accounting"}
    assert set(table["pass"]) == {"forward", "training"}
    assert set(table["component"]) == set(COMPONENTS) | {"total"}
    assert not ((table["view"] == "paper_accounting") & (table["component"] == "ffn")).any()
    # 2 lengths x 2 passes x (7 + 7 + 6 components with total)
    assert len(table) == 2 * 2 * 20
    assert (table["experiment"] == "aggressive_sparse").all() and (table["sparsity"] == 0.8).all()
    assert table["reduction"].to_numpy() == pytest.approx(1 - table["flops"] / table["dense_flops"])
    parts = table[table["component"] != "total"].groupby(["seq_len", "view", "pass"])["flops"].sum()
    totals = table[table["component"] == "total"].set_index(["seq_len", "view", "pass"])["flops"]
    pandas.testing.assert_series_equal(parts.sort_index(), totals.sort_index(), check_names=False)
    paper = table.query(
        "view == 'paper_accounting' and component == 'total' and seq_len == 512 and `pass` == 'forward'"
    )
    assert round(float(paper["reduction"].iloc[0]), 2) == 0.20


def flops_settings(pattern="topk", sparsity=0.8, options=None, lengths=(16, 32), measure=32, model="tiny:distilbert"):
    attention = {
        "pattern": pattern,
        "sparsity": sparsity,
        "options": options or {},
        "apply": "train_and_eval",
        "attention_dropout": None,
    }
    return {
        "model": model,
        "experiment": "aggressive_sparse",
        "attention": attention,
        "profiling": {"sequence_lengths": list(lengths), "measure_seq_len": measure},
    }


def test_run_profile_writes_json_with_a_measured_section(tmp_path):
    out_path = tmp_path / "flops" / "tiny-distilbert" / "aggressive_sparse.json"
    run_profile(flops_settings(), out_path)
    report = json.loads(out_path.read_text())
    assert report["experiment"] == "aggressive_sparse"
    assert report["model"] == "tiny:distilbert"
    assert report["apply"] == "train_and_eval"
    assert {"layers", "hidden", "heads", "intermediate", "key_value_heads", "causal"} <= set(report["architecture"])
    assert [entry["seq_len"] for entry in report["by_seq_len"]] == [16, 32]
    assert report["by_seq_len"][1]["keys_per_query"] == keep_count(32, 0.8)
    # Masked attention executes the dense count, whatever the implementation.
    assert abs(report["measured"]["relative_difference_total"]) < 0.01
    assert len(flops_rows(report)) == 2 * 2 * 20


def test_run_profile_names_a_missing_settings_key(tmp_path):
    settings = flops_settings()
    del settings["profiling"]
    with pytest.raises(ValueError, match="profiling"):
        run_profile(settings, tmp_path / "x.json")


# --------------------------------------------------------------------------- other patterns


@pytest.mark.parametrize("pattern", ["window", "block_topk", "random"])
def test_fixed_count_patterns_keep_as_many_keys_as_topk(pattern):
    for seq_len in (64, 512):
        account = layer_account(DISTILBERT, seq_len, pattern, 0.8)
        topk = layer_account(DISTILBERT, seq_len, "topk", 0.8)
        assert account["keys_per_query"] == topk["keys_per_query"] == keep_count(seq_len, 0.8)
        for component in ("qk_scores", "softmax", "attention_values"):
            assert (
                account["views"]["ideal_sparse"]["forward"]["components"][component]
                == topk["views"]["ideal_sparse"]["forward"]["components"][component]
            )


def test_block_topk_pays_for_its_pooled_block_scores_in_every_view():
    block_size = 32
    account = layer_account(DISTILBERT, 512, "block_topk", 0.8, {"block_size": block_size})
    topk = layer_account(DISTILBERT, 512, "topk", 0.8)
    pooled = 2 * (512 // block_size) ** 2 * 768 + 2 * 512 * 768  # block pairs + mean pooling of Q and K
    for view in ("as_executed", "ideal_sparse", "paper_accounting"):
        for pass_name in ("forward", "training"):
            entry = account["views"][view][pass_name]
            assert entry["components"]["block_scores"] == pooled
            assert entry["total"] == topk["views"][view][pass_name]["total"] + pooled
    # Executed, the choice is extra work on top of the dense scores: negative saving.
    assert account["views"]["as_executed"]["forward"]["reduction"] < 0
    rows = flops_rows(profile_experiment(DISTILBERT, "blocks", "block_topk", 0.8, [512], options={"block_size": 32}))
    block_rows = [row for row in rows if row["component"] == "block_scores"]
    assert block_rows and all(row["flops"] == pooled and row["dense_flops"] == 0 for row in block_rows)


@pytest.mark.parametrize("pattern", ["sparsemax", "entmax15"])
def test_adaptive_patterns_report_dense_execution_and_no_ideal_view(pattern):
    report = profile_experiment(DISTILBERT, pattern, pattern, None, [128, 512])
    assert report["sparsity"] is None and "kept_fraction" in report["note"]
    for account in report["by_seq_len"]:
        assert account["keys_per_query"] is None and account["keep_fraction"] is None
        assert account["views"]["ideal_sparse"] is None and account["views"]["paper_accounting"] is None
        assert account["model_totals"]["ideal_sparse"] is None
        assert account["views"]["as_executed"]["training"]["reduction"] == 0
    rows = flops_rows(report)
    assert {row["view"] for row in rows} == {"as_executed"}
    assert len(rows) == 2 * 2 * 7
    assert json.loads(json.dumps(report)) == report


def test_topk_report_has_no_note():
    assert profile_experiment(DISTILBERT, "aggressive_sparse", "topk", 0.8, [128])["note"] is None


# --------------------------------------------------------------------------- training FLOPs per example


def test_training_flops_per_example_is_three_forward_matmul_passes():
    forward = analytic_forward_matmul_flops(DISTILBERT, 128, 2)["total"]
    assert training_flops_per_example(DISTILBERT, 128, 2) == 3 * forward
    assert training_flops_per_example(DistilBertConfig(), 128, 2) == 3 * forward
    # About 2 x 3 x 67 M parameters per token at DistilBERT size, minus the embeddings.
    per_token = training_flops_per_example(DISTILBERT, 128, 2) / 128
    assert 6 * 40e6 < per_token < 6 * 60e6
