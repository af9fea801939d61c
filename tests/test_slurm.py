"""The SLURM profile on a real one-node SLURM cluster (munged + slurmctld + slurmd).

`snakemake --profile profiles/slurm` runs a workflow whose heavy rule (`qmml_relax`)
must become a SLURM MPI job while the light rules stay on the submit host.  The
workflow is tests/data/slurm_mini (the pipeline's rule names, tiny work);
`run_snakemake` takes any workflow dir + configfile + targets, so the real pipeline
with a tiny config can replace it.  Skipped only where the daemons cannot be
installed or started (not root and no SLURM, or no apt-get).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The helper sits next to this file; do not rely on pytest's rootdir sys.path insertion.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import SlurmCluster, SlurmStartError, SlurmUnavailable, start_cluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "profiles" / "slurm"
PROFILE_FILE = PROFILE_DIR / "profile.yaml"
MINI = REPO / "tests" / "data" / "slurm_mini"
VENV_BIN = Path(sys.executable).parent
HEAVY_RULE = "qmml_relax"
# A test-node-sized MPI job: 2 ranks fit the 2-core CI machine.
TEST_TASKS = 2


def profile_settings() -> dict:
    return yaml.safe_load(PROFILE_FILE.read_text())


def test_profile_declares_slurm_and_heavy_rules() -> None:
    """The profile's keys are what the executor and the pipeline rely on (no cluster)."""
    prof = profile_settings()
    assert prof["executor"] == "slurm"
    # Without slurmdbd `sacct` fails; `squeue` works everywhere.
    assert prof["slurm-status-command"] == "squeue"
    assert {"runtime", "mem_mb", "slurm_partition"} <= set(prof["default-resources"])
    heavy = ("qmml_relax", "qmml_neb", "qmml_3d_defect", "qmml_binding_path", "qm_bulk_reference",
             "qm_vacancy_reference")
    sized = ("retrain", "validate")  # no MPI: time and memory only
    assert set(prof["set-resources"]) == set(heavy) | set(sized)
    for rule in heavy:
        res = prof["set-resources"][rule]
        assert res["mpi"] == "srun", rule
        # The plugin rejects MPI jobs with tasks == 1.
        assert res["tasks"] > 1 and res["nodes"] >= 1 and res["cpus_per_task"] >= 1, rule
        assert res["runtime"] > 0 and res["mem_mb"] > 0, rule
    for rule in sized:
        res = prof["set-resources"][rule]
        assert set(res) == {"runtime", "mem_mb"} and res["runtime"] > 0 and res["mem_mb"] > 0


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """Start the local cluster once per session, with the profile's partition name."""
    partition = profile_settings()["default-resources"]["slurm_partition"]
    try:
        cluster = start_cluster(partition=partition)
    except SlurmStartError as err:
        # Installed but broken: fail loudly instead of hiding it behind a skip.
        pytest.fail(f"local SLURM cluster did not start: {err}")
    except SlurmUnavailable as err:
        pytest.skip(f"local SLURM cluster unavailable: {err}")
    yield cluster
    cluster.stop()


def heavy_rule_test_resources() -> list[str]:
    """`--set-resources` for every heavy rule of the profile, sized for the test node.

    The profile asks for 64-128 ranks and 128-256 GB; the test node has 2 cores.  A
    `--set-resources` on the command line replaces the profile's whole key, so each
    rule's every key is restated (`mpi` keeps the profile's value).
    """
    args = []
    for rule, entry in profile_settings()["set-resources"].items():
        if "mpi" in entry:
            entry = dict(entry, nodes=1, tasks=TEST_TASKS, cpus_per_task=1)
        entry = dict(entry, runtime=10, mem_mb=1000)
        args += [f"{rule}:{key}={value}" for key, value in entry.items()]
    return args


def run_snakemake(
    profile: str,
    snakefile: Path,
    configfile: Path,
    targets: list[str],
    workdir: Path,
    extra_args: list[str] = (),
    env_extra: dict[str, str] | None = None,
    timeout: float = 100,
) -> subprocess.CompletedProcess:
    """Run snakemake from the repo root (so `profiles/slurm` resolves as a path).

    The venv's bin leads PATH: the SLURM jobs inherit it (sbatch --export=ALL) and
    find the same python/qmml.  SLURM_* variables of any enclosing job are dropped so
    the local rules' "no SLURM_JOB_ID" is meaningful.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(env_extra or {})
    cmd = [
        str(VENV_BIN / "snakemake"),
        # Targets first: list-valued options such as --set-resources would swallow them.
        *targets,
        "--profile", profile,
        "--snakefile", str(snakefile),
        "--configfile", str(configfile),
        "--directory", str(workdir),
        # Test-speed knob of the plugin (default 40 s before the first poll).
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs",
        *extra_args,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` fields as a dict (jobs stay visible: MinJobAge is a day)."""
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def run_id(log: str) -> str:
    """The executor's "SLURM run ID": the job name of every job it submitted."""
    line = next(l for l in log.splitlines() if l.startswith("SLURM run ID:"))
    return line.split(":", 1)[1].strip()


def check_mini_run(proc: subprocess.CompletedProcess, workdir: Path, cluster: SlurmCluster) -> None:
    """Assert the mini workflow finished, qmml_relax ran in SLURM, the light rules did not."""
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    report = json.loads((workdir / "results" / "report.json").read_text())

    # Heavy rule: inside a SLURM batch job.
    job_id = report["relax_env"]["slurm_job_id"]
    assert job_id.isdigit(), report["relax_env"]
    assert report["slurm_job_id"] == job_id  # the python step of the same job
    job = slurm_job(job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0"
    assert job["Comment"] == f"rule_{HEAVY_RULE}"
    assert job["Partition"] == cluster.partition
    assert job["NumTasks"] == str(TEST_TASKS)
    assert job["WorkDir"] == str(workdir)
    # slurmctld started it: by its main scheduler or, when the queue was busy, by backfill
    ctld_log = cluster.slurmctld_log.read_text()
    assert (f"sched: Allocate JobId={job_id} " in ctld_log
            or f"sched/backfill: _start_job: Started JobId={job_id} " in ctld_log)
    # mpi="srun": the job is not wrapped in a 1-task step, so the engine launcher's
    # `srun -n 2` gets both ranks as one step of this same job.
    assert report["relax_ranks"] == [
        f"rank={r} ntasks={TEST_TASKS} job={job_id} step=0" for r in range(TEST_TASKS)
    ]
    # The jobstep plugin strips SLURM_NTASKS: why engine commands need an explicit -n.
    assert report["relax_env"]["slurm_ntasks"] == ""

    # Only the heavy rule was submitted: the run's job name matches exactly one job.
    names = subprocess.run(
        ["squeue", "-t", "all", "-h", "-n", run_id(log), "-o", "%i %k"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    assert [n.split() for n in names if n] == [[job_id, f"rule_{HEAVY_RULE}"]]
    # Light rules ran on the submit host, outside any SLURM job.
    assert report["report_slurm_job_id"] == ""
    assert "localrule qmml_setup:" in log and "localrule qmml_report:" in log

    # The SLURM job did real work: the rattled W cell relaxed back to the perfect lattice.
    assert report["fmax"] < 1e-3
    assert report["energy_per_atom_start"] > report["energy_per_atom_relaxed"] + 0.05
    assert report["energy_per_atom_relaxed"] == pytest.approx(
        report["energy_per_atom_perfect"], abs=1e-6
    )


@pytest.mark.slow
def test_profile_by_path_runs_heavy_rule_on_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    proc = run_snakemake(
        "profiles/slurm", MINI / "Snakefile", MINI / "config.yaml", ["all"], tmp_path,
        extra_args=["--set-resources", *heavy_rule_test_resources()],
    )
    assert "Using profile profiles/slurm " in proc.stdout + proc.stderr
    check_mini_run(proc, tmp_path, slurm_cluster)


@pytest.mark.slow
def test_profile_by_name_after_install(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """scripts/install-profile.sh makes `--profile slurm` resolve to profiles/slurm."""
    xdg = tmp_path / "xdg"  # stand-in for ~/.config: never touch the real home
    env = {"XDG_CONFIG_HOME": str(xdg)}
    install = subprocess.run(
        [str(REPO / "scripts" / "install-profile.sh")], env={**os.environ, **env},
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    link = xdg / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == PROFILE_DIR.resolve()
    # Installing twice is harmless (the symlink is replaced, not nested).
    again = subprocess.run(
        [str(REPO / "scripts" / "install-profile.sh")], env={**os.environ, **env},
        capture_output=True, text=True,
    )
    assert again.returncode == 0 and not (PROFILE_DIR / "slurm").exists()
    assert sorted(p.name for p in link.iterdir()) == sorted(p.name for p in PROFILE_DIR.iterdir())

    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = run_snakemake(
        "slurm", MINI / "Snakefile", MINI / "config.yaml", ["all"], workdir,
        extra_args=["--set-resources", *heavy_rule_test_resources()], env_extra=env,
    )
    assert "Using profile slurm " in proc.stdout + proc.stderr
    check_mini_run(proc, workdir, slurm_cluster)


@pytest.mark.slow
def test_real_pipeline_qm_rules_run_as_slurm_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The qmml pipeline itself (tiny config, classical stand-in QM) under the profile: the
    QM rules become SLURM jobs, the light rules stay local, and the QM/ML output records
    the job that computed it."""
    from ase.io import read

    target = "results/iter_0/qmml/screw_initial.xyz"
    proc = run_snakemake(
        "profiles/slurm", REPO / "Snakefile", REPO / "tests" / "data" / "tiny.yaml", [target],
        tmp_path, extra_args=["--set-resources", *heavy_rule_test_resources(),
                              "--config", "qmml={ml_ranks: 2}"], timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    frame = read(tmp_path / target)
    job_id = str(frame.info["slurm_job_id"])
    job = slurm_job(job_id)
    assert job["JobState"] == "COMPLETED" and job["Comment"].startswith("rule_qmml_relax")
    assert frame.info["converged"] and frame.info["qm_engine"].startswith("reference")
    # its ML potential ran on two MPI processes inside the SLURM job (mpiexec's fork
    # launcher, no job step of their own)
    assert frame.info["ml_ranks"] == 2
    jobs = subprocess.run(["squeue", "-t", "all", "-h", "-n", run_id(log), "-o", "%k"],
                          capture_output=True, text=True, check=True).stdout.split()
    rules = sorted(j.split("_wildcards")[0] for j in jobs)  # comment: rule_<name>[_wildcards_…]
    # constraint_sets: the accelerated optimiser's hard rows
    assert rules == ["rule_constraint_sets", "rule_fit_elastic", "rule_qm_bulk_reference",
                     "rule_qmml_relax"]
    for local in ("engine_config", "build_dislocation"):
        assert f"localrule {local}:" in log
