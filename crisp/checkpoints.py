"""Resume a fine-tuning where it stopped: the checkpoint folder, the checkpoint to resume from, SIGTERM.

What it guarantees:

- A killed fine-tuning resumes to identical metrics: rerun with the same settings, it continues from
  the newest checkpoint that belongs to the same settings and code and whose files are complete.
- A truncated or unreadable newest checkpoint is removed (the log says so) and an older one, or the
  start, is used.
- The stamp (RUN_CONFIG_FILE) ties a checkpoint folder to its run's settings and training code:
  checkpoints of other settings or code are discarded, never resumed.
- SIGTERM (what SLURM sends before preemption) during training saves a checkpoint at the next step
  and stops (TrainingInterrupted, exit 143); once training has finished, the run completes instead.

Checkpoints live in their own folder (results/checkpoints/...), never among the run's outputs,
because Snakemake deletes a job's outputs before rerunning it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from crisp.errors import TrainingInterrupted

RUN_CONFIG_FILE = "crisp_run_config.json"
# Two checkpoints, so that when the newest is found corrupted an older one is there to resume from.
CHECKPOINTS_KEPT = 2
# Modules whose source decides what training computes: a checkpoint of other code is not resumed.
CODE_MODULES = (
    "train", "checkpoints", "attention", "patterns", "modeling", "data", "tabular", "synthetic", "tasks", "metrics",
)
# training keys that change where progress is reported, not what is computed
LOGGING_KEYS = ("report_to",)


# ------------------------------------------------------------------------------------------ signals


class StopOnSignal(TrainerCallback):
    """SIGTERM during training: save a checkpoint after this step, then stop. Installed for the whole
    run (`with StopOnSignal() as stop:`) and restored on the way out, however the run ends."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> Self:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame):
        print("SIGTERM received: the run stops at the next training step after saving a checkpoint "
              "(or, when training has finished, completes its evaluation and writes)", flush=True)
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True
        return control


# ------------------------------------------------------------------------------------------ which checkpoint


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes a checkpoint unusable (a missing, truncated or unreadable file), or None.

    Cheap checks that catch truncation without loading tensors: JSON parses; a safetensors file is
    as long as its header says; a torch .pt/.pth file (a zip archive) has its central directory.
    """
    if not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json is missing (the save was interrupted)"
    for path in sorted(checkpoint.iterdir()):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                _check_safetensors(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path):
                    pass
        except (ValueError, OSError, zipfile.BadZipFile, struct.error, UnicodeDecodeError) as error:
            return f"{path.name} is unreadable ({type(error).__name__}: {error})"
    return None


def _check_safetensors(path: Path) -> None:
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    data_size = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    expected = 8 + header_size + data_size
    if path.stat().st_size != expected:
        raise ValueError(f"{path.stat().st_size} bytes, the header describes {expected}: truncated")


def _checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoint folders, newest (highest step) first."""
    steps = {}
    for path in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[1]
        if path.is_dir() and step.isdigit():
            steps[path] = int(step)
    return sorted(steps, key=steps.get, reverse=True)


def prepare_checkpoint_dir(checkpoint_dir: Path, stamp: dict) -> str | None:
    """Return the checkpoint to resume from, discarding checkpoints of other settings or code and
    unusable ones (falling back to an older checkpoint, or to the start)."""
    stamp_path = checkpoint_dir / RUN_CONFIG_FILE
    if checkpoint_dir.exists():
        try:
            previous = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if previous != stamp:
            print(f"Discarding checkpoints in {checkpoint_dir}: they belong to a different configuration", flush=True)
            shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(stamp, indent=2, sort_keys=True))
    for checkpoint in _checkpoints(checkpoint_dir):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            print(f"Resuming from {checkpoint}", flush=True)
            return str(checkpoint)
        print(f"Removing unusable checkpoint {checkpoint}: {problem}; falling back to an older one or the start",
              flush=True)
        shutil.rmtree(checkpoint)
    return None


# ------------------------------------------------------------------------------------------ stamp


def checkpoint_stamp(settings: dict) -> dict:
    """What a checkpoint must have been made with to be resumed: the same settings (bar where training is
    logged to, which changes no result) and the same training code."""
    training = {key: value for key, value in settings["training"].items() if key not in LOGGING_KEYS}
    return {**settings, "training": training, "code": _code_digest()}


def _code_digest() -> str:
    """A hash of the modules that define what training computes."""
    digest = hashlib.sha256()
    for module in CODE_MODULES:
        path = Path(__file__).parent / f"{module}.py"
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ fit


def _finished(checkpoint: str) -> bool:
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"] > 0


def _global_step(checkpoint: str | None) -> int:
    if checkpoint is None:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


@dataclass
class Fit:
    resumed_from_step: int
    trained_steps: int  # on this attempt
    seconds: float


def fit(trainer: Trainer, resume_from: str | None, stop: StopOnSignal, checkpoint_dir: Path) -> Fit:
    """Train to the end; raise TrainingInterrupted when SIGTERM stopped training early."""
    start_step = _global_step(resume_from)
    started = time.perf_counter()
    if resume_from and _finished(resume_from):
        # Training had ended before the run was stopped (during its evaluation or writes). Load the final
        # weights and state instead of calling train(), which would take one more step past a
        # fractional number of epochs.
        print(f"Training finished in {resume_from}: loading it for the evaluation", flush=True)
        trainer._load_from_checkpoint(resume_from)
        trainer.state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    if stop.received and trainer.state.global_step < trainer.state.max_steps:
        raise TrainingInterrupted(
            f"stopped on SIGTERM at step {trainer.state.global_step}; checkpoint saved in {checkpoint_dir}"
        )
    if stop.received:
        print("SIGTERM arrived after training finished: completing the evaluation and writes", flush=True)
    return Fit(start_step, trainer.state.global_step - start_step, seconds)
