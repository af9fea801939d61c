"""QM-atom forces against buffer width: is the force-mixing buffer converged?

Force mixing assumes that the QM atoms' forces do not depend on where the QM cluster is
cut.  For a dislocation cylinder relaxed to its ML (Θ_i) minimum (where the accelerated
optimiser makes its first QM call), this computes the QM atoms' forces on clusters cut
with each buffer width and reports how far they are from the widest buffer's.  One engine
call per width, no cache.

    python benchmarks/bench_buffer.py --kind edge100_110 --buffers 5 7 9
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench_accelerated import MILADY, ml_minimum
from qmml import potential_path
from qmml.engines import engine_label, make_qm_calculator
from qmml.potential import SNAPPotential
from qmml.qmmm import make_force_qmmm
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="tblite", choices=["reference", "tblite"])
    ap.add_argument("--kind", default="edge100_110")
    ap.add_argument("--radius", type=float, default=18.0)
    ap.add_argument("--fixed", type=float, default=6.0)
    ap.add_argument("--qm-radius", type=float, default=3.0)
    ap.add_argument("--buffers", type=float, nargs="+", default=[5.0, 7.0, 9.0])
    args = ap.parse_args()

    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    built = dislocation_cylinder(args.kind, radius=args.radius, fixed_width=args.fixed,
                                 **MILADY)
    relaxed = ml_minimum(built, pot).positions
    cfg = {"engine": args.engine, "kpts_line": 1}
    engine = make_qm_calculator(cfg)
    ml = pot.calculator()  # ForceQMMM wants one; only its QM cluster is used here
    forces, rows = {}, []
    for width in sorted(args.buffers):
        atoms = built.copy()  # regions cut on the built structure, as the benchmarks do
        counts = cylinder_region(atoms, None, args.qm_radius, width, pot.cutoff)
        atoms.positions = relaxed
        mixing = make_force_qmmm(atoms, engine, ml, width)
        cluster = mixing.get_qm_cluster(atoms)
        cluster.calc = engine
        t0 = time.perf_counter()
        f = np.array(cluster.get_forces())
        seconds = time.perf_counter() - t0
        forces[width] = f[mixing.qm_selection_mask[mixing.qm_buffer_mask]]
        rows.append((width, counts["QM"], len(cluster), seconds))
    widest = forces[max(forces)]
    print(f"{args.kind} cylinder R={args.radius} Å at its ML minimum, QM radius "
          f"{args.qm_radius} Å, QM engine: {engine_label(cfg)}\n")
    print("| buffer Å | QM atoms | cluster atoms | s per call | max \\|F\\| on QM atoms | "
          f"max \\|ΔF\\| vs {max(forces):g} Å buffer |")
    print("|---|---|---|---|---|---|")
    for width, n_qm, n_cluster, seconds in rows:
        f = forces[width]
        print(f"| {width:g} | {n_qm} | {n_cluster} | {seconds:.1f} | "
              f"{np.linalg.norm(f, axis=1).max():.3f} | "
              f"{np.linalg.norm(f - widest, axis=1).max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
