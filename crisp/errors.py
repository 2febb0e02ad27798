"""Errors that are the user's to fix. The command line prints them as one clear line (no traceback)."""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range; the message names the key."""


class DataError(ValueError):
    """A dataset file or row is unusable; the message names the file and the row."""


class RunFormatError(ValueError):
    """A run folder or FLOPs file is missing, truncated or malformed; the message names the file."""


class HubUnreachableError(RuntimeError):
    """A model or dataset is neither local nor cached, and the Hugging Face Hub cannot be reached."""


class FetchError(RuntimeError):
    """A Hub model or data set cannot be fetched (not cached, Hub unreachable), or its record is unusable."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint; running it again resumes."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the step."""


class RunFolderError(RuntimeError):
    """A run or checkpoint folder cannot be used: another `crisp train` holds it, or it cannot be written."""


class NoFreeDevice(RuntimeError):
    """Every GPU stayed claimed by other processes until the timeout."""


USER_ERRORS = (
    ConfigError,
    DataError,
    RunFormatError,
    HubUnreachableError,
    FetchError,
    TrainingInterrupted,
    TrainingDiverged,
    RunFolderError,
    NoFreeDevice,
    FileNotFoundError,
)


def exit_code(error: BaseException) -> int:
    # 128 + SIGTERM, as a process killed by SIGTERM reports: SLURM and Snakemake treat it as a retryable failure.
    if isinstance(error, TrainingInterrupted):
        return 128 + signal.SIGTERM
    return 1
