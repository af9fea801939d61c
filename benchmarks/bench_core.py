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


def _peak_rss_mb() -> float:
    """Peak resident set size of this process and of its waited-for children (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0  # Linux: KiB


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


# ---- entry point ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("calculator")
    p.add_argument("--cells", type=int, default=20, help="bcc cells per side (20: 16,000 atoms)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-lammpslib", action="store_true")
    p.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run_calculator(args)
    result["peak_rss_mb"] = _peak_rss_mb()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
