"""QM calls to fmax: FIRE vs LBFGS vs ODE12r vs the ML-accelerated optimiser.

Force-mixed QM/ML relaxation of a dislocation cylinder (ML = W_milady_lml, the iteration's
Θ_i), every optimiser from the same start with a fresh QM cache, so "QM calls" are real
engine calls.  Engines: ``reference`` (W_2940_2017_2 + ZBL: the classical stand-in, not QM)
and ``tblite`` (GFN1-xTB, a genuine if inexpensive QM method; Γ point of the cluster cell,
i.e. ``kpts_line`` 1 unless given).  With a real engine the QM share of wall time
dominates, so QM calls is the number that matters; wall time is reported as measured
(on a loaded machine it includes other processes' contention).

    python benchmarks/bench_accelerated.py --engine reference --kind screw111 --radius 20
    python benchmarks/bench_accelerated.py --engine tblite --radius 14 --qm-radius 3.5
    python benchmarks/bench_accelerated.py --neb 5 --radius 20 --qm-radius 4.0 --fmax 0.05 \
        --optimizers accelerated FIRE LBFGS ODE12r PreconLBFGS

``--seed-frames F --seed-cache DIR``: the next iteration's relaxation of the same structure
(``--potential`` Θ1): every optimiser's cache starts as a copy of DIR (the earlier run's QM
cache), the accelerated run is seeded with the QM points in F (the earlier run's
``accelerated.qm_frames.xyz``) and the others start from the earlier run's end point in F;
QM calls count only the new ones.

``--neb N``: a glide NEB of N images (end points included) instead of a relaxation; the end
points are relaxed first (accelerated, shared cache, not counted), then every optimiser
starts the NEB from the same interpolated path with its own copy of that cache.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from qmml import potential_path
from qmml.accelerated import AcceleratedSettings, qm_point_frames, relax_accelerated
from qmml.engines import engine_label
from qmml.potential import SNAPPotential
from qmml.qmcache import CachedQMCalculator
from qmml.qmmm import relax
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder

MILADY = dict(a0=3.18551, C11=513.1, C12=201.0, C44=144.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="reference", choices=["reference", "tblite"])
    ap.add_argument("--kpts-line", type=int, default=1)
    ap.add_argument("--kind", default="screw111")
    ap.add_argument("--radius", type=float, default=20.0)
    ap.add_argument("--fixed", type=float, default=6.0)
    ap.add_argument("--qm-radius", type=float, default=4.5)
    ap.add_argument("--buffer", type=float, default=5.0)
    ap.add_argument("--fmax", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=300, help="max optimiser (outer) steps")
    ap.add_argument("--optimizers", nargs="+",
                    default=["accelerated", "FIRE", "LBFGS", "ODE12r"])
    ap.add_argument("--space", choices=["linear", "quadratic"],
                    help="surrogate space (default: AcceleratedSettings')")
    ap.add_argument("--log", action="store_true", help="print the accelerated outer steps")
    ap.add_argument("--settings", default="{}",
                    help="JSON of AcceleratedSettings fields, e.g. '{\"lambda0\": 1e-3}'")
    ap.add_argument("--save", metavar="DIR",
                    help="write each optimizer's end point as DIR/<optimizer>.xyz (compare "
                    "end points across runs)")
    ap.add_argument("--potential", default=str(potential_path("W_milady_lml")),
                    help="ML potential prefix (default: W_milady_lml, Θ0 of the paper)")
    ap.add_argument("--a0", type=float, default=MILADY["a0"],
                    help="lattice constant of the built cylinder: the potential's (Å); "
                    "C11, C12, C44 stay W_milady_lml's")
    ap.add_argument("--ml-start", action="store_true",
                    help="relax the start with the ML potential alone first (no QM call), "
                    "for every optimiser")
    ap.add_argument("--seed-frames", metavar="F",
                    help="QM points of an earlier accelerated run of this structure")
    ap.add_argument("--seed-cache", metavar="DIR", help="that run's QM cache (copied)")
    ap.add_argument("--neb", type=int, default=0, metavar="N",
                    help="glide NEB with N images (end points included) instead of a relaxation")
    ap.add_argument("--climb", action="store_true", help="NEB: climbing image")
    args = ap.parse_args()
    if args.neb:
        return run_neb(args)

    pot = SNAPPotential.read(args.potential)
    start = dislocation_cylinder(args.kind, radius=args.radius, fixed_width=args.fixed,
                                 **{**MILADY, "a0": args.a0})
    counts = cylinder_region(start, None, args.qm_radius, args.buffer, pot.cutoff)
    if args.ml_start:  # every optimiser starts from the ML (Θ_i) minimum
        start = ml_minimum(start, pot)
    seeds, seed_start = [], None
    if args.seed_frames:
        from qmml.accelerated import seed_points
        from qmml.io import read_frames

        frames = read_frames(args.seed_frames)
        seeds = seed_points(frames, [start], [0], args.seed_frames)
        seed_start = next(f for f in frames if f.info["qm_point_final"]).positions
    cfg = {"engine": args.engine, "kpts_line": args.kpts_line}
    print(f"{args.kind} cylinder R={args.radius} Å: {len(start)} atoms, regions {counts}, "
          f"QM engine: {engine_label(cfg)}, buffer {args.buffer} Å, fmax {args.fmax} eV/Å\n")
    print("| optimizer | converged (fmax) | QM calls | outer steps | wall s | QM s |")
    print("|---|---|---|---|---|---|")
    settings = AcceleratedSettings(**json.loads(args.settings),
                                   **({"space": args.space} if args.space else {}))
    rows = {}
    for name in args.optimizers:
        atoms = start.copy()
        with tempfile.TemporaryDirectory() as cache_dir:
            if args.seed_cache:
                import shutil

                shutil.copytree(args.seed_cache, cache_dir, dirs_exist_ok=True)
            qm = CachedQMCalculator.from_config(cfg, cache_dir)
            t0 = time.perf_counter()
            try:
                if name == "accelerated":
                    st = relax_accelerated(atoms, qm, pot, args.buffer, fmax=args.fmax,
                                           steps=args.steps,
                                           log=print if args.log else None,
                                           settings=settings, seeds=seeds)
                else:
                    if seed_start is not None:  # warm start: the earlier run's end point
                        atoms.positions = seed_start
                    st = relax(atoms, qm, pot.calculator(), args.buffer, optimizer=name,
                               fmax=args.fmax, steps=args.steps, log=None)
            except Exception as err:  # report, keep benchmarking the others
                print(f"| {name} | failed after {qm.n_real_calls} QM calls: "
                      f"{' '.join(str(err).split())[:80]} | | | | |", flush=True)
                continue
            wall = time.perf_counter() - t0
        rows[name] = (st, atoms.positions.copy())
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            write(f"{args.save}/{name}.xyz", atoms, format="extxyz")
            if name == "accelerated":  # every QM-called geometry (retraining data)
                write(f"{args.save}/{name}.qm_frames.xyz",
                      qm_point_frames([start], [0], st, {}), format="extxyz")
        extra = ""
        if name == "accelerated":
            extra = (f" (rejected {st.rejected_steps}, fallback {st.fallback_steps}, "
                     f"hard residual max {st.surrogate_hard_residual_max:.1e}; "
                     f"{time_per_outer_step(st)})")
        print(f"| {name}{extra} | {st.converged} ({st.fmax:.4f}) | {st.n_qm_real_calls} | "
              f"{st.steps} | {wall:.1f} | {st.qm_seconds:.1f} |", flush=True)
    if "accelerated" in rows and "FIRE" in rows:
        acc, fire = rows["accelerated"], rows["FIRE"]
        free = ~start.arrays["fix_mask"]
        print(f"\nFIRE / accelerated QM calls: "
              f"{fire[0].n_qm_real_calls / acc[0].n_qm_real_calls:.1f}x; max |Δx| of free "
              f"atoms between their end points {np.abs(fire[1] - acc[1])[free].max():.4f} Å")


def time_per_outer_step(st) -> str:
    """Where an accelerated run's outer step spends its time (AcceleratedStats)."""
    n = max(st.outer_steps, 1)
    return (f"per outer step: fit {st.seconds_fit / n:.1f} s, surrogate relaxation "
            f"{st.seconds_surrogate / n:.1f} s, QM {st.qm_seconds / n:.1f} s")


def ml_minimum(start: Atoms, pot: SNAPPotential) -> Atoms:
    """``start`` relaxed with the ML potential alone (fixed atoms kept), no calculator."""
    from ase.optimize import LBFGS

    from qmml.qmmm import apply_fix_mask

    atoms = start.copy()
    apply_fix_mask(atoms)
    atoms.calc = pot.calculator()
    LBFGS(atoms, logfile=None).run(fmax=0.002, steps=3000)
    atoms.calc = None
    atoms.set_constraint()
    return atoms


def run_neb(args: argparse.Namespace) -> None:
    """QM calls of a glide NEB (end points relaxed once, their QM calls not counted)."""
    import shutil

    from qmml.qmmm import neb
    from qmml.structures import glide_endpoints

    pot = SNAPPotential.read(args.potential)
    ini, fin = glide_endpoints(args.kind, radius=args.radius, fixed_width=args.fixed,
                               **{**MILADY, "a0": args.a0})
    path = ini.info["glide_path"]
    for state in (ini, fin):
        counts = cylinder_region(state, None, args.qm_radius, args.buffer, pot.cutoff,
                                 path=[path[:2], path[2:]])
    fin.arrays["region"] = ini.arrays["region"].copy()
    cfg = {"engine": args.engine, "kpts_line": args.kpts_line}
    with tempfile.TemporaryDirectory() as work:
        ends = f"{work}/ends"
        qm = CachedQMCalculator.from_config(cfg, ends)
        for state in (ini, fin):
            relax_accelerated(state, qm, pot, args.buffer, fmax=0.01, steps=args.steps,
                              log=None)
        print(f"{args.kind} glide NEB, {args.neb} images, R={args.radius} Å, regions {counts}, "
              f"QM engine: {engine_label(cfg)}, fmax {args.fmax} eV/Å\n")
        print("| optimizer | converged (fmax) | QM calls | steps | wall s | QM s | "
              "barrier eV |")
        print("|---|---|---|---|---|---|---|")
        settings = AcceleratedSettings(**json.loads(args.settings),
                                       **({"space": args.space} if args.space else {}))
        for name in args.optimizers:
            cache_dir = f"{work}/{name}"
            shutil.copytree(ends, cache_dir)
            qm = CachedQMCalculator.from_config(cfg, cache_dir)
            t0 = time.perf_counter()
            try:
                _, st, profile = neb(ini.copy(), fin.copy(), args.neb, qm, pot.calculator,
                                     args.buffer, optimizer=name, fmax=args.fmax,
                                     steps=args.steps, log=print if args.log else None,
                                     climb=args.climb, accelerated=settings)
            except Exception as err:  # report, keep benchmarking the others
                print(f"| {name} | failed after {qm.n_real_calls} QM calls: "
                      f"{' '.join(str(err).split())[:80]} | | | | | |", flush=True)
                continue
            wall = time.perf_counter() - t0
            extra = ""
            if name == "accelerated":  # where an outer step's time goes
                extra = (f" (outer steps {st.outer_steps}, rejected {st.rejected_steps}, "
                         f"images kept {st.kept_images}; {time_per_outer_step(st)})")
            print(f"| {name}{extra} | {st.converged} ({st.fmax:.4f}) | {qm.n_real_calls} | "
                  f"{st.steps} | {wall:.1f} | {qm.qm_seconds:.1f} | "
                  f"{profile['barrier']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
