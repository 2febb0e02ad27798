"""Fine-tuning (crisp.train): it learns, writes the run folder of the contract, is byte-reproducible on
the CPU, resumes after SIGTERM, SIGKILL or a corrupted checkpoint with the same result, and completes a
run that SIGTERM reaches after training has finished."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

attention = pytest.importorskip("crisp.attention")
if not hasattr(attention, "attention_diagnostics"):
    pytest.skip("crisp.attention.attention_diagnostics is not there yet", allow_module_level=True)

from crisp import runs, train
from crisp.checkpoints import checkpoint_stamp, prepare_checkpoint_dir
from crisp.data import load_prepared, prepare
from crisp.devices import peak_flops_per_s
from crisp.errors import TrainingInterrupted, exit_code
from crisp.flops import Architecture, analytic_forward_matmul_flops
from crisp.modeling import load_model, load_model_config, load_tokenizer
from crisp.tasks import resolve_task
from crisp.train import train_run

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 32
TRAINING = {
    "learning_rate": 3e-3, "batch_size": 32, "eval_batch_size": 64, "epochs": 0.5, "warmup_steps": 2,
    "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_scheduler": "linear", "gradient_accumulation_steps": 1,
    "evals_per_epoch": 2, "checkpoints_per_epoch": 4, "device": "cpu", "precision": "auto",
    "group_by_length": True, "compile": False, "report_to": "none",
}  # 640 examples: 20 steps an epoch; 0.5 epochs = 10 steps, a checkpoint every 5, an evaluation every 10
TOPK = {"pattern": "topk", "sparsity": 0.8, "options": {}, "apply": "train_and_eval", "attention_dropout": None}
DENSE = {"pattern": "dense", "sparsity": 0.0, "options": {}, "apply": "train_and_eval", "attention_dropout": None}
METRICS_KEYS = {
    "task", "dataset", "model", "model_slug", "experiment", "seed", "pattern", "sparsity", "apply",
    "attention_dropout", "metric", "validation", "diagnostics", "train_loss", "train_loss_mean", "steps", "epochs",
    "resumed_from_step", "wall_time_s", "train_examples_per_s", "train_flops", "achieved_flops_per_s",
    "peak_memory_mb", "mfu", "device", "device_name", "precision", "cuda_visible_devices", "settings", "versions",
    "git_commit", "command", "sources", "padding",
}


def task_spec(**synthetic) -> dict:
    return resolve_task({"name": "synthetic", "synthetic": {"train_size": 640, "validation_size": 128,
                                                             "label_noise": 0.0, **synthetic}})


def make_settings(experiment="aggressive_sparse", attention_spec=TOPK, seed=0, model="tiny:bert", **training):
    return {
        "task": "demo", "dataset": task_spec(), "model": model, "model_revision": None, "tokenizer": "bundled:minilm",
        "max_length": MAX_LENGTH, "experiment": experiment, "attention": copy.deepcopy(attention_spec),
        "seed": seed, "training": {**TRAINING, **training},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """640 synthetic training and 128 validation sentences, tokenised once."""
    return prepare(task_spec(), "bundled:minilm", MAX_LENGTH, tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted top-k run of 10 steps, its checkpoints (steps 5 and 10) kept."""
    root = tmp_path_factory.mktemp("reference")
    metrics = train_run(make_settings(), data, root / "run", root / "checkpoints", threads=2, keep_checkpoints=True)
    return root, metrics


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in runs.TIMING_KEYS}


def same_result(run_dir: Path, reference_dir: Path) -> None:
    """Identical validation results and predictions, and identical evaluation points in the history."""
    assert runs.read_metrics(run_dir)["validation"] == runs.read_metrics(reference_dir)["validation"]
    assert (run_dir / "predictions.csv").read_bytes() == (reference_dir / "predictions.csv").read_bytes()
    columns = ["step", "validation_loss", "validation_accuracy"]
    assert runs.read_history(run_dir)[columns].equals(runs.read_history(reference_dir)[columns])


def test_fine_tuning_beats_chance(data, tmp_path):
    settings = make_settings("dense_baseline", DENSE, epochs=6, evals_per_epoch=1, checkpoints_per_epoch=1)
    metrics = train_run(settings, data, tmp_path / "run", tmp_path / "ck")
    validation = metrics["validation"]
    # chance is 0.5 on balanced data; 0.7 on 128 examples is more than four standard errors above it
    assert validation["accuracy"] >= 0.7, validation
    assert metrics["steps"] == 120 and metrics["train_loss"] < 0.6
    history = runs.read_history(tmp_path / "run")
    assert len(history) == 6 and history["validation_loss"].iloc[-1] < history["validation_loss"].iloc[0]
    assert history["train_loss"].iloc[-1] == metrics["train_loss"]  # logged at the very last step
    assert not (tmp_path / "ck").exists()  # removed once the run folder is complete


def test_the_run_folder_follows_the_contract(reference, data):
    root, metrics = reference
    run_dir = root / "run"
    assert set(metrics) == METRICS_KEYS
    assert runs.read_metrics(run_dir) == json.loads(json.dumps(metrics))
    validation = metrics["validation"]
    assert set(validation) == {"accuracy", "correct", "total", "loss", "mcc", "f1", "primary", "nll", "ece", "brier"}
    assert validation["total"] == 128 and validation["accuracy"] == validation["correct"] / 128
    assert validation["primary"] == validation["accuracy"] and metrics["metric"] == "accuracy"
    assert validation["nll"] == pytest.approx(validation["loss"], rel=1e-4)
    assert (metrics["pattern"], metrics["sparsity"], metrics["apply"]) == ("topk", 0.8, "train_and_eval")
    assert (metrics["model_slug"], metrics["steps"], metrics["resumed_from_step"]) == ("tiny-bert", 10, 0)
    assert metrics["settings"] == make_settings()
    assert metrics["sources"] == {  # what the run was made from: no Hub input, so no commits
        "model": {"id": "tiny:bert", "revision": None},
        "tokenizer": {"id": "bundled:minilm", "revision": None},
        "dataset": {"id": "synthetic", "config": None, "revision": None},
    }
    assert metrics["padding"] == {"token": "[PAD]", "token_id": 0, "side": "right", "end_of_sequence": False}
    assert len(metrics["diagnostics"]["attention_entropy"]) == len(metrics["diagnostics"]["kept_fraction"]) == 2

    predictions = runs.read_predictions(run_dir)
    assert list(predictions.index) == list(range(128))
    # row i is validation example i, in every run: runs are compared example by example
    assert list(predictions["label"]) == load_prepared(data)["validation"]["labels"]
    probabilities = predictions[["prob_0", "prob_1"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=2e-6)
    assert (predictions["prediction"] == probabilities.argmax(axis=1)).all()
    assert (predictions["label"] == predictions["prediction"]).sum() == validation["correct"]
    np.testing.assert_allclose(predictions["probability"], probabilities.max(axis=1))

    history = runs.read_history(run_dir)
    assert list(history["step"]) == [10] and history["validation_primary"].iloc[-1] == validation["primary"]

    example = runs.read_attention(run_dir)
    assert len(example["layers"]) == 2 and len(example["tokens"]) <= MAX_LENGTH
    assert all(abs(sum(row) - 1) < 1e-3 for row in example["layers"][-1])

    # 3 x the forward matmul FLOPs of each training example at its own length, over 0.5 epochs
    lengths = [len(ids) for ids in load_prepared(data)["train"]["input_ids"]]
    architecture = Architecture.from_config(load_model_config("tiny:bert"))
    expected = 3 * 0.5 * sum(analytic_forward_matmul_flops(architecture, n, 2)["total"] for n in lengths)
    assert metrics["train_flops"] == pytest.approx(expected)
    assert metrics["achieved_flops_per_s"] > 0 and metrics["peak_memory_mb"] > 0
    assert metrics["mfu"] is None and metrics["device"] == "cpu"  # no utilisation without a known GPU


def test_a_decoder_reads_padding_by_the_id_its_tokenizer_pads_with(data, tmp_path):
    """A decoder whose tokenizer has no pad token pads with end-of-sequence, and its classifier
    (which finds each example's last real token by the pad id) is told that id, whatever the
    config's own end-of-sequence id; metrics.json records it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from crisp.families import tiny_family
    from crisp.modeling import _bundled_minilm_path
    from crisp.train import build, padding

    folder = tmp_path / "decoder"
    config = tiny_family("llama").tiny(30522, num_labels=2)
    config.pad_token_id, config.eos_token_id = None, 7
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(_bundled_minilm_path())
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    tokenizer.save_pretrained(folder)

    settings = {**make_settings(model=str(folder)), "tokenizer": str(folder)}
    built = build(settings, data)
    assert built.tokenizer.pad_token == "[SEP]"
    assert built.model.config.pad_token_id == built.tokenizer.pad_token_id == 102
    assert padding(built.tokenizer, built.model) == {
        "token": "[SEP]", "token_id": 102, "side": "right", "end_of_sequence": True,
    }


def test_the_same_seed_twice_gives_byte_identical_results(reference, data, tmp_path):
    root, metrics = reference
    again = train_run(make_settings(), data, tmp_path / "run", tmp_path / "ck", threads=2)
    assert without_timings(again) == without_timings(metrics)
    for name in ("predictions.csv", "history.csv", "attention.json"):
        assert (tmp_path / "run" / name).read_bytes() == (root / "run" / name).read_bytes(), name


def copy_checkpoints(reference_root: Path, destination: Path) -> Path:
    shutil.copytree(reference_root / "checkpoints", destination)
    assert sorted(path.name for path in destination.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    return destination


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.json", "optimizer.pt"])
def test_a_corrupted_newest_checkpoint_falls_back_to_an_older_one(reference, data, tmp_path, capfd, damaged):
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")
    truncate(checkpoints / "checkpoint-10" / damaged)

    metrics = train_run(make_settings(), data, tmp_path / "run", checkpoints, threads=2)
    log = capfd.readouterr().out
    assert f"Removing unusable checkpoint {checkpoints / 'checkpoint-10'}: {damaged}" in log
    assert f"Resuming from {checkpoints / 'checkpoint-5'}" in log
    assert metrics["resumed_from_step"] == 5 and metrics["steps"] == 10
    same_result(tmp_path / "run", root / "run")


def test_with_every_checkpoint_corrupted_training_starts_over(reference, data, tmp_path, capfd):
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")
    truncate(checkpoints / "checkpoint-10" / "model.safetensors")
    (checkpoints / "checkpoint-5" / "trainer_state.json").unlink()  # killed while saving

    assert prepare_checkpoint_dir(checkpoints, checkpoint_stamp(make_settings(), data)) is None
    assert not list(checkpoints.glob("checkpoint-*"))
    assert capfd.readouterr().out.count("Removing unusable checkpoint") == 2


def test_checkpoints_of_other_settings_are_not_resumed(reference, data, tmp_path, capfd):
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")
    assert prepare_checkpoint_dir(checkpoints, checkpoint_stamp(make_settings(seed=1), data)) is None
    assert "different configuration" in capfd.readouterr().out and not list(checkpoints.glob("checkpoint-*"))
    # where training is reported to changes no result: the checkpoints stay usable
    checkpoints = copy_checkpoints(root, tmp_path / "ck2")
    resumed = prepare_checkpoint_dir(checkpoints, checkpoint_stamp(make_settings(report_to="tensorboard"), data))
    assert resumed == str(checkpoints / "checkpoint-10")


def test_sigterm_during_training_saves_a_checkpoint_and_the_rerun_resumes(reference, data, tmp_path, monkeypatch):
    root, _ = reference
    handler_before = signal.getsignal(signal.SIGTERM)
    real_step_end = train._LogLastStep.on_step_end

    def sigterm_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(train._LogLastStep, "on_step_end", sigterm_at_step_3)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train_run(make_settings(), data, tmp_path / "run", tmp_path / "ck", threads=2)
    assert exit_code(interrupted.value) == 128 + signal.SIGTERM  # what SLURM and Snakemake retry
    assert signal.getsignal(signal.SIGTERM) == handler_before
    assert not (tmp_path / "run" / "metrics.json").exists()
    # the signal arrives during step 3; the run saves and stops at the end of the next step
    assert [path.name for path in (tmp_path / "ck").glob("checkpoint-*")] == ["checkpoint-4"]

    monkeypatch.setattr(train._LogLastStep, "on_step_end", real_step_end)
    metrics = train_run(make_settings(), data, tmp_path / "run", tmp_path / "ck", threads=2)
    assert metrics["resumed_from_step"] == 4
    same_result(tmp_path / "run", root / "run")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("stage", ["evaluate", "write_run"])
def test_sigterm_after_training_finished_still_completes_the_run(reference, data, tmp_path, monkeypatch, stage):
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")  # training already at its last step
    handler_before = signal.getsignal(signal.SIGTERM)
    real = getattr(train, stage)

    def sigterm_first(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, stage, sigterm_first)
    metrics = train_run(make_settings(), data, tmp_path / "run", checkpoints, threads=2)
    assert metrics["resumed_from_step"] == 10 and metrics["train_examples_per_s"] is None
    assert signal.getsignal(signal.SIGTERM) == handler_before
    same_result(tmp_path / "run", root / "run")


def test_sigkill_mid_training_resumes_to_the_same_result(reference, data, tmp_path):
    root, _ = reference
    checkpoints = tmp_path / "ck"
    driver = (
        "import json, sys\n"
        "from crisp.train import train_run\n"
        "train_run(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], threads=2)\n"
    )
    command = [sys.executable, "-c", driver, json.dumps(make_settings()), str(data), str(tmp_path / "run"),
               str(checkpoints)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (checkpoints / "checkpoint-5" / "trainer_state.json").exists():  # a complete checkpoint
            assert process.poll() is None, "training ended before it wrote a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        process.kill()
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert not (tmp_path / "run" / "metrics.json").exists()

    metrics = train_run(make_settings(), data, tmp_path / "run", checkpoints, threads=2)
    assert metrics["resumed_from_step"] == 5
    same_result(tmp_path / "run", root / "run")


def test_length_grouped_batches_cover_every_example_once_per_epoch_and_follow_the_seed(data, tmp_path):
    built = train.build(make_settings(), data)
    hardware = train.Hardware("cpu", "fp32")
    trainer = train.make_trainer(built, make_settings(), hardware, tmp_path)
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler.sampler
    assert isinstance(sampler, train.EpochSeededLengthGroupedSampler)  # what training iterates

    def epoch_order(sampler, epoch):
        sampler.set_epoch(epoch)
        return list(sampler)

    epochs = [epoch_order(sampler, epoch) for epoch in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(len(built.train)))  # every example exactly once
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch
    again = train.make_trainer(built, make_settings(), hardware, tmp_path)._get_train_sampler()
    assert [epoch_order(again, epoch) for epoch in range(3)] == epochs  # reproducible from the seed
    other_seed = train.make_trainer(built, make_settings(seed=1), hardware, tmp_path)._get_train_sampler()
    assert epoch_order(other_seed, 0) != epochs[0]

    # batches of similar length: far less padding than random batches of the same size
    lengths = train.token_lengths(built.train)

    def padding(order):
        batches = [lengths[order[i:i + 32]] for i in range(0, len(order), 32)]
        return sum(int(batch.max() * len(batch) - batch.sum()) for batch in batches)

    shuffled = np.random.default_rng(0).permutation(len(lengths))
    assert padding(epochs[0]) < 0.5 * padding(shuffled)

    ungrouped = train.make_trainer(built, make_settings(group_by_length=False), hardware, tmp_path)
    assert not isinstance(ungrouped._get_train_sampler(), train.EpochSeededLengthGroupedSampler)


def test_training_arguments_follow_the_settings(tmp_path):
    cpu = train.Hardware("cpu", "fp32")
    arguments = train.training_arguments({**TRAINING, "compile": True, "report_to": "tensorboard"}, cpu, 0, 640,
                                         tmp_path)
    assert arguments.torch_compile and arguments.report_to == ["tensorboard"]
    assert arguments.train_sampling_strategy == "group_by_length" and arguments.save_total_limit == 2
    assert (arguments.optim, arguments.dataloader_num_workers, arguments.dataloader_pin_memory) == (
        "adamw_torch_fused", 0, False)
    default = train.training_arguments(TRAINING, cpu, 0, 640, tmp_path)
    assert not default.torch_compile and default.report_to in ("none", [], ["none"])


def test_report_to_tensorboard_logs_under_the_run_folder(reference, data, tmp_path):
    pytest.importorskip("tensorboard")
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")
    shutil.rmtree(checkpoints / "checkpoint-10")  # train the last 5 steps
    train_run(make_settings(report_to="tensorboard"), data, tmp_path / "run", checkpoints, threads=2)
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ


def test_the_attention_example_is_cut_at_max_length_and_shows_pairs(tmp_path):
    spec = resolve_task({"name": "synthetic", "synthetic": {"train_size": 32, "validation_size": 8, "pairs": True}})
    prepared = prepare(spec, "bundled:minilm", 12, tmp_path / "pairs")
    validation = load_prepared(prepared)["validation"]
    if "text_pair" not in validation.column_names:
        pytest.skip("crisp.data does not prepare sentence pairs yet")
    example = validation[0]
    torch.manual_seed(0)
    model = attention.sparsify(load_model("tiny:bert"), "topk", 0.5)
    tokenizer = load_tokenizer("bundled:minilm")
    shown = train.attention_example(model, tokenizer, example, "cpu")
    assert shown["tokens"] == tokenizer.convert_ids_to_tokens(example["input_ids"])
    assert len(shown["tokens"]) <= 12 and shown["tokens"].count("[SEP]") == 2  # both sentences, as a pair
    assert (shown["text"], shown["text_pair"]) == (example["text"], example["text_pair"])
    assert len(shown["layers"][0]) == len(shown["tokens"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_short_bf16_fine_tuning_on_cuda(data, tmp_path):
    metrics = train_run(make_settings(device="cuda"), data, tmp_path / "run", tmp_path / "ck")
    assert (metrics["device"], metrics["precision"]) == ("cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert metrics["peak_memory_mb"] > 0 and metrics["achieved_flops_per_s"] > 0
    peak = peak_flops_per_s(torch.cuda.get_device_name(), metrics["precision"])
    assert metrics["mfu"] == (pytest.approx(metrics["achieved_flops_per_s"] / peak) if peak else None)
    assert metrics["validation"]["total"] == 128


# ------------------------------------------------------------------------------------------ what a resume depends on


def interrupt_at_step(monkeypatch, step: int) -> None:
    """SIGTERM during training step `step`, as SLURM sends it before preemption."""
    real_step_end = train._LogLastStep.on_step_end

    def sigterm_at_step(self, args, state, control, **kwargs):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(train._LogLastStep, "on_step_end", sigterm_at_step)


def write_local_task(folder: Path, flipped: bool = False) -> dict:
    """The synthetic sentences as local TSV files (train.tsv, dev.tsv), their labels flipped if asked."""
    from crisp.synthetic import generate_synthetic

    folder.mkdir(parents=True, exist_ok=True)
    for name, split, size in (("train.tsv", "train", 640), ("dev.tsv", "validation", 128)):
        frame = generate_synthetic(size, seed=0, split=split)
        if flipped:
            frame["label"] = 1 - frame["label"]
        frame.to_csv(folder / name, sep="\t", index=False)
    return resolve_task({"name": "local", "train_file": str(folder / "train.tsv"),
                         "validation_file": str(folder / "dev.tsv"), "text_column": "text"})


def test_changed_data_files_never_resume_an_old_checkpoint(tmp_path, monkeypatch, capfd):
    spec = write_local_task(tmp_path / "files")
    settings = {**make_settings(), "dataset": spec}
    prepared = prepare(spec, "bundled:minilm", MAX_LENGTH, tmp_path / "data")
    interrupt_at_step(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train_run(settings, prepared, tmp_path / "run", tmp_path / "ck", threads=2)
    monkeypatch.undo()
    assert list((tmp_path / "ck").glob("checkpoint-*"))

    # The labels flipped in both files, at the same paths: the data job reruns, the settings are unchanged.
    write_local_task(tmp_path / "files", flipped=True)
    prepare(spec, "bundled:minilm", MAX_LENGTH, tmp_path / "data")
    capfd.readouterr()
    metrics = train_run(settings, prepared, tmp_path / "run", tmp_path / "ck", threads=2)
    assert "different configuration" in capfd.readouterr().out
    assert metrics["resumed_from_step"] == 0
    fresh = train_run(settings, prepared, tmp_path / "fresh", tmp_path / "ck-fresh", threads=2)
    assert without_timings(metrics) == without_timings(fresh)
    same_result(tmp_path / "run", tmp_path / "fresh")


def test_a_local_model_folder_replaced_in_place_never_resumes_an_old_checkpoint(data, tmp_path, monkeypatch, capfd):
    folder = tmp_path / "model"
    torch.manual_seed(0)
    load_model("tiny:bert").save_pretrained(folder)
    settings = make_settings(model=str(folder))
    stamp = checkpoint_stamp(settings, data)
    interrupt_at_step(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        train_run(settings, data, tmp_path / "run", tmp_path / "ck", threads=2)
    monkeypatch.undo()

    torch.manual_seed(1)
    load_model("tiny:bert").save_pretrained(folder)  # other weights under the same path
    assert checkpoint_stamp(settings, data) != stamp
    capfd.readouterr()
    metrics = train_run(settings, data, tmp_path / "run", tmp_path / "ck", threads=2)
    assert "different configuration" in capfd.readouterr().out
    assert metrics["resumed_from_step"] == 0


# ------------------------------------------------------------------------------------------ gradient accumulation


@pytest.mark.parametrize("model", ["tiny:distilbert", "tiny:bert", "tiny:roberta"])
def test_gradient_accumulation_matches_the_same_batch_in_one_step(data, tmp_path, model):
    """Batch 16 x 2 accumulation steps trains as batch 32 x 1: the same losses, gradient norms and metrics."""
    dense = {**DENSE, "attention_dropout": 0.0}

    def history(batch_size: int, accumulation: int) -> list[dict]:
        settings = make_settings("dense_baseline", dense, model=model, batch_size=batch_size,
                                 gradient_accumulation_steps=accumulation, evals_per_epoch=4)
        built = train.build(settings, data)
        for module in built.model.modules():  # no dropout: its masks are drawn per batch shape
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trainer = train.make_trainer(built, settings, train.Hardware("cpu", "fp32"),
                                     tmp_path / f"ck-{batch_size}", callbacks=[train._LogLastStep()])
        trainer.train()
        return trainer.state.log_history

    accumulated, single = history(16, 2), history(32, 1)
    assert [entry["step"] for entry in accumulated] == [entry["step"] for entry in single]
    for step_accumulated, step_single in zip(accumulated, single):
        for key in ("loss", "grad_norm", "eval_loss", "eval_accuracy", "eval_primary", "train_loss"):
            if key in step_single:
                assert step_accumulated[key] == pytest.approx(step_single[key], rel=1e-4, abs=1e-6), (
                    step_single["step"], key)
    assert sum("loss" in entry for entry in single) >= 2 and sum("grad_norm" in entry for entry in single) >= 2


# ------------------------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("diverging", [{"learning_rate": 1e300}, {"weight_decay": float("nan")}])
def test_a_run_whose_loss_becomes_non_finite_fails_naming_the_step(data, tmp_path, diverging):
    from crisp.errors import USER_ERRORS, TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"step \d+") as diverged:
        train_run(make_settings(**diverging), data, tmp_path / "run", tmp_path / "ck", threads=2)
    assert isinstance(diverged.value, USER_ERRORS) and exit_code(diverged.value) == 1  # the job fails
    assert "\n" not in str(diverged.value)
    assert not (tmp_path / "run" / "metrics.json").exists()  # nothing for the tables to read


# ------------------------------------------------------------------------------------------ unloadable checkpoints


class _NotATensor:
    pass


@pytest.mark.parametrize("damaged", ["optimizer.pt", "rng_state.pth"])
def test_an_unloadable_newest_checkpoint_falls_back_to_an_older_one(reference, data, tmp_path, capfd, damaged):
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")
    # a complete archive that cannot be unpickled safely (what a different torch or a foreign file gives)
    torch.save({"state": _NotATensor()}, checkpoints / "checkpoint-10" / damaged)

    metrics = train_run(make_settings(), data, tmp_path / "run", checkpoints, threads=2)
    log = capfd.readouterr().out
    assert f"Removing unusable checkpoint {checkpoints / 'checkpoint-10'}: {damaged}" in log
    assert f"Resuming from {checkpoints / 'checkpoint-5'}" in log
    assert metrics["resumed_from_step"] == 5
    same_result(tmp_path / "run", root / "run")


# ------------------------------------------------------------------------------------------ one run at a time


def test_a_second_train_on_the_same_folders_stops_at_once(data, tmp_path):
    from crisp.errors import USER_ERRORS

    driver = (
        "import json, sys\n"
        "from crisp.train import train_run\n"
        "train_run(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], threads=1)\n"
    )
    checkpoints = tmp_path / "ck"
    settings = make_settings(epochs=20)  # long enough to be running while the second one starts
    process = subprocess.Popen([sys.executable, "-c", driver, json.dumps(settings), str(data), str(tmp_path / "run"),
                                str(checkpoints)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):  # the first is training
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(USER_ERRORS, match="another `crisp train`") as busy:
            train_run(settings, data, tmp_path / "run", checkpoints, threads=1)
        assert time.monotonic() - started < 30 and str(tmp_path / "run") in str(busy.value)
        assert process.poll() is None  # the first one goes on, its checkpoints untouched
        assert list(checkpoints.glob("checkpoint-*"))
    finally:
        process.kill()
        process.wait(timeout=60)


def test_the_lock_dies_with_its_process(reference, data, tmp_path):
    root, _ = reference
    checkpoints = copy_checkpoints(root, tmp_path / "ck")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from crisp.checkpoints import run_lock\n"
        "with run_lock(Path(sys.argv[1]), Path(sys.argv[2])):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"), str(tmp_path / "run"), str(checkpoints)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match="another `crisp train`"):
            train_run(make_settings(), data, tmp_path / "run", checkpoints, threads=2)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    metrics = train_run(make_settings(), data, tmp_path / "run", checkpoints, threads=2)
    assert metrics["resumed_from_step"] == 10
    same_result(tmp_path / "run", root / "run")


@pytest.mark.parametrize("unwritable", ["read-only", "under a file"])
def test_a_run_folder_that_cannot_be_written_is_reported_before_training(data, tmp_path, monkeypatch, unwritable):
    from crisp.errors import USER_ERRORS

    if unwritable == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        run_dir.chmod(0o555)
    else:
        (tmp_path / "file").write_text("")
        run_dir = tmp_path / "file" / "run"

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "fit", no_training)
    with pytest.raises(USER_ERRORS, match="cannot be written") as error:
        train_run(make_settings(), data, run_dir, tmp_path / "ck", threads=2)
    assert str(run_dir) in str(error.value)


def test_crisp_train_on_a_folder_that_cannot_be_written_fails_in_one_line(data, tmp_path, capsys):
    from crisp.cli import main
    from crisp.settings import as_json

    (tmp_path / "file").write_text("")
    code = main(["train", "--settings", as_json(make_settings()), "--data", str(data),
                 "--out", str(tmp_path / "file" / "run"), "--checkpoints", str(tmp_path / "ck")])
    error = capsys.readouterr().err
    assert code == 1 and "cannot be written" in error and "Traceback" not in error
    assert error.strip().count("\n") == 0, error
