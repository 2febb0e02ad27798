"""Resume a fine-tuning where it stopped: the checkpoint folder, the checkpoint to resume from, SIGTERM.

What it guarantees:

- A killed fine-tuning resumes to identical metrics: rerun with the same settings, it continues from
  the newest checkpoint that belongs to the same settings and code and whose files are complete.
- A newest checkpoint that cannot be loaded (truncated, unreadable, or refused by torch's safe loader)
  is removed (the log says so) and an older one, or the start, is used.
- The stamp (RUN_CONFIG_FILE) ties a checkpoint folder to its run's settings, training code, the
  content of the prepared data (a digest of its files) and of a local model folder: checkpoints of
  anything else are discarded, never resumed, even when the settings name the same paths.
- One `crisp train` at a time per run and checkpoint folder (`run_lock`): a second stops at once.
- SIGTERM (what SLURM sends before preemption) during training saves a checkpoint at the next step
  and stops (TrainingInterrupted, exit 143); once training has finished, the run completes instead.

Checkpoints live in their own folder (results/checkpoints/...), never among the run's outputs,
because Snakemake deletes a job's outputs before rerunning it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import struct
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from crisp.errors import RunFolderError, TrainingInterrupted

RUN_CONFIG_FILE = "crisp_run_config.json"
# Two checkpoints, so that when the newest is found corrupted an older one is there to resume from.
CHECKPOINTS_KEPT = 2
# Modules whose source decides what training computes: a checkpoint of other code is not resumed.
CODE_MODULES = (
    "train", "checkpoints", "attention", "kept_attention", "patterns", "modeling", "data", "tabular", "synthetic",
    "tasks", "metrics",
)
# training keys that change where progress is reported, not what is computed
LOGGING_KEYS = ("report_to",)
# Held (flock) by the `crisp train` that uses a run folder and its checkpoint folder.
LOCK_FILE = ".crisp-train.lock"


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

    JSON parses; a safetensors file is as long as its header says; a torch .pt/.pth/.bin file (the
    optimizer, scheduler and RNG states) loads the way the Trainer loads it on resume (weights_only,
    with the Trainer's safe globals), so a file it would refuse is found here, not after the model
    was restored. training_args.bin (a pickled object, never read on resume) is not loaded.
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
            elif path.suffix in (".pt", ".pth", ".bin") and path.name != TRAINING_ARGS_NAME:
                _check_torch_file(path)
        except Exception as error:  # noqa: BLE001 (whatever stops it loading: the checkpoint is skipped, never fatal)
            return f"{path.name} is unreadable ({type(error).__name__}: {_first_line(error)})"
    return None


def _check_torch_file(path: Path) -> None:
    from transformers.trainer_pt_utils import safe_globals

    with zipfile.ZipFile(path):  # a truncated archive, named as such
        pass
    with safe_globals():
        torch.load(path, map_location="cpu", weights_only=True)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    text = text[0] if text else ""
    return text if len(text) <= limit else text[:limit] + "..."


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
    if checkpoint_dir.exists() and any(path.name != LOCK_FILE for path in checkpoint_dir.iterdir()):
        try:
            previous = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if previous != stamp:
            print(f"Discarding checkpoints in {checkpoint_dir}: they belong to a different configuration "
                  f"({_differences(previous, stamp)})", flush=True)
            _empty(checkpoint_dir)
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


def _empty(folder: Path) -> None:
    """Remove what a folder holds, bar the lock file held by this run."""
    for path in folder.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _differences(previous: dict | None, stamp: dict) -> str:
    if not isinstance(previous, dict):
        return "no readable stamp"
    changed = sorted(key for key in {*previous, *stamp} if previous.get(key) != stamp.get(key))
    return "changed: " + ", ".join(changed)


# ------------------------------------------------------------------------------------------ stamp


def checkpoint_stamp(settings: dict, data_dir: str | Path) -> dict:
    """What a checkpoint must have been made with to be resumed: the same settings (bar where training is
    logged to, which changes no result), the same training code, the same prepared data (the content of
    data_dir) and, for a model read from a folder, the same files in it."""
    training = {key: value for key, value in settings["training"].items() if key not in LOGGING_KEYS}
    return {
        **settings,
        "training": training,
        "code": _code_digest(),
        "data_sha256": folder_digest(Path(data_dir)),
        "model_sha256": model_digest(settings["model"]),
    }


def folder_digest(folder: Path) -> str:
    """sha256 over every file of a folder: its path inside the folder and its bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(path for path in folder.rglob("*") if path.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def model_digest(spec: str) -> str | None:
    """folder_digest of a model read from a folder (a local model, the bundled MiniLM); None for a Hub id
    (the Hub cache is not edited in place) or a tiny model (built from code, which the stamp covers)."""
    from crisp.modeling import resolve_spec

    resolved = resolve_spec(spec)
    return folder_digest(Path(resolved.location)) if resolved.kind in ("local", "bundled") else None


def _code_digest() -> str:
    """A hash of the modules that define what training computes."""
    digest = hashlib.sha256()
    for module in CODE_MODULES:
        path = Path(__file__).parent / f"{module}.py"
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ one run at a time


@contextlib.contextmanager
def run_lock(*folders: Path):
    """Hold the run's folders for this process: each is created, must be writable (checked before any
    work, so that a run is not lost after hours of training), and is locked (flock on LOCK_FILE). A second
    `crisp train` on a held folder raises RunFolderError at once. The lock goes with the process, also
    when it is killed; the lock file is removed on the way out."""
    with contextlib.ExitStack() as stack:
        for folder in folders:
            _check_writable(folder)
            stack.enter_context(_flock(folder / LOCK_FILE))
        yield


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".crisp-write-test-"):
            pass
    except OSError as error:
        raise RunFolderError(
            f"{folder} cannot be written ({error.strerror or type(error).__name__}): make it writable, or give "
            "`crisp train` another folder (config key 'results' in the pipeline); nothing was trained"
        ) from None


@contextlib.contextmanager
def _flock(path: Path):
    while True:
        handle = open(path, "a+")  # noqa: SIM115 (held for as long as the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise RunFolderError(
                f"another `crisp train` (process {holder or 'unknown'}) is using {path.parent}: wait for it to "
                f"finish or stop it; two runs on the same folders would overwrite each other's checkpoints"
            ) from None
        # The holder before us may have removed the file on its way out: lock the file that is there now.
        try:
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


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
