"""Give each concurrently running training process a GPU of its own.

`snakemake --resources gpu=N` only counts: it lets N GPU jobs run at once but never
says *which* GPU each one gets, and every process would otherwise start on GPU 0.
`claim_device` picks one per process before CUDA is initialised:

- training.device "cpu": nothing to choose, nothing claimed.
- CUDA_VISIBLE_DEVICES already set (by SLURM's GPU allocation or by the user): respected
  as it is; nothing is claimed.
- no CUDA device (CPU-only torch, or no GPU): the process runs on the CPU.
- otherwise: the first GPU i whose lock file `<lock_dir>/gpu<i>.lock` this process can
  lock exclusively; CUDA_VISIBLE_DEVICES=i for the rest of the process. The lock is an
  `flock`, which the operating system drops when the process ends in any way, so a
  crashed or killed job never keeps its GPU from the next one.

Locks are per machine: keep lock_dir on a local disk (the default is under the system's
temporary directory), never on a network file system shared by several machines.

    with claim_device(config["training"]["device"]) as claim:
        print(f"Device: {claim}")   # e.g. "cuda (GPU 1, claimed with lock /tmp/.../gpu1.lock)"
        train(...)                  # torch sees exactly one GPU: cuda:0 is the claimed one
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from crisp.errors import NoFreeDevice

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / f"crisp-gpu-locks-{os.getuid()}"
# How often a waiting process looks for a free GPU, and how often it says it is still waiting.
POLL_S = 2.0
WAITING_LOG_EVERY_S = 600.0


@dataclass
class DeviceClaim:
    """The device this process should train on, and the lock that reserves it."""

    device: str  # "cuda" or "cpu"
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as this process now sees it
    reason: str  # one line for the log: why this device
    lock_path: Path | None = None  # set only when this claim holds a GPU lock
    _lock_fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        """Free the GPU for the next process and unset the CUDA_VISIBLE_DEVICES it set.

        CUDA itself keeps using the device it initialised on; the variable only matters
        for processes started afterwards.
        """
        if self._lock_fd is None:
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)

    def __str__(self) -> str:
        return f"{self.device} ({self.reason})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def claim_device(
    wanted: str = "auto",
    *,
    lock_dir: str | Path = DEFAULT_LOCK_DIR,
    n_devices: int | None = None,
    timeout_s: float | None = None,
    poll_s: float = POLL_S,
) -> DeviceClaim:
    """Choose this process's device; claim a free GPU when there is a choice to make.

    wanted: the configuration's training.device: "cpu" claims nothing; "auto" and "cuda"
        claim a GPU when there is one (whether "cuda" without one is an error is for the
        caller to say).
    n_devices: how many GPUs the machine has (or, with CUDA_VISIBLE_DEVICES set, how many
        it shows); None counts them. Tests pass a number to pretend.
    timeout_s: how long to wait for a GPU when all are claimed; None waits as long as it
        takes (a queued job simply starts when another one finishes).
    Raises NoFreeDevice when the timeout passes with every GPU still claimed.
    """
    if wanted == "cpu":
        return _announce(DeviceClaim("cpu", os.environ.get("CUDA_VISIBLE_DEVICES"), "training.device is 'cpu'"))
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        if n_devices is None:
            import torch  # CUDA may initialise now: the visible devices are decided already

            n_devices = torch.cuda.device_count()
        # An empty value hides every GPU. SLURM also sets it on a node whose torch has no
        # CUDA (or whose "GPU" is a stand-in, as in the test cluster): that is the CPU too.
        has_cuda = preset.strip() != "" and n_devices > 0
        reason = f"CUDA_VISIBLE_DEVICES={preset!r} was set before the run (by SLURM or the user) and is kept"
        if not has_cuda:
            reason += "; torch sees no CUDA device through it"
        return _announce(DeviceClaim("cuda" if has_cuda else "cpu", preset, reason))

    if n_devices is None:
        n_devices = count_cuda_devices()
    if n_devices == 0:
        return _announce(DeviceClaim("cpu", None, "no CUDA device on this machine"))

    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_said = None
    while True:
        for index in range(n_devices):
            claim = _try_lock(lock_dir / f"gpu{index}.lock", index)
            if claim is not None:
                return _announce(claim)
        waited = time.monotonic() - started
        if timeout_s is not None and waited >= timeout_s:
            raise NoFreeDevice(_all_busy_message(lock_dir, n_devices) + f" Gave up after {timeout_s:.0f} s.")
        if last_said is None or time.monotonic() - last_said >= WAITING_LOG_EVERY_S:
            log.warning("%s Waiting for one to be released.", _all_busy_message(lock_dir, n_devices))
            last_said = time.monotonic()
        time.sleep(poll_s)


def count_cuda_devices() -> int:
    """Number of CUDA GPUs on this machine, counted without initialising CUDA here.

    Asking torch directly would initialise CUDA in this process, after which setting
    CUDA_VISIBLE_DEVICES has no effect; a short-lived child process asks instead.
    """
    import torch

    if torch.version.cuda is None:
        return 0  # a CPU-only (or non-CUDA) build of torch
    environment = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        env=environment,
        capture_output=True,
        check=False,
        text=True,
    )
    if result.returncode != 0:
        log.warning("could not count CUDA devices, running on the CPU: %s", result.stderr.strip()[-500:])
        return 0
    return int(result.stdout.strip().splitlines()[-1])


def _try_lock(lock_path: Path, index: int) -> DeviceClaim | None:
    # O_CLOEXEC: programs this process starts must not inherit (and so keep alive) the lock.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # Who holds it, for a person looking at the lock directory.
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    return DeviceClaim("cuda", str(index), f"GPU {index}, claimed with lock {lock_path}", lock_path, fd)


def _announce(claim: DeviceClaim) -> DeviceClaim:
    log.info("device: %s", claim)
    return claim


def _all_busy_message(lock_dir: Path, n_devices: int) -> str:
    return (
        f"All {n_devices} GPUs are claimed by other processes (locks in {lock_dir}). "
        f"If Snakemake was started with --resources gpu=N, N should not exceed {n_devices}."
    )


# Peak dense (no structured sparsity) tensor-core FLOP/s at bf16, or fp16 where the GPU has no bf16,
# from NVIDIA's data sheets; the first entry whose text appears in torch.cuda.get_device_name() wins,
# so more specific names come first. A GPU not listed gets no model-FLOPs utilisation: never a guess.
PEAK_FLOPS_PER_S = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),  # also GH200
    ("A100", 312e12),  # SXM and PCIe
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16; no bf16
    ("T4", 65e12),  # fp16; no bf16
)
# Precisions the table describes: an fp32 (TF32) run has another peak, so it gets no utilisation.
PEAK_PRECISIONS = ("bf16", "fp16")


def peak_flops_per_s(device_name: str, precision: str) -> float | None:
    """The peak dense bf16/fp16 FLOP/s of a GPU named as torch names it, or None when unknown."""
    if precision not in PEAK_PRECISIONS:
        return None
    for known, flops in PEAK_FLOPS_PER_S:
        if known in device_name:
            return flops
    return None
