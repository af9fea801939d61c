"""Optimisers for force-mixed QM/ML: QM calls and wall time to reach fmax.

Stand-in relaxation (QM = W_2940_2017_2 + ZBL, the classical stand-in, not QM; ML =
W_milady_lml) of a 1/2<111> screw cylinder, each optimiser with a fresh QM cache.  Reports
QM calls, wall time and the fraction of wall time spent outside the QM engine (ML,
optimiser, cluster cutting, cache I/O) — with a real QM engine the QM share dominates, so
QM calls is the number that matters.

    python benchmarks/bench_qmmm.py [--radius 30] [--qm-radius 4.5] [--fmax 0.01]
"""
from __future__ import annotations

import argparse
import tempfile

from qmml import potential_path
from qmml.potential import SNAPPotential
from qmml.qmcache import CachedQMCalculator
from qmml.qmmm import relax
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder

MILADY = dict(a0=3.18551, C11=513.1, C12=201.0, C44=144.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--radius", type=float, default=30.0)
    ap.add_argument("--fixed", type=float, default=8.0)
    ap.add_argument("--qm-radius", type=float, default=4.5)
    ap.add_argument("--buffer", type=float, default=8.0)
    ap.add_argument("--fmax", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()

    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    start = dislocation_cylinder("screw111", radius=args.radius, fixed_width=args.fixed,
                                 **MILADY)
    counts = cylinder_region(start, None, args.qm_radius, args.buffer, pot.cutoff)
    cfg = {"engine": "reference"}
    print(f"screw cylinder R={args.radius} Å: {len(start)} atoms, regions {counts}, "
          f"QM engine: reference (classical stand-in, not QM), fmax {args.fmax} eV/Å\n")
    print("| optimizer | converged | steps | QM calls | wall s | QM s | outside QM |")
    print("|---|---|---|---|---|---|---|")
    for name in ("FIRE", "LBFGS", "ODE12r", "PreconLBFGS"):
        atoms = start.copy()
        with tempfile.TemporaryDirectory() as cache_dir:
            qm = CachedQMCalculator.from_config(cfg, cache_dir)
            try:
                st = relax(atoms, qm, pot.calculator(), args.buffer, optimizer=name,
                           fmax=args.fmax, steps=args.steps, log=None)
            except Exception as err:  # report, keep benchmarking the others
                print(f"| {name} | failed: {err} | | | | | |")
                continue
        label = name + (" (use_armijo=False)" if name == "PreconLBFGS" else "")
        outside = 1 - st.qm_seconds / st.wall_seconds
        print(f"| {label} | {st.converged} (fmax {st.fmax:.4f}) | {st.steps} | "
              f"{st.n_qm_real_calls} | {st.wall_seconds:.1f} | {st.qm_seconds:.1f} | "
              f"{100 * outside:.0f} % |")


if __name__ == "__main__":
    main()
