"""A real one-node SLURM cluster on localhost, for tests of the SLURM profile.

Installs Debian's SLURM packages when they are missing (root only), then starts
munged, slurmctld and slurmd.  The cluster config lives at /etc/slurm/slurm.conf
because the Snakemake jobstep plugin drops ``SLURM_CONF`` before its inner
``srun``: a config anywhere else breaks jobs (docs/setup-notes, "SLURM + Snakemake").
State, spool, log and pid files go under one temporary directory; the daemons are
stopped through their pid files.  ``start_cluster`` is idempotent: a second call
returns the running cluster.

No accounting daemon is started, so ``sacct`` has nothing to report and the
Snakemake executor must poll with ``squeue``; ``MinJobAge`` is large so finished
jobs stay visible to ``squeue``.

Usage (also ``python tests/slurm_cluster.py start|stop|status``)::

    cluster = start_cluster(partition="compute")
    ...
    cluster.stop()
"""

from __future__ import annotations

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
APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun", "scontrol", "scancel")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_PID = MUNGE_RUN_DIR / "munged.pid"
# First line of every slurm.conf we write: we never overwrite a config without it,
# so a machine that has a real SLURM installation keeps its own.
CONF_MARKER = "# qmml test cluster: written by tests/slurm_cluster.py"
DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / "qmml-slurm"


class SlurmUnavailable(RuntimeError):
    """This machine cannot host the cluster (not root, no apt-get, a foreign slurm.conf)."""


class SlurmStartError(SlurmUnavailable):
    """SLURM is installed but the daemons did not come up: a bug to report, not a skip."""


@dataclass
class SlurmCluster:
    """Handle on the running local cluster: where its files are and how to stop it."""

    state_dir: Path
    partition: str
    node: str = "localhost"
    started_munge: bool = False
    pid_files: dict[str, Path] = field(default_factory=dict)

    @property
    def slurmctld_log(self) -> Path:
        return self.state_dir / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.state_dir / "log" / "slurmd.log"

    def stop(self) -> None:
        """Cancel leftover jobs, then stop the daemons (slurmd, slurmctld, then munged).

        Jobs go first: a job left running (e.g. by a test that timed out) would keep
        its slurmstepd and job processes alive after slurmd is gone.
        """
        if _pid_alive(self.pid_files.get("slurmctld", Path("/nonexistent"))) is not None:
            _cancel_all_jobs()
        order = ["slurmd", "slurmctld"] + (["munged"] if self.started_munge else [])
        for name in order:
            pid_file = self.pid_files.get(name)
            if pid_file is not None:
                _stop_pid_file(pid_file)
        (self.state_dir / "munge-started-by-qmml").unlink(missing_ok=True)


def _active_job_ids() -> list[str]:
    proc = subprocess.run(
        ["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING,SUSPENDED", "-o", "%i"],
        capture_output=True, text=True, timeout=10,
    )
    return proc.stdout.split() if proc.returncode == 0 else []


def _cancel_all_jobs(timeout: float = 15.0) -> None:
    """scancel every job still queued or running and wait (bounded) for them to end."""
    jobs = _active_job_ids()
    if not jobs:
        return
    subprocess.run(["scancel", *jobs], capture_output=True, timeout=10)
    deadline = time.monotonic() + timeout
    while _active_job_ids() and time.monotonic() < deadline:
        time.sleep(0.3)


def _run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def _pid_alive(pid_file: Path) -> int | None:
    """Pid recorded in pid_file if that process is running, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _stop_pid_file(pid_file: Path, grace: float = 10.0) -> None:
    pid = _pid_alive(pid_file)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _pid_alive(pid_file) is not None:
        time.sleep(0.1)
    if _pid_alive(pid_file) is not None:
        os.kill(pid, signal.SIGKILL)


def _missing_binaries() -> list[str]:
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in DAEMONS if shutil.which(name, path=sbin) is None]


def ensure_installed() -> None:
    """Install the Debian SLURM + munge packages if any daemon or client is missing."""
    missing = _missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"SLURM binaries missing ({', '.join(missing)}) and not root, so they cannot be installed"
        )
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    still = _missing_binaries()
    if still:
        raise SlurmStartError(f"installed {APT_PACKAGES} but still missing: {', '.join(still)}")


def _node_hardware() -> str:
    """The node line's hardware fields as slurmd itself detects them.

    Copying ``slurmd -C`` keeps the config consistent with the machine, so slurmctld
    never drains the node for "low socket*core*thread count" or "low RealMemory".
    """
    out = _run(["slurmd", "-C"]).stdout.splitlines()[0].split()
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(f for f in out if f.split("=")[0] in keep)


def slurm_conf_text(state_dir: Path, partition: str, node: str = "localhost") -> str:
    """The minimal working slurm.conf of docs/setup-notes.md, paths under state_dir."""
    return f"""{CONF_MARKER}
ClusterName=qmmltest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# Keep finished jobs visible to squeue (the executor's status command without sacct).
MinJobAge=86400
StateSaveLocation={state_dir}/state
SlurmdSpoolDir={state_dir}/spool
SlurmctldPidFile={state_dir}/run/slurmctld.pid
SlurmdPidFile={state_dir}/run/slurmd.pid
SlurmctldLogFile={state_dir}/log/slurmctld.log
SlurmdLogFile={state_dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={node} {_node_hardware()} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _munge_works() -> bool:
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return False
    cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if cred.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0


def _start_munge(state_dir: Path) -> bool:
    """Make sure munged answers; return True if this call started it."""
    if _munge_works():
        return False
    if not MUNGE_KEY.exists():
        # The Debian package normally creates the key; make one if it did not.
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
    MUNGE_RUN_DIR.chmod(0o755)
    # munged refuses to run as root; it forks and writes MUNGE_PID itself.
    proc = subprocess.run(["runuser", "-u", "munge", "--", "munged"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmStartError(f"munged failed to start: {proc.stderr.strip()}")
    _wait_for(_munge_works, 15, "munged to answer")
    (state_dir / "munge-started-by-qmml").write_text(str(MUNGE_PID))
    return True


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SlurmStartError(f"timed out after {timeout:.0f} s waiting for {what}")


def node_state(node: str = "localhost") -> str:
    """sinfo's state of the node ('idle', 'mixed', 'down*', ...); '' if unreachable."""
    proc = subprocess.run(
        ["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True, timeout=10
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def start_cluster(
    partition: str = "debug", state_dir: Path | str = DEFAULT_STATE_DIR, install: bool = True
) -> SlurmCluster:
    """Install if needed and start the one-node cluster; return it once the node is idle.

    Safe to call again: running daemons (pid files alive) are reused.  Raises
    SlurmUnavailable with the reason when this machine cannot run the cluster.
    """
    state_dir = Path(state_dir)
    node = "localhost"
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld/slurmd and writing /etc/slurm/slurm.conf needs root")
    if install:
        ensure_installed()
    elif _missing_binaries():
        raise SlurmUnavailable(f"SLURM binaries missing: {', '.join(_missing_binaries())}")
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(CONF_MARKER):
        raise SlurmUnavailable(f"{SLURM_CONF} exists and is not ours: refusing to overwrite it")
    for sub in ("state", "spool", "run", "log"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o755)

    cluster = SlurmCluster(
        state_dir=state_dir,
        partition=partition,
        node=node,
        pid_files={
            "munged": MUNGE_PID,
            "slurmctld": state_dir / "run" / "slurmctld.pid",
            "slurmd": state_dir / "run" / "slurmd.pid",
        },
    )
    conf = slurm_conf_text(state_dir, partition, node)
    running = all(_pid_alive(cluster.pid_files[d]) for d in ("slurmctld", "slurmd"))
    if running and SLURM_CONF.read_text() == conf:
        cluster.started_munge = (state_dir / "munge-started-by-qmml").exists()
        _wait_for(lambda: node_state(node) in ("idle", "mixed", "allocated"), 30, "node to be up")
        return cluster
    # Anything half-running from an earlier, different configuration goes first.
    _stop_pid_file(cluster.pid_files["slurmd"])
    _stop_pid_file(cluster.pid_files["slurmctld"])
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(conf)

    cluster.started_munge = _start_munge(state_dir) or (state_dir / "munge-started-by-qmml").exists()
    try:
        # -c: start with an empty job queue rather than a previous session's state.
        _run(["slurmctld", "-c"])
        _wait_for(lambda: _pid_alive(cluster.pid_files["slurmctld"]) is not None, 15, "slurmctld")
        _run(["slurmd", "-N", node])
        _wait_for(lambda: node_state(node) == "idle", 60, f"node {node} idle in sinfo")
    except (subprocess.CalledProcessError, SlurmUnavailable) as err:
        logs = "\n".join(
            p.read_text()[-1500:] for p in (cluster.slurmctld_log, cluster.slurmd_log) if p.exists()
        )
        cluster.stop()
        detail = err.stderr if isinstance(err, subprocess.CalledProcessError) else str(err)
        raise SlurmStartError(f"SLURM daemons did not come up: {detail}\n{logs}") from err
    return cluster


def stop_cluster(state_dir: Path | str = DEFAULT_STATE_DIR) -> None:
    """Stop daemons recorded under state_dir (munged only if this module started it)."""
    state_dir = Path(state_dir)
    SlurmCluster(
        state_dir=state_dir,
        partition="",
        started_munge=(state_dir / "munge-started-by-qmml").exists(),
        pid_files={
            "munged": MUNGE_PID,
            "slurmctld": state_dir / "run" / "slurmctld.pid",
            "slurmd": state_dir / "run" / "slurmd.pid",
        },
    ).stop()


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else "status"
    if action == "start":
        c = start_cluster(partition=sys.argv[2] if len(sys.argv) > 2 else "debug")
        print(f"up: partition {c.partition}, state in {c.state_dir}")
    elif action == "stop":
        stop_cluster()
    else:
        print(node_state() or "not running")
