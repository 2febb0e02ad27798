"""GPU claiming for concurrent training jobs on one machine (crisp.devices), with pretend GPUs."""

import logging
import multiprocessing
import os
import signal
import time

import pytest

from crisp.devices import NoFreeDevice, claim_device, peak_flops_per_s

# fork: children start in milliseconds and need nothing pickled.
context = multiprocessing.get_context("fork")


def hold_a_device(lock_dir, n_devices, claimed, release):
    """A stand-in training job: claim, report what it got, run until told to stop."""
    with claim_device(lock_dir=lock_dir, n_devices=n_devices) as claim:
        claimed.put((claim.device, os.environ.get("CUDA_VISIBLE_DEVICES")))
        release.wait(timeout=30)


def start_holders(lock_dir, n_devices, count):
    claimed, release = context.Queue(), context.Event()
    holders = [
        context.Process(target=hold_a_device, args=(lock_dir, n_devices, claimed, release)) for _ in range(count)
    ]
    for holder in holders:
        holder.start()
    return holders, [claimed.get(timeout=20) for _ in holders], release


@pytest.fixture(autouse=True)
def no_preset_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_concurrent_jobs_get_distinct_gpus(tmp_path):
    holders, claims, release = start_holders(tmp_path, n_devices=3, count=3)
    release.set()
    for holder in holders:
        holder.join(timeout=20)

    assert sorted(claims) == [("cuda", "0"), ("cuda", "1"), ("cuda", "2")]


def test_a_killed_job_frees_its_gpu(tmp_path):
    holders, claims, _ = start_holders(tmp_path, n_devices=1, count=1)
    assert claims == [("cuda", "0")]
    with pytest.raises(NoFreeDevice, match="--resources gpu=N"):
        claim_device(lock_dir=tmp_path, n_devices=1, timeout_s=0)

    os.kill(holders[0].pid, signal.SIGKILL)
    holders[0].join(timeout=20)

    with claim_device(lock_dir=tmp_path, n_devices=1, timeout_s=0) as claim:
        assert (claim.device, os.environ["CUDA_VISIBLE_DEVICES"]) == ("cuda", "0")


def set_later(event, delay_s):
    time.sleep(delay_s)
    event.set()


def test_a_waiting_job_takes_the_gpu_released_by_another(tmp_path, caplog):
    holders, _, release = start_holders(tmp_path, n_devices=1, count=1)
    # Release the pretend GPU from a timer while this process is already waiting for it.
    context.Process(target=set_later, args=(release, 0.5)).start()

    with (
        caplog.at_level(logging.WARNING, logger="crisp.devices"),
        claim_device(lock_dir=tmp_path, n_devices=1, timeout_s=20, poll_s=0.05) as claim,
    ):
        assert claim.visible_devices == "0"
    holders[0].join(timeout=20)

    assert "All 1 GPUs are claimed" in caplog.text


def test_releasing_a_claim_frees_the_gpu_and_unsets_the_variable(tmp_path):
    with claim_device(lock_dir=tmp_path, n_devices=2) as first:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == first.visible_devices == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ

    with claim_device(lock_dir=tmp_path, n_devices=2) as again:
        assert again.visible_devices == "0"


def test_devices_set_by_slurm_or_the_user_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")

    with claim_device(lock_dir=tmp_path, n_devices=4) as claim:
        assert (claim.device, claim.visible_devices, claim.lock_path) == ("cuda", "3", None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert list(tmp_path.iterdir()) == []  # no GPU was claimed


def test_an_empty_device_list_means_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    assert claim_device(lock_dir=tmp_path, n_devices=2).device == "cpu"


def test_a_cpu_run_claims_no_gpu(tmp_path):
    claim = claim_device("cpu", lock_dir=tmp_path, n_devices=2)

    assert (claim.device, claim.lock_path) == ("cpu", None)
    assert list(tmp_path.iterdir()) == []


def test_without_gpus_the_job_runs_on_the_cpu(tmp_path):
    claim = claim_device(lock_dir=tmp_path, n_devices=0)

    assert (claim.device, claim.lock_path) == ("cpu", None)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_counting_devices_leaves_this_process_free_to_choose(tmp_path):
    # The real count: 0 with a CPU-only torch, the machine's GPUs otherwise. Either way
    # the device must match, and any GPU chosen must be the first free one.
    with claim_device(lock_dir=tmp_path) as claim:
        import torch

        assert claim.device == ("cuda" if torch.cuda.is_available() else "cpu")
        if claim.device == "cuda":
            assert claim.visible_devices == "0" and torch.cuda.device_count() == 1


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362e12),
        ("Tesla T4", "fp16", 65e12),
        ("NVIDIA GeForce GTX 1080", "bf16", None),  # not in the table: no utilisation, never a guess
        ("NVIDIA H100 80GB HBM3", "fp32", None),  # TF32 has another peak
    ],
)
def test_peak_flops_come_from_the_table_of_known_gpus(name, precision, peak):
    assert peak_flops_per_s(name, precision) == peak
