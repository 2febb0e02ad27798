"""A real, throwaway single-node SLURM cluster for the integration tests.

Debian's `slurm-wlm` runs without systemd as two plain processes: the controller
(`slurmctld -D`) and the node daemon (`slurmd -D`). This module installs the package
when it is missing, writes a minimal configuration that needs no munge, no database
and no cgroups, starts both daemons, waits until the node is idle and stops them again
by the process ids it recorded.

The node advertises two GPUs backed by /dev/null and /dev/zero, so jobs that ask for a GPU
are scheduled as GPU jobs, and get CUDA_VISIBLE_DEVICES, even on a machine without one.

Use it from Python (`start_cluster()` / `SlurmCluster.stop()`, see
tests/test_slurm_integration.py) or from a shell, as root:

    python tests/slurm/cluster.py start     # install if needed, start, wait until idle
    python tests/slurm/cluster.py status
    python tests/slurm/cluster.py stop      # stop the daemons this script started

The configuration must live at /etc/slurm/slurm.conf: processes inside a job (the
Snakemake job step) have their SLURM_* variables stripped, SLURM_CONF included, so the
commands they run only find the default location. An existing slurm.conf that this
module did not write is never touched.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
# First line of every file this module writes; a file without it belongs to someone else.
MARKER = "# Written by tests/slurm/cluster.py for Crisp's integration tests; safe to delete."
DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / "crisp-slurm"
# Where the daemons' process ids are recorded, whatever the state directory: there is only one
# /etc/slurm/slurm.conf, so only one harness cluster can run at a time.
PID_FILE = Path(tempfile.gettempdir()) / "crisp-slurm-pids.json"
PARTITION = "debug"
# Two pretend GPUs, so that two GPU jobs run at once and get different ones. They must be
# character devices; SLURM numbers them in this order for CUDA_VISIBLE_DEVICES.
GPU_STAND_INS = ("/dev/null", "/dev/zero")
# Finished jobs stay visible to `squeue`/`scontrol` this long. Without an accounting
# database the Snakemake SLURM plugin can only learn a job's fate from `squeue`, and
# the tests inspect finished jobs with `scontrol show job` after the whole pipeline ran, which
# may take up to the integration test's own timeout (900 s): keep them well beyond it.
MIN_JOB_AGE_S = 1800


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


@dataclass
class SlurmCluster:
    """A running controller and node daemon, started by `start_cluster`."""

    state_dir: Path
    node: str
    partition: str = PARTITION
    pids: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        """Cancel its jobs, stop the daemons it started and remove the configuration files."""
        if self.pids:
            _cancel_all_jobs()
        for name, pid in self.pids.items():
            _terminate(pid, name)
        self.pids = {}
        PID_FILE.unlink(missing_ok=True)
        for path in (SLURM_CONF, GRES_CONF):
            if _written_here(path):
                path.unlink()


def install_slurm() -> None:
    """Install Debian's slurm-wlm with apt-get unless slurmctld is already on PATH."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("SLURM is not installed and installing it needs root.")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(
            "SLURM is not installed and there is no apt-get to install it with: "
            "install slurmctld, slurmd and the client commands (Debian: slurm-wlm)."
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmUnavailable(
                f"`{' '.join(command)}` failed (exit {result.returncode}):\n"
                f"{result.stderr[-2000:]}"
            )


def node_hardware() -> dict[str, str]:
    """The node's name, CPUs and memory as `slurmd -C` reports them."""
    output = _run(["slurmd", "-C"]).splitlines()[0]
    return dict(item.split("=", 1) for item in output.split())


def slurm_config(state_dir: Path, hardware: dict[str, str]) -> tuple[str, str]:
    """Texts of slurm.conf and gres.conf for one node with pretend GPUs."""
    node = hardware["NodeName"]
    slurm_conf = f"""{MARKER}
ClusterName=crisp-test
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
# No munge, no database, no cgroups: what a container without systemd can run.
AuthType=auth/none
CredType=cred/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
StateSaveLocation={state_dir}/slurmctld
SlurmdSpoolDir={state_dir}/slurmd
SlurmctldPidFile={state_dir}/slurmctld.pid
SlurmdPidFile={state_dir}/slurmd.pid
SlurmctldLogFile={state_dir}/slurmctld.log
SlurmdLogFile={state_dir}/slurmd.log
NodeName={node} CPUs={hardware["CPUs"]} RealMemory={hardware["RealMemory"]} Gres=gpu:{len(GPU_STAND_INS)} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    gres_conf = f"""{MARKER}
# Stand-in device files: SLURM schedules the GPUs and sets CUDA_VISIBLE_DEVICES for the jobs
# that get one; nothing computes on them.
""" + "".join(f"NodeName={node} Name=gpu File={device}\n" for device in GPU_STAND_INS)
    return slurm_conf, gres_conf


def start_cluster(state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = 60) -> SlurmCluster:
    """Install if needed, configure, start both daemons and wait until the node is idle.

    Raises SlurmUnavailable with the reason when any step fails; daemons started up to
    that point are stopped again.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld/slurmd with this configuration needs root.")
    install_slurm()
    for path in (SLURM_CONF, GRES_CONF):
        if path.exists() and not _written_here(path):
            raise SlurmUnavailable(
                f"{path} exists and was not written by this harness; refusing to replace a "
                "real SLURM configuration."
            )
    stop_recorded()  # daemons left behind by a run that was killed

    shutil.rmtree(state_dir, ignore_errors=True)
    for sub in ("slurmctld", "slurmd"):
        (state_dir / sub).mkdir(parents=True)
    hardware = node_hardware()
    slurm_conf, gres_conf = slurm_config(state_dir, hardware)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf)
    GRES_CONF.write_text(gres_conf)

    cluster = SlurmCluster(state_dir=state_dir, node=hardware["NodeName"])
    try:
        for daemon in ("slurmctld", "slurmd"):
            # A new session, so a Ctrl-C meant for the tests does not reach the daemons
            # before the teardown stops them in order.
            with open(state_dir / f"{daemon}.stdout", "w") as log:
                process = subprocess.Popen([daemon, "-D"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            cluster.pids[daemon] = process.pid
            _record_pids(cluster)
        _wait_until_idle(cluster, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def stop_recorded() -> None:
    """Stop the daemons whose ids the last `start_cluster` recorded, if they still run."""
    if not PID_FILE.exists():
        return
    recorded = json.loads(PID_FILE.read_text())
    SlurmCluster(Path(recorded["state_dir"]), recorded["node"], pids=recorded["pids"]).stop()


def job_record(job_id: str) -> dict[str, str]:
    """`scontrol show job` for one job as a dict of its Key=Value fields."""
    output = _run(["scontrol", "--oneliner", "show", "job", str(job_id)])
    record = {}
    for item in output.split():
        key, _, value = item.partition("=")
        record[key] = value
    return record


def _wait_until_idle(cluster: SlurmCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        for name, pid in cluster.pids.items():
            if not _alive(pid):
                raise SlurmUnavailable(
                    f"{name} exited during start-up; see {cluster.state_dir / (name + '.log')} "
                    f"and {cluster.state_dir / (name + '.stdout')}:\n{_tail(cluster, name)}"
                )
        result = subprocess.run(
            ["sinfo", "--noheader", "--nodes", cluster.node, "--format", "%t"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        state = result.stdout.strip()
        if result.returncode == 0 and state == "idle":
            return
        time.sleep(0.5)
    raise SlurmUnavailable(
        f"node {cluster.node} did not become idle within {timeout_s:.0f} s "
        f"(sinfo says {state!r}); see the logs in {cluster.state_dir}."
    )


def _cancel_all_jobs(timeout_s: float = 30) -> None:
    """Cancel every job and wait until SLURM has cleaned them up.

    A job still running when the daemons stop (a test that failed half-way) would leave its
    slurmstepd behind, waiting forever to report to a controller that is gone.
    """
    subprocess.run(["scancel", "--full", "--user", str(os.getuid())], capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,SUSPENDED", "--format=%i"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0 or not result.stdout.strip():
            return
        time.sleep(0.5)


def _record_pids(cluster: SlurmCluster) -> None:
    PID_FILE.write_text(json.dumps({"state_dir": str(cluster.state_dir), "node": cluster.node, "pids": cluster.pids}))


def _terminate(pid: int, name: str, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after a grace period, the one process `pid` if it is `name`."""
    if not _alive(pid) or _command_name(pid) != name:
        return  # gone already, or the id now belongs to another program
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to a signal-0 probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """An exited process nobody has reaped yet (state Z in /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _written_here(path: Path) -> bool:
    try:
        return path.read_text().startswith(MARKER)
    except OSError:
        return False


def _tail(cluster: SlurmCluster, name: str, n_chars: int = 1500) -> str:
    texts = []
    for suffix in (".log", ".stdout"):
        path = cluster.state_dir / (name + suffix)
        if path.exists():
            texts.append(path.read_text()[-n_chars:])
    return "\n".join(texts)


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SlurmUnavailable(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.action == "start":
        cluster = start_cluster(args.state_dir)
        print(f"SLURM is up: node {cluster.node}, partition {cluster.partition}, "
              f"pids {cluster.pids}, logs in {cluster.state_dir}")
    elif args.action == "stop":
        stop_recorded()
        print("The SLURM daemons this script started are stopped.")
    else:
        print(_run(["sinfo"]), end="")


if __name__ == "__main__":
    try:
        main()
    except SlurmUnavailable as error:
        sys.exit(f"error: {error}")
