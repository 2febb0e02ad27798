"""Fine-tune one run (task, model, experiment, seed) with the Hugging Face Trainer and write its run folder.

`train_run` does four things, one function each:

    build      load the prepared data, the tokenizer and the model; set the attention dropout and the
               sparse attention of the experiment
    fit        train with the Trainer, resuming from the newest usable checkpoint (crisp.checkpoints)
    evaluate   predict every validation example once (batched), with attention diagnostics recorded;
               accuracy, the task's primary metric, NLL, ECE and Brier come from crisp.metrics
    write      metrics.json, history.csv, predictions.csv, attention.json through crisp.runs

Where a run's accuracy comes from: `evaluate` counts correct/total over every validation example,
never over a sampled or batched-and-dropped subset; the Trainer's evaluations during training use
the same crisp.metrics functions.

Resume: crisp.checkpoints (where checkpoints live, which one a restarted run continues from, the
fallback when the newest is damaged). SIGTERM (what SLURM sends before preemption) is handled for the
whole of `train_run`: during training it saves a checkpoint at the next step and stops
(TrainingInterrupted, exit 143); once training has finished, the run completes its evaluation and
writes instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from crisp.attention import attention_diagnostics, sparsify
from crisp.checkpoints import (
    CHECKPOINTS_KEPT,
    Fit,
    StopOnSignal,
    checkpoint_stamp,
    fit,
    prepare_checkpoint_dir,
    run_lock,
)
from crisp.data import collator, load_prepared, read_stats
from crisp.devices import peak_flops_per_s
from crisp.errors import ConfigError, TrainingDiverged
from crisp.families import family_of
from crisp.flops import Architecture, analytic_forward_matmul_flops
from crisp.layout import model_slug
from crisp.metrics import classification_metrics, primary_metric
from crisp.modeling import load_model, load_tokenizer
from crisp.runs import write_run

# Columns the model takes; the prepared data also holds text (and text_pair) for display.
MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")
# DataLoader worker processes on CUDA (on the CPU they would compete with training for the cores).
CUDA_DATALOADER_WORKERS = 4
# Backward of a matmul is two matmuls of its size, so training costs 3x the forward FLOPs.
TRAINING_FLOPS_PER_FORWARD = 3


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


# ------------------------------------------------------------------------------------------ callbacks


class _LogLastStep(TrainerCallback):
    """Log the training loss at the last step too, so the final train loss is really final."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


# ------------------------------------------------------------------------------------------ batches


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """The Trainer's length grouping (batches of similar length, in random order) with its randomness
    drawn from `seed + epoch` rather than from torch's global generator.

    Each epoch is a permutation of every example, different per epoch, the same in every run with the
    seed, and the same again when a run resumes mid-epoch (the global generator's state there depends on
    what ran before the interruption). Lengths are read from the Arrow column, not example by example.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


def token_lengths(dataset) -> np.ndarray:
    """Tokens per example of a prepared split (its input_ids lists), without a Python loop."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.column("input_ids")).to_numpy(zero_copy_only=False)


def classification_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of a micro-batch, summed and divided by the examples of the whole optimizer step.

    The Trainer's compute_loss_func. transformers 5 passes the step's example count (num_items_in_batch)
    and then does not divide the loss by the gradient accumulation steps; the models' own loss is a
    per-batch mean that ignores the count, so with accumulation it would double the loss and the
    gradient. Summed and divided by the count, batch 16 x 2 steps gives what batch 32 x 1 gives, also
    when the last batches of an epoch are short.
    """
    logits = outputs["logits"]
    labels = labels.to(logits.device).view(-1)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
    return loss / count


class CrispTrainer(Trainer):
    """The Trainer, with length-grouped training batches that are reproducible across resumes, evaluation
    in dataset order, and a stop with TrainingDiverged at the first step whose loss is not finite."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer would log the mean of earlier losses instead (logging_nan_inf_filter) and train on.
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1} of "
                f"{self.state.max_steps}: the run diverged and is not written; lower training.learning_rate "
                "(or check training.weight_decay, training.max_grad_norm and the data)"
            )
        return loss

    def _get_eval_sampler(self, eval_dataset):
        # In dataset order, always: the Trainer would group evaluation batches by length too, in an
        # order that depends on the seed, and predictions.csv must list the same example in the same
        # row for every run so that runs can be compared example by example.
        if eval_dataset is None:
            return None
        return torch.utils.data.SequentialSampler(eval_dataset)

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=token_lengths(train_dataset).tolist(),
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )


# ------------------------------------------------------------------------------------------ build


@dataclass
class Built:
    model: torch.nn.Module
    tokenizer: object
    train: object  # datasets.Dataset, model columns only
    validation: object
    validation_display: object  # the validation split with its text columns
    label_names: list[str]


def build(settings: dict, data_dir: str | Path, model_revision: str | None = None) -> Built:
    """The prepared data, the tokenizer and the model of the run, its sparse attention applied.
    model_revision: the commit of a Hub model (its fetch record's), for the model and its tokenizer."""
    attention = settings["attention"]
    data = load_prepared(data_dir)
    label_names = read_stats(data_dir)["label_names"]
    tokenizer = load_tokenizer(settings["tokenizer"], model=settings["model"], revision=model_revision)
    set_seed(settings["seed"])  # the new classifier head is initialised from this seed
    model = load_model(
        settings["model"],
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        attention_dropout=attention["attention_dropout"],
        revision=model_revision,
    )
    family = family_of(model.config.model_type)
    if family is not None and family.causal and tokenizer.pad_token_id is not None:
        # A decoder classifier reads each example's last token that is not padding, found by the pad
        # id: it must be the id the collator pads with (end-of-sequence where the tokenizer has no
        # pad token of its own, crisp.modeling.load_tokenizer), not the config's own guess.
        model.config.pad_token_id = tokenizer.pad_token_id
    sparsify(
        model,
        attention["pattern"],
        attention["sparsity"],
        apply=attention["apply"],
        seed=settings["seed"],
        **attention["options"],
    )
    columns = [column for column in MODEL_COLUMNS if column in data["train"].column_names]
    return Built(
        model=model,
        tokenizer=tokenizer,
        train=data["train"].select_columns(columns),
        validation=data["validation"].select_columns(columns),
        validation_display=data["validation"],
        label_names=list(label_names),
    )


def training_arguments(
    training: dict, hardware: Hardware, seed: int, n_train: int, checkpoint_dir: Path
) -> TrainingArguments:
    steps_per_epoch = math.ceil(n_train / (training["batch_size"] * training["gradient_accumulation_steps"]))
    eval_steps = max(1, steps_per_epoch // training["evals_per_epoch"])
    save_steps = max(1, steps_per_epoch // training["checkpoints_per_epoch"])
    cuda = hardware.device == "cuda"
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
        # Batches of similar length (less padding), reshuffled every epoch from the seed.
        train_sampling_strategy="group_by_length" if training["group_by_length"] else "random",
        torch_compile=training["compile"],
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_strategy="steps",
        logging_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=CHECKPOINTS_KEPT,
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        bf16=hardware.precision == "bf16",  # autocast
        fp16=hardware.precision == "fp16",
        tf32=True if cuda and torch.cuda.get_device_capability()[0] >= 8 else None,  # Ampere and newer
        optim="adamw_torch_fused",  # one kernel per step on CUDA and on CPU (about 4x the for-each AdamW on 2 cores)
        dataloader_pin_memory=cuda,
        dataloader_num_workers=min(CUDA_DATALOADER_WORKERS, os.cpu_count() or 1) if cuda else 0,
        report_to=training["report_to"],
        disable_tqdm=False,
    )


def make_trainer(built: Built, settings: dict, hardware: Hardware, checkpoint_dir: Path, callbacks=()) -> Trainer:
    return CrispTrainer(
        model=built.model,
        args=training_arguments(settings["training"], hardware, settings["seed"], len(built.train), checkpoint_dir),
        train_dataset=built.train,
        eval_dataset=built.validation,
        data_collator=collator(built.tokenizer),
        compute_metrics=metrics_for(settings["dataset"]["metric"]),
        compute_loss_func=classification_loss,
        callbacks=list(callbacks),
    )


def _probabilities(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(logits)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def metrics_for(metric: str):
    """The Trainer's compute_metrics: the same numbers as the final evaluation, from crisp.metrics."""

    def compute(eval_prediction) -> dict:
        logits, labels = eval_prediction
        probabilities = _probabilities(logits)
        labels = np.asarray(labels)
        return {
            **classification_metrics(labels, probabilities),
            "primary": primary_metric(metric, labels, probabilities.argmax(axis=-1)),
        }

    return compute


# ------------------------------------------------------------------------------------------ evaluate


def evaluate(trainer: Trainer, built: Built, metric: str) -> tuple[dict, object, dict]:
    """Every validation example once: (validation metrics, predictions frame, attention diagnostics)."""
    import pandas as pd

    with attention_diagnostics(trainer.model) as recorder:
        output = trainer.predict(built.validation, metric_key_prefix="validation")
    diagnostics = recorder.summary()
    probabilities = _probabilities(output.predictions)
    labels = np.asarray(output.label_ids)
    predicted = probabilities.argmax(axis=-1)
    computed = classification_metrics(labels, probabilities)
    validation = {
        "accuracy": computed["accuracy"],
        "correct": int(computed["correct"]),
        "total": int(computed["total"]),
        "loss": float(output.metrics["validation_loss"]),
        "mcc": computed["mcc"],
        "f1": computed["f1"],
        "primary": primary_metric(metric, labels, predicted),
        "nll": computed["nll"],
        "ece": computed["ece"],
        "brier": computed["brier"],
    }
    validation = {key: value if isinstance(value, int) else float(value) for key, value in validation.items()}
    predictions = pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "label": labels.astype(int),
            "prediction": predicted,
            "probability": probabilities[np.arange(len(labels)), predicted].round(6),
            **{f"prob_{k}": probabilities[:, k].round(6) for k in range(probabilities.shape[1])},
        }
    )
    return validation, predictions, {key: [float(v) for v in values] for key, values in diagnostics.items()}


def attention_example(model, tokenizer, example: dict, device: str) -> dict:
    """Head-averaged attention probabilities of every layer for one prepared example, as the model runs
    it: truncated at the configured max_length, a sentence pair encoded as a pair."""
    model.eval()
    inputs = {
        key: torch.tensor([example[key]], device=device)
        for key in ("input_ids", "attention_mask", "token_type_ids")
        if key in example
    }
    with torch.no_grad():
        output = model(**inputs, output_attentions=True)
    layers = [layer[0].float().mean(dim=0).cpu().numpy().round(5).tolist() for layer in output.attentions]
    shown = {"text": example["text"]}
    if example.get("text_pair") is not None:
        shown["text_pair"] = example["text_pair"]
    return {**shown, "tokens": tokenizer.convert_ids_to_tokens(example["input_ids"]), "layers": layers}


# ------------------------------------------------------------------------------------------ cost


def train_flops(model_config, train, num_labels: int, epochs: float) -> float:
    """Analytic training FLOPs: 3 x forward matmul FLOPs of every example at its real (unpadded)
    length, per epoch, times the epochs trained."""
    lengths = token_lengths(train)
    architecture = Architecture.from_config(model_config)
    values, counts = np.unique(lengths, return_counts=True)
    per_epoch = sum(
        int(count) * analytic_forward_matmul_flops(architecture, int(length), num_labels)["total"]
        for length, count in zip(values, counts)
    )
    return float(TRAINING_FLOPS_PER_FORWARD * per_epoch * epochs)


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA memory allocated by torch, or the CPU resident set size."""
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


# ------------------------------------------------------------------------------------------ provenance


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
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=False
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _history(log_history: list[dict]) -> list[dict]:
    """One row per evaluation point, with the training loss logged at the same step."""
    train_loss = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
    return [
        {
            "step": entry["step"],
            "epoch": round(entry["epoch"], 4),
            "train_loss": train_loss.get(entry["step"], float("nan")),
            "validation_loss": entry["eval_loss"],
            "validation_accuracy": entry["eval_accuracy"],
            "validation_primary": entry["eval_primary"],
        }
        for entry in log_history
        if "eval_loss" in entry
    ]


@contextlib.contextmanager
def _tensorboard_dir(run_dir: Path, report_to):
    """The Trainer's TensorBoard writer reads its folder from TENSORBOARD_LOGGING_DIR: <run_dir>/tensorboard."""
    wanted = report_to in ("tensorboard", "all") or (isinstance(report_to, list) and "tensorboard" in report_to)
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if wanted:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    try:
        yield
    finally:
        if wanted and previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        elif wanted:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous


def run_identity(settings: dict) -> dict:
    """Which run this is: task, model, experiment (its attention settings) and seed."""
    attention = settings["attention"]
    return {
        "task": settings["task"],
        "dataset": settings["dataset"]["name"],
        "model": settings["model"],
        "model_slug": model_slug(settings["model"]),
        "experiment": settings["experiment"],
        "seed": settings["seed"],
        "pattern": attention["pattern"],
        "sparsity": attention["sparsity"],
        "apply": attention["apply"],
        "attention_dropout": attention["attention_dropout"],
        "metric": settings["dataset"]["metric"],
    }


def training_summary(trainer: Trainer, fitted: Fit, epochs: float) -> dict:
    logged_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_loss": logged_losses[-1] if logged_losses else float("nan"),
        "train_loss_mean": float(np.mean(logged_losses)) if logged_losses else float("nan"),
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "resumed_from_step": fitted.resumed_from_step,
    }


def training_cost(trainer: Trainer, built: Built, epochs: float, fitted: Fit, hardware: Hardware) -> dict:
    """Time, throughput, FLOP/s, peak memory and model-FLOPs utilisation of this attempt's training.

    Measured on this attempt's steps (the last partial batch counted as full); the rates are null when a
    restart found training already finished. mfu is null on the CPU, for fp32 training and for GPUs not
    in crisp.devices.PEAK_FLOPS_PER_S.
    """
    flops = train_flops(built.model.config, built.train, len(built.label_names), epochs)
    trained = fitted.trained_steps > 0
    arguments = trainer.args
    examples_per_step = arguments.train_batch_size * arguments.gradient_accumulation_steps * arguments.world_size
    achieved = flops * fitted.trained_steps / trainer.state.max_steps / fitted.seconds if trained else None
    examples_per_s = round(fitted.trained_steps * examples_per_step / fitted.seconds, 3) if trained else None
    peak = peak_flops_per_s(torch.cuda.get_device_name(), hardware.precision) if hardware.device == "cuda" else None
    return {
        "wall_time_s": round(fitted.seconds, 3),
        "train_examples_per_s": examples_per_s,
        "train_flops": flops,
        "achieved_flops_per_s": achieved,
        "peak_memory_mb": peak_memory_mb(hardware.device),
        "mfu": achieved / peak if achieved and peak else None,
    }


def sources(settings: dict, data_dir: str | Path, model_revision: str | None) -> dict:
    """What the run was made from: the model, the tokenizer and the data set, each with the commit of
    its Hub repository (null for bundled, tiny, local and synthetic inputs, which have none)."""
    from crisp.tasks import hub_dataset

    stats = read_stats(data_dir)
    dataset = stats.get("dataset") or settings["dataset"]
    repository, config = hub_dataset(dataset["name"]) or (dataset["name"], None)
    return {
        "model": {"id": settings["model"], "revision": model_revision},
        "tokenizer": {"id": stats.get("tokenizer", settings["tokenizer"]), "revision": stats.get("tokenizer_revision")},
        "dataset": {"id": repository, "config": config, "revision": dataset.get("revision")},
    }


def padding(tokenizer, model) -> dict:
    """How the run's batches were padded: the pad token and the id the model reads as padding, the
    side, and whether the pad is the end-of-sequence token (what Crisp sets where a tokenizer has no
    pad token, as decoders' tokenizers often have not)."""
    return {
        "token": tokenizer.pad_token,
        "token_id": model.config.pad_token_id,
        "side": tokenizer.padding_side,
        "end_of_sequence": tokenizer.pad_token is not None and tokenizer.pad_token == tokenizer.eos_token,
    }


def provenance(settings: dict, hardware: Hardware) -> dict:
    """Where and how the run was made, to reproduce or question it."""
    return {
        "device": hardware.device,
        "device_name": torch.cuda.get_device_name() if hardware.device == "cuda" else platform.processor() or None,
        "precision": hardware.precision,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "settings": settings,
        "versions": software_versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
    }


# ------------------------------------------------------------------------------------------ the run


def train_run(
    settings: dict,
    data_dir: str | Path,
    run_dir: str | Path,
    checkpoint_dir: str | Path,
    *,
    threads: int | None = None,
    keep_checkpoints: bool = False,
    model_revision: str | None = None,
) -> dict:
    """Train one run on the prepared data and write its run folder (crisp.runs). Returns the metrics.

    settings: what crisp.settings.train_settings returns. threads: CPU threads for torch (None: torch's
    default). keep_checkpoints: keep the resume checkpoints once the run folder is complete.
    model_revision: the commit of a Hub model to load (what its fetch record names).
    Raises TrainingInterrupted when SIGTERM stopped training (a checkpoint is saved: rerun to resume),
    TrainingDiverged when the loss became non-finite, RunFolderError when another `crisp train` holds
    run_dir or checkpoint_dir, or one of them cannot be written (both checked before any work).
    """
    run_dir, checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
    training = settings["training"]
    hardware = choose_hardware(training)
    if threads is not None:
        torch.set_num_threads(threads)
    if hardware.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # One run at a time on these folders, held until the checkpoints are removed.
    with run_lock(run_dir, checkpoint_dir), StopOnSignal() as stop:
        built = build(settings, data_dir, model_revision)
        # Checkpoints resume only the same settings (the model's revision among them), training
        # code, prepared data and model files.
        resume_from = prepare_checkpoint_dir(checkpoint_dir, checkpoint_stamp(settings, data_dir))
        with _tensorboard_dir(run_dir, training["report_to"]):
            trainer = make_trainer(built, settings, hardware, checkpoint_dir, callbacks=[stop, _LogLastStep()])
            fitted = fit(trainer, resume_from, stop, checkpoint_dir)

        validation, predictions, diagnostics = evaluate(trainer, built, settings["dataset"]["metric"])
        example = attention_example(trainer.model, built.tokenizer, built.validation_display[0], hardware.device)
        metrics = {
            **run_identity(settings),
            "validation": validation,
            "diagnostics": diagnostics,
            **training_summary(trainer, fitted, training["epochs"]),
            **training_cost(trainer, built, training["epochs"], fitted, hardware),
            **provenance(settings, hardware),
            "sources": sources(settings, data_dir, model_revision),
            "padding": padding(built.tokenizer, trainer.model),
        }
        write_run(run_dir, metrics, _history(trainer.state.log_history), predictions, {
            "experiment": settings["experiment"], "seed": settings["seed"], **example})
        if not keep_checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics
