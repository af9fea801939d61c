"""Retraining with path energies: the weight ``lambda_path`` against force-only retraining.

For one iteration i of a finished pipeline run (``--results DIR``), Θ_i is retrained as the
pipeline's rule ``retrain`` does (the iteration's targets, strain + vacancy-NEB hard sets,
MD soft set, the run's λ0, λS and descriptor space, its descriptor cache), with the
iteration's QM/ML glide NEBs as path targets, once per ``--lambdas`` value (0 = forces
only).  Prints, per value: the retrained potential's energy-profile barrier on each QM/ML
path against the QM/ML virtual-work barrier, the QM-atom force RMSE on the targets (and on
the held-out frames, when the run held some out) relative to force-only retraining, and
the hard residual.

    snakemake --cores 2 --configfile CONFIG --config results=DIR   # a run with glide NEBs
    python benchmarks/bench_path_energy.py --results DIR --iteration 0 \
        --lambdas 0 10 100 1000 10000 100000
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from qmml.extract import qm_force_errors
from qmml.io import read_frames, read_mapping
from qmml.potential import SNAPPotential
from qmml.steps import retrain_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, type=Path, help="a pipeline results folder")
    ap.add_argument("--iteration", type=int, default=0)
    ap.add_argument("--lambdas", type=float, nargs="+",
                    default=[0.0, 1e1, 1e2, 1e3, 1e4, 1e5])
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    res, i = args.results, args.iteration
    settings = read_mapping(res / "config.yaml")
    r = settings["retrain"]
    it = res / f"iter_{i}"
    paths = sorted((it / "qmml").glob("*_neb.xyz"))
    if not paths:
        raise SystemExit(f"{it}/qmml: no glide NEB (configure glide_images)")
    heldout = it / "heldout.xyz"
    held = read_frames(heldout) if heldout.is_file() and heldout.stat().st_size else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lam in args.lambdas:
            out = Path(tmp) / f"theta_{lam:g}"
            report = retrain_file(it / "potential", [it / "targets.xyz"],
                                  [it / "constraints" / "strain.xyz", it / "constraints" / "neb.xyz"],
                                  [it / "constraints" / "md.xyz"], out, f"{out}.json",
                                  lambda0=r["lambda0"], lambda_soft=r["lambda_soft"],
                                  quadratic=r["quadratic"],
                                  descriptor_cache=res / "descriptor_cache",
                                  paths=paths, lambda_path=lam)
            row = {"lambda_path": lam, "qm_force_rmse": report["qm_force_rmse_after"],
                   "hard_residual_max": report["hard_residual_max"],
                   "paths": [{k: p[k] for k in ("source", "barrier_qmml_virtual_work",
                                                "barrier_after",
                                                "barrier_relative_error_after",
                                                "profile_rmse_after")}
                             for p in report["paths"]]}
            if held:
                row["heldout_rmse"] = qm_force_errors(held, SNAPPotential.read(out))[
                    "qm_force_rmse"]
            rows.append(row)
    base = next((row for row in rows if row["lambda_path"] == 0), rows[0])
    print(f"results {res}, iteration {i}; paths: {', '.join(p.name for p in paths)}; "
          f"{len(held)} held-out frames")
    head = "| λ_path | " + " | ".join(
        f"{Path(p['source']).stem}: barrier eV (QM/ML {p['barrier_qmml_virtual_work']:.4f}) "
        "| rel. error" for p in base["paths"]) + " | QM-atom force RMSE eV/Å | vs force-only"
    head += " | held-out RMSE eV/Å | vs force-only" if held else ""
    head += " | hard residual eV/atom |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        cells = [f"{row['lambda_path']:g}"]
        for p in row["paths"]:
            cells += [f"{p['barrier_after']:.4f}", f"{100 * p['barrier_relative_error_after']:+.1f} %"]
        cells += [f"{row['qm_force_rmse']:.4f}",
                  f"{100 * (row['qm_force_rmse'] / base['qm_force_rmse'] - 1):+.1f} %"]
        if held:
            cells += [f"{row['heldout_rmse']:.4f}",
                      f"{100 * (row['heldout_rmse'] / base['heldout_rmse'] - 1):+.1f} %"]
        cells.append(f"{row['hard_residual_max']:.1e}")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
