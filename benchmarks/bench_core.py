"""Benchmarks of the potential core (issue 2, "Performance").

    python benchmarks/bench_core.py calculator [--cells 20] [--repeats 3]
    python benchmarks/bench_core.py retrain [--workers 2]

``calculator``: time per force call on bcc W (2·cells³ atoms, W_milady_lml, 2J=8) of
(a) a bare LAMMPS instance set up by hand (``pair_style snap``, positions moved in place,
``run 0``), (b) ``SNAPCalculator.get_forces`` after a position change, (c) ASE's
``LAMMPSlib``.  Every call evaluates new positions (a fresh small displacement).

``retrain``: ``qmml.retrain.retrain`` on 13 rattled images of a ½<111> screw cylinder
(R = 60 Å, ~2000 atoms, forces of the classical stand-in W_2940_2017_2+ZBL as targets),
hard = strain set (102 × 250 atoms) + vacancy NEB (13), soft = MD snapshots, quadratic
2J=8 space (1596 coefficients).  Prints the time split and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from qmml import potential_path
from qmml.lmp import new_lammps
from qmml.potential import SNAPPotential

MILADY = {"a0": 3.18551, "C11": 513.1, "C12": 201.0, "C44": 144.9}


# ---- (1) calculator overhead ----------------------------------------------------------
# The three evaluators are built once and then called in interleaved rounds with the same
# displacements, so background load on a shared machine hits all of them alike.  Both wall
# time and this process's CPU time are recorded; CPU time is the steadier of the two.

class _Bare:
    """Plain LAMMPS: lattice made by hand, atoms moved in place, ``run 0``."""

    name = "bare_lammps"

    def __init__(self, cells: int, prefix: Path) -> None:
        lmp = new_lammps()
        lmp.commands_list([
            f"lattice bcc {MILADY['a0']}", f"region b block 0 {cells} 0 {cells} 0 {cells}",
            "create_box 1 b", "create_atoms 1 box", "mass 1 183.84",
            "pair_style snap", f"pair_coeff * * {prefix}.snapcoeff {prefix}.snapparam W",
            "thermo_style custom step pe", "run 0 post no",
        ])
        self.lmp, self.n = lmp, lmp.get_natoms()
        self.x0 = np.array(lmp.numpy.extract_atom("x")[: self.n])
        # LAMMPS atom i sits on the lattice site of ASE atom order[i]: the same displacement
        # array then moves the same atoms in every evaluator, and forces compare one to one
        ase_sites = bulk("W", "bcc", MILADY["a0"], cubic=True).repeat(cells).positions
        key = {tuple(k): i for i, k in enumerate(np.rint(2 * ase_sites / MILADY["a0"]).astype(int))}
        self.order = np.array([key[tuple(k)] for k in
                               np.rint(2 * self.x0 / MILADY["a0"]).astype(int)])

    def __call__(self, d: np.ndarray) -> np.ndarray:
        x = self.lmp.numpy.extract_atom("x")
        x[: self.n] = self.x0 + d[self.order]
        self.lmp.command("run 0 post no")
        _ = float(self.lmp.get_thermo("pe"))
        forces = np.empty((self.n, 3))
        forces[self.order] = self.lmp.numpy.extract_atom("f")[: self.n]
        return forces


class _AseCalc:
    """An ASE calculator on the same bcc lattice; positions changed before every call."""

    def __init__(self, name: str, cells: int, calc) -> None:
        self.name = name
        self.atoms = bulk("W", "bcc", MILADY["a0"], cubic=True).repeat(cells)
        self.atoms.calc = calc
        self.atoms.get_forces()  # set-up is not timed
        self.x0 = self.atoms.positions.copy()

    def __call__(self, d: np.ndarray) -> np.ndarray:
        self.atoms.positions = self.x0 + d
        return self.atoms.get_forces()


def _lammpslib(prefix: Path):
    from ase.calculators.lammpslib import LAMMPSlib

    return LAMMPSlib(lmpcmds=["pair_style snap",
                              f"pair_coeff * * {prefix}.snapcoeff {prefix}.snapparam W"],
                     atom_types={"W": 1}, keep_alive=True, log_file=None,
                     lammps_header=["units metal", "atom_style atomic",
                                    "atom_modify map array sort 0 0"])


def run_calculator(args: argparse.Namespace) -> dict:
    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = pot.write(Path(tmp) / "pot")
        evaluators = [_Bare(args.cells, prefix),
                      _AseCalc("snap_calculator", args.cells, pot.calculator())]
        if not args.skip_lammpslib:
            try:
                evaluators.append(_AseCalc("ase_lammpslib", args.cells, _lammpslib(prefix)))
            except Exception as err:  # report, don't hide: LAMMPSlib is only a comparison
                out["ase_lammpslib"] = {"error": f"{type(err).__name__}: {err}"}
        n = evaluators[0].n
        rng = np.random.default_rng(7)
        wall = {e.name: [] for e in evaluators}
        cpu = {e.name: [] for e in evaluators}
        forces = {}
        for _ in range(args.repeats):
            d = rng.normal(0.0, 0.01, (n, 3))
            for e in evaluators:
                t, c = time.perf_counter(), time.process_time()
                forces[e.name] = e(d)
                cpu[e.name].append(time.process_time() - c)
                wall[e.name].append(time.perf_counter() - t)
    ref = forces["bare_lammps"]
    for e in evaluators:
        name = e.name
        out[name] = {"n_atoms": int(n), "wall_s": wall[name], "cpu_s": cpu[name],
                     "median_wall_s": statistics.median(wall[name]),
                     "median_cpu_s": statistics.median(cpu[name]),
                     "max_force_diff_vs_bare": float(np.abs(forces[name] - ref).max())}
    base = out["bare_lammps"]
    for name in wall:
        for kind in ("wall", "cpu"):
            b = base[f"median_{kind}_s"]
            out[name][f"overhead_{kind}_pct"] = 100.0 * (out[name][f"median_{kind}_s"] - b) / b
    return out


# ---- (2) retraining -------------------------------------------------------------------
STAND_IN = "reference (classical stand-in, not QM): W_2940_2017_2+ZBL"


def build_retrain_data(folder: Path, n_images: int = 13, rattle: float = 0.02,
                       qm_radius: float = 6.0) -> dict[str, Path]:
    """Targets, hard and soft sets as extxyz files in ``folder`` (reused when present).

    Targets: ``n_images`` rattled copies of a ½<111> screw cylinder (R 60 Å, outer 10 Å
    fixed) with forces of the classical stand-in (W_2940_2017_2+ZBL) on every atom and a
    ``region`` array (QM = within ``qm_radius`` of the core axis, else MM).
    """
    from ase.io import write

    from qmml import constraints
    from qmml.potential import reference_potential
    from qmml.structures import dislocation_cylinder

    folder.mkdir(parents=True, exist_ok=True)
    files = {k: folder / f"{k}.xyz" for k in ("targets", "hard", "soft")}
    if all(f.is_file() for f in files.values()):
        return files
    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    ref, zbl = reference_potential()
    disloc = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                  MILADY["C44"], radius=60, fixed_width=10)
    fixed = disloc.arrays["fix_mask"].astype(bool)
    core = np.asarray(disloc.info["core_position"], dtype=float)[:2]
    r = np.linalg.norm(disloc.positions[:, :2] - core, axis=1)
    region = np.where(r < qm_radius, "QM", "MM")
    calc = ref.calculator(zbl=zbl)
    rng = np.random.default_rng(2023)
    frames = []
    for i in range(n_images):
        atoms = disloc.copy()
        atoms.positions[~fixed] += rng.normal(0.0, rattle, (int((~fixed).sum()), 3))
        atoms.calc = calc
        forces = atoms.get_forces()
        atoms.calc = None
        atoms.new_array("forces", forces)
        atoms.new_array("region", region.copy())
        atoms.info.update(image=i, qm_engine=STAND_IN)
        frames.append(atoms)
    write(files["targets"], frames, format="extxyz")
    a0 = constraints.lattice_constant(pot)
    constraints.write_set(files["hard"], constraints.strain_set(pot, a0=a0)
                          + constraints.vacancy_neb(pot, a0=a0))
    constraints.write_set(files["soft"], constraints.md_snapshots(pot, a0=a0))
    return files


def _worker_pids() -> list[int]:
    from qmml import descriptors

    pool = descriptors._POOL
    return list(pool._processes) if pool is not None else []


def _proc_cpu_s(pid: int) -> float:
    """user+system CPU seconds of a live process (/proc/<pid>/stat, fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed(func, *args, **kwargs):
    """Wall time, this process's CPU time and the pool workers' CPU time of one call."""
    before = {pid: _proc_cpu_s(pid) for pid in _worker_pids()}
    t, c = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    workers = sum(_proc_cpu_s(pid) - before.get(pid, 0.0) for pid in _worker_pids())
    return out, {"wall_s": wall, "cpu_s_main": cpu, "cpu_s_workers": workers}


def run_retrain_pipeline(files: dict[str, Path], workers: int, one_pass: bool = False) -> dict:
    """The steps of ``qmml.retrain.retrain`` (same inputs, same solver), each timed, with
    descriptors spread over ``workers`` processes (``force_normal_equations``/``energy_rows``).
    """
    from ase.io import read

    from qmml.descriptors import ForceSet, descriptor_sums, energy_rows, force_normal_equations
    from qmml.fitting import solve_constrained
    from qmml.retrain import free_mask, target_forces

    pot0 = SNAPPotential.read(potential_path("W_milady_lml")).to_quadratic()
    targets = read(files["targets"], index=":")
    hard = read(files["hard"], index=":")
    soft = read(files["soft"], index=":")
    steps: dict = {}
    target_set = ForceSet(targets, [free_mask(a) for a in targets],
                          [target_forces(a, f"target {i}") for i, a in enumerate(targets)],
                          [a.arrays["region"] == "QM" for a in targets], source="targets")
    if one_pass:
        # every configuration of the three sets is one job for the pool, largest first
        ((tsum, ssum), (hard_rows,)), steps["descriptors_one_pass"] = _timed(
            descriptor_sums, pot0, [target_set, ForceSet(soft, source="soft")], [hard],
            workers=workers)
    else:
        (tsum,), steps["targets"] = _timed(
            lambda: descriptor_sums(pot0, [target_set], workers=workers)[0])
        hard_rows, steps["hard"] = _timed(energy_rows, hard, pot0, workers=workers)
        ssum, steps["soft"] = _timed(force_normal_equations, soft, pot0, workers=workers)
    theta0 = pot0.theta

    def solve():
        return solve_constrained(theta0, tsum.normal.matrix(), tsum.normal.gtf, hard=hard_rows,
                                 soft_ata=ssum.normal.matrix(), lambda_soft=1.0, lambda0=500.0)

    result, steps["solve"] = _timed(solve)
    rows, forces = np.vstack(tsum.kept_rows), np.concatenate(tsum.kept_targets)
    rmse = lambda th: float(np.sqrt(np.mean((rows @ th - forces) ** 2)))  # noqa: E731
    return {"workers": workers, "one_pass": one_pass, "steps": steps,
            "total_wall_s": sum(v["wall_s"] for v in steps.values()),
            "total_cpu_s": sum(v["cpu_s_main"] + v["cpu_s_workers"] for v in steps.values()),
            "n_target_rows": tsum.normal.n_rows, "n_soft_rows": ssum.normal.n_rows,
            "n_hard_rows": int(hard_rows.shape[0]), "hard_rank": result.hard_rank,
            "hard_residual_max": result.hard_residual_max,
            "qm_force_rmse_before": rmse(theta0), "qm_force_rmse_after": rmse(result.theta),
            "theta": result.theta}


def run_retrain_api(files: dict[str, Path]) -> dict:
    """``qmml.retrain.retrain`` itself, on the same data (serial, as it stands)."""
    from ase.io import read

    from qmml.retrain import retrain

    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    targets = [(f"target {i}", a) for i, a in enumerate(read(files["targets"], index=":"))]
    hard = read(files["hard"], index=":")
    soft = read(files["soft"], index=":")
    t = time.perf_counter()
    new, report = retrain(pot, targets, hard, soft, lambda0=500.0, lambda_soft=1.0,
                          quadratic=True)
    report["wall_s"] = time.perf_counter() - t
    report["theta"] = new.theta
    return report


def run_retrain(args: argparse.Namespace) -> dict:
    files = build_retrain_data(args.data)
    out: dict = {}
    if not args.skip_api:
        out["retrain_api_serial"] = run_retrain_api(files)
    for w in args.workers:
        out[f"pipeline_workers_{w}"] = run_retrain_pipeline(files, w)
        if w > 1:
            out[f"pipeline_workers_{w}_one_pass"] = run_retrain_pipeline(files, w, one_pass=True)
    from qmml.descriptors import close_workers

    out["peak_rss_mb_workers"] = [_proc_peak_rss_mb(pid) for pid in _worker_pids()]
    close_workers()
    thetas = {k: v.pop("theta") for k, v in out.items() if isinstance(v, dict)}
    ref = next(iter(thetas.values()))
    for k, th in thetas.items():
        out[k]["max_theta_diff_vs_first"] = float(np.abs(th - ref).max())
    return out


# ---- entry point ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("calculator")
    p.add_argument("--cells", type=int, default=20, help="bcc cells per side (20: 16,000 atoms)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-lammpslib", action="store_true")
    p.add_argument("--json", type=Path)
    r = sub.add_parser("retrain")
    r.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "qmml-bench",
                   help="folder for the generated targets/hard/soft extxyz (reused)")
    r.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    r.add_argument("--skip-api", action="store_true", help="skip qmml.retrain.retrain itself")
    r.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run_calculator(args) if args.what == "calculator" else run_retrain(args)
    result["peak_rss_mb_main"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
