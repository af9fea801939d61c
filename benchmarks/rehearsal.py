"""Production rehearsal: the VASP example's whole DAG at the paper's sizes under SLURM.

Runs ``snakemake --profile profiles/slurm --configfile config/examples/vasp.yaml`` on the
local one-node SLURM cluster (tests/slurm_cluster.py) with the VASP protocol double
(tests/doubles/vasp_double: VASP's files, forces of the classical stand-in, NOT DFT) and
FAKE POTCARs, then tabulates per rule what an allocation must hold: wall time, peak
memory, QM calls, QM cluster sizes and the time spent outside the QM engine.

    python benchmarks/rehearsal.py estimate            # job list, atoms, ML time per call
    nohup python benchmarks/rehearsal.py run &         # cluster + snakemake (hours)
    python benchmarks/rehearsal.py collect --markdown  # the table, whatever has finished

Everything goes under --out (default /tmp/rehearsal): results/, the engine wrapper, the
fake POTCAR set, snakemake.log and command.sh (the exact command, to rerun by hand).
The profile's MPI sizes (64-128 ranks, 128-256 GB) are replaced by what a 2-core node
holds (``--set-resources``/``--default-resources`` on the command line replace the
profile's keys); the double is a serial program, so the QM rules run one task each.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CONFIG = REPO / "config" / "examples" / "vasp.yaml"
DOUBLE = REPO / "tests" / "doubles" / "vasp_double"
HEAVY = ("qmml_relax", "qmml_neb", "qmml_3d_defect", "qmml_binding_path", "qm_bulk_reference")
QM_RULES = ("qmml_relax", "qmml_neb", "qmml_3d_defect", "qmml_binding_path")

sys.path.insert(0, str(REPO / "tests"))


# ---- setting up -------------------------------------------------------------------------
def write_engine(out: Path) -> Path:
    """Fake POTCARs (labelled FAKE) and a wrapper that runs the double with the venv's
    python; returns the wrapper (the ``qm.command``)."""
    from test_engine_doubles import fake_potcar

    for element, zval in (("W", 6.0), ("He", 2.0)):
        folder = out / "vasp_pp" / "potpaw_PBE" / element
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "POTCAR").write_text(fake_potcar(element, zval))
    wrapper = out / "bin" / "vasp_std"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\n# VASP protocol double (classical stand-in, NOT DFT)\n"
                       f"PATH={VENV_BIN}:$PATH exec {DOUBLE} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def resources(cpus: int, mem_mb: int, runtime: int) -> list[str]:
    """``--set-resources`` for the profile's heavy rules, sized for this node: one task,
    no ``mpi`` (the double is serial), the whole profile key restated."""
    args = []
    for rule in HEAVY:
        entry = {"nodes": 1, "tasks": 1, "cpus_per_task": 1, "runtime": runtime,
                 "mem_mb": mem_mb}
        args += [f"{rule}:{key}={value}" for key, value in entry.items()]
    return args


def snakemake_command(out: Path, wrapper: Path, args) -> list[str]:
    results = out / "results"
    return [
        str(VENV_BIN / "snakemake"), *args.targets,
        "--profile", "profiles/slurm",
        "--configfile", str(CONFIG),
        "--config", f"results={results}",
        f"qm={{engine: vasp, command: {wrapper}, directory: {out / 'vasp-run'}}}",
        "--set-resources", *resources(1, args.mem_mb, args.runtime),
        "--default-resources", f"runtime={args.runtime}", f"mem_mb={args.mem_mb}",
        "slurm_partition=compute",
        "--local-cores", "1",
        "--keep-going",
        "--slurm-keep-successful-logs",
        "--seconds-between-status-checks", "20",
    ]


def run(args) -> int:
    from slurm_cluster import start_cluster

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.pid").write_text(f"{os.getpid()}\n")
    wrapper = write_engine(out)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VASP_PP_PATH"] = str(out / "vasp_pp")  # sbatch exports it to the jobs
    cmd = snakemake_command(out, wrapper, args)
    (out / "command.sh").write_text(
        f"cd {REPO}\nVASP_PP_PATH={env['VASP_PP_PATH']} PATH={VENV_BIN}:$PATH \\\n  "
        + " ".join(shlex.quote(c) for c in cmd) + "\n")
    code = 1
    for attempt in range(1, args.attempts + 1):
        cluster = start_cluster(partition="compute")
        start = time.time()
        with open(out / "snakemake.log", "a") as log:
            log.write(f"\n=== attempt {attempt} at {time.ctime()} (load {os.getloadavg()})\n")
            log.flush()
            code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        with open(out / "attempts.jsonl", "a") as fh:
            fh.write(json.dumps({"attempt": attempt, "start": start, "end": time.time(),
                                 "returncode": code, "load": os.getloadavg()}) + "\n")
        if code == 0:
            break
    if args.stop:
        cluster.stop()
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/rehearsal", help="everything goes here")
    sub = ap.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="start the cluster and run the DAG")
    r.add_argument("targets", nargs="*", default=[], help="snakemake targets (default: all)")
    r.add_argument("--mem-mb", type=int, default=9000, help="memory of every SLURM job")
    r.add_argument("--runtime", type=int, default=1440, help="minutes of every SLURM job")
    r.add_argument("--attempts", type=int, default=3,
                   help="rerun snakemake (it resumes) if a run fails, e.g. the cluster "
                        "was stopped under it")
    r.add_argument("--stop", action="store_true", help="stop the cluster at the end")
    args = ap.parse_args()
    return {"run": run}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
