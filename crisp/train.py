"""Fine-tune one (experiment, seed) with the Hugging Face Trainer and write its run folder.

Where a run's accuracy comes from: `train_run` trains, then `_evaluate` predicts every validation
example once and counts correct/total; metrics.json, predictions.csv and history.csv are written
from that, never from a sampled or batched-and-dropped subset.

Resume: checkpoints live in their own folder (results/checkpoints/<experiment>/seed<seed>/), never
among the run's outputs, because Snakemake deletes a job's outputs before rerunning it. A restarted
run continues from the newest checkpoint whose configuration matches; SIGTERM (what SLURM sends
before preemption) saves a checkpoint at the next step and stops.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from crisp.attention import sparsify
from crisp.config import run_settings, tokenizer_spec
from crisp.data import collator, load_prepared, read_stats
from crisp.errors import ConfigError, TrainingInterrupted
from crisp.modeling import load_model, load_tokenizer

RUN_CONFIG_FILE = "crisp_run_config.json"


@dataclass(frozen=True)
class Hardware:
    device: str
    precision: str


def choose_hardware(training: dict) -> Hardware:
    """Resolve device 'auto' and precision 'auto': bf16 (fp16 without bf16) on CUDA, fp32 on CPU."""
    cuda = torch.cuda.is_available()
    device = training["device"]
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device == "cuda" and not cuda:
        raise ConfigError(
            "config key 'training.device' is 'cuda' but torch sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            "use 'auto' or 'cpu' on this machine"
        )
    precision = training["precision"]
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device == "cuda" else "fp32"
    if device == "cpu" and precision == "fp16":
        raise ConfigError("config key 'training.precision': fp16 needs CUDA; use fp32 or bf16 on CPU")
    return Hardware(device, precision)


class _StopOnSignal(TrainerCallback):
    """Turn SIGTERM into 'save a checkpoint after this step, then stop'."""

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        print("SIGTERM received: saving a checkpoint after the current step, then stopping", flush=True)
        self.received = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True
        return control


class _LogLastStep(TrainerCallback):
    """Log the training loss at the last step too, so the final train loss is really final."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


def _code_digest() -> str:
    """A hash of the modules that define what training computes."""
    digest = hashlib.sha256()
    for module in ("train", "attention", "modeling", "data"):
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


def _accuracy(eval_prediction) -> dict:
    logits, labels = eval_prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _prepare_checkpoint_dir(checkpoint_dir: Path, settings: dict) -> str | None:
    """Return the checkpoint to resume from, discarding checkpoints of a different configuration."""
    stamp = checkpoint_dir / RUN_CONFIG_FILE
    if checkpoint_dir.exists():
        previous = json.loads(stamp.read_text()) if stamp.exists() else None
        if previous != settings:
            print(f"Discarding checkpoints in {checkpoint_dir}: they belong to a different configuration", flush=True)
            shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    # A job killed while saving leaves a checkpoint without trainer_state.json (written last):
    # drop it and fall back to an older complete one, or to the start.
    while (last := get_last_checkpoint(str(checkpoint_dir))) and not (Path(last) / "trainer_state.json").exists():
        print(f"Removing incomplete checkpoint {last}", flush=True)
        shutil.rmtree(last)
    if last:
        print(f"Resuming from {last}", flush=True)
    return last


def _training_arguments(training: dict, hardware: Hardware, seed: int, n_train: int, checkpoint_dir: Path) -> TrainingArguments:
    steps_per_epoch = math.ceil(n_train / (training["batch_size"] * training["gradient_accumulation_steps"]))
    eval_steps = max(1, steps_per_epoch // training["evals_per_epoch"])
    save_steps = max(1, steps_per_epoch // training["checkpoints_per_epoch"])
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=training["batch_size"],
        per_device_eval_batch_size=training["eval_batch_size"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"],
        learning_rate=training["learning_rate"],
        num_train_epochs=training["epochs"],
        warmup_steps=training["warmup_steps"],
        weight_decay=training["weight_decay"],
        max_grad_norm=training["max_grad_norm"],
        lr_scheduler_type=training["lr_scheduler"],
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_strategy="steps",
        logging_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        seed=seed,
        data_seed=seed,
        use_cpu=hardware.device == "cpu",
        bf16=hardware.precision == "bf16",
        fp16=hardware.precision == "fp16",
        report_to="none",
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def _history(log_history: list[dict]) -> list[dict]:
    """One row per evaluation point, with the training loss logged at the same step."""
    train_loss = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
    rows = []
    for entry in log_history:
        if "eval_loss" in entry:
            rows.append(
                {
                    "step": entry["step"],
                    "epoch": round(entry["epoch"], 4),
                    "train_loss": train_loss.get(entry["step"], float("nan")),
                    "validation_loss": entry["eval_loss"],
                    "validation_accuracy": entry["eval_accuracy"],
                }
            )
    return rows


def _evaluate(trainer: Trainer, validation) -> tuple[dict, list[dict]]:
    output = trainer.predict(validation, metric_key_prefix="validation")
    logits = torch.tensor(output.predictions, dtype=torch.float32)
    probabilities = logits.softmax(dim=-1)
    predicted = probabilities.argmax(dim=-1)
    labels = torch.tensor(output.label_ids)
    correct = int((predicted == labels).sum())
    total = int(labels.numel())
    summary = {
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "loss": float(output.metrics["validation_loss"]),
    }
    rows = [
        {"index": i, "label": int(labels[i]), "prediction": int(predicted[i]), "probability": round(float(probabilities[i, predicted[i]]), 6)}
        for i in range(total)
    ]
    return summary, rows


def attention_example(model, tokenizer, text: str, device: str) -> dict:
    """Head-averaged attention probabilities of every layer for one sentence, as the model runs it."""
    model.eval()
    encoded = tokenizer(text, return_tensors="pt", truncation=True).to(device)
    with torch.no_grad():
        output = model(**encoded, output_attentions=True)
    layers = [layer[0].float().mean(dim=0).cpu().numpy().round(5).tolist() for layer in output.attentions]
    return {"text": text, "tokens": tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]), "layers": layers}


def software_versions() -> dict:
    import accelerate
    import datasets
    import transformers

    import crisp

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "crisp": crisp.__version__,
    }


def git_commit() -> str | None:
    """The commit of the crisp source tree, with '-dirty' when it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=source, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def train_run(config: dict, experiment: str, seed: int, data_dir: str | Path, run_dir: str | Path, checkpoint_dir: str | Path) -> dict:
    """Train one (experiment, seed) on the prepared data and write metrics.json, history.csv,
    predictions.csv and attention.json into `run_dir`. Returns the metrics."""
    if experiment not in config["experiments"]:
        raise ConfigError(f"experiment {experiment!r} is not in the configuration's experiments ({', '.join(config['experiments'])})")
    run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
    training = config["training"]
    attention = config["experiments"][experiment]
    hardware = choose_hardware(training)
    if hardware.device == "cpu":
        torch.set_num_threads(training["threads"])

    data = load_prepared(data_dir)
    tokenizer = load_tokenizer(tokenizer_spec(config))
    label_names = read_stats(data_dir)["label_names"]

    set_seed(seed)  # the new classifier head is initialised from this seed
    model = load_model(config["model"], num_labels=len(label_names), id2label=dict(enumerate(label_names)))
    sparsify(model, pattern=attention["pattern"], sparsity=attention["sparsity"], **attention.get("options", {}))

    settings = run_settings(config, experiment, seed)
    # Checkpoints resume only the same settings run by the same training code.
    resume_from = _prepare_checkpoint_dir(checkpoint_dir, {**settings, "code": _code_digest()})
    stop_on_signal = _StopOnSignal()
    trainer = Trainer(
        model=model,
        args=_training_arguments(training, hardware, seed, len(data["train"]), checkpoint_dir),
        train_dataset=data["train"].select_columns(["input_ids", "attention_mask", "labels"]),
        eval_dataset=data["validation"].select_columns(["input_ids", "attention_mask", "labels"]),
        data_collator=collator(tokenizer),
        compute_metrics=_accuracy,
        callbacks=[stop_on_signal, _LogLastStep()],
    )
    start_step = int(json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"]) if resume_from else 0
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        stop_on_signal.restore()
    train_seconds = time.perf_counter() - started
    if stop_on_signal.received:
        raise TrainingInterrupted(f"stopped on SIGTERM at step {trainer.state.global_step}; checkpoint saved in {checkpoint_dir}")

    validation_metrics, predictions = _evaluate(trainer, data["validation"].select_columns(["input_ids", "attention_mask", "labels"]))
    history = _history(trainer.state.log_history)
    logged_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trained_steps = trainer.state.global_step - start_step
    examples_per_step = trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size

    metrics = {
        "experiment": experiment,
        "seed": seed,
        "pattern": attention["pattern"],
        "sparsity": attention["sparsity"],
        "model": config["model"],
        "dataset": config["dataset"]["name"],
        "validation": validation_metrics,
        "train_loss": logged_losses[-1] if logged_losses else float("nan"),
        "train_loss_mean": float(np.mean(logged_losses)) if logged_losses else float("nan"),
        "epochs": training["epochs"],
        "steps": trainer.state.global_step,
        "resumed_from_step": start_step,
        "wall_time_s": round(train_seconds, 3),
        # Measured on this attempt's steps (the last partial batch counted as full); none when a
        # restart found training already finished.
        "train_examples_per_s": round(trained_steps * examples_per_step / train_seconds, 3) if trained_steps > 0 else None,
        "device": hardware.device,
        "precision": hardware.precision,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "run_settings": settings,
        "config": config,
        "versions": software_versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
    }

    run_dir.mkdir(parents=True, exist_ok=True)
    example = attention_example(trainer.model, tokenizer, data["validation"][0]["text"], hardware.device)
    _write_json(run_dir / "attention.json", {"experiment": experiment, "seed": seed, **example})
    _write_csv(run_dir / "history.csv", history, ["step", "epoch", "train_loss", "validation_loss", "validation_accuracy"])
    _write_csv(run_dir / "predictions.csv", predictions, ["index", "label", "prediction", "probability"])
    _write_json(run_dir / "metrics.json", metrics)  # last: its presence means the run is complete
    if not training["keep_checkpoints"]:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        try:
            checkpoint_dir.parent.rmdir()  # <experiment>/ once its last seed is done
        except OSError:
            pass
    return metrics
