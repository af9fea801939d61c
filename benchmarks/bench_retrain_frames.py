"""Retraining on the final frames vs every QM-called frame of accelerated relaxations.

Θ_i = W_milady_lml retrained (quadratic, λ0 = 500, λS = 1, the demo's small strain, vacancy
NEB and MD sets) on the ``qm_point_final`` frames of the given ``*.qm_frames.xyz`` files, and
on all their frames; prints the QM-atom force RMSE on both training sets and on held-out
QM/ML frames, the bulk-MD force change and the hard residual, and writes both potentials.

    python benchmarks/bench_retrain_frames.py --train s/accelerated.qm_frames.xyz \
        e/accelerated.qm_frames.xyz --held-out other/FIRE.xyz --write /tmp/theta1
(``bench_accelerated.py --save DIR`` writes DIR/accelerated.qm_frames.xyz.)
"""
from __future__ import annotations

import argparse

from qmml import potential_path
from qmml.constraints import md_snapshots, strain_set, vacancy_neb
from qmml.extract import qm_force_errors
from qmml.io import read_frames
from qmml.potential import SNAPPotential
from qmml.retrain import retrain


def rmse(potential: SNAPPotential, frames) -> float:
    return qm_force_errors(frames, potential)["qm_force_rmse"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="*.qm_frames.xyz files")
    ap.add_argument("--held-out", nargs="*", default=[], help="QM/ML frames not trained on")
    ap.add_argument("--write", metavar="PREFIX", help="write PREFIX_final and PREFIX_all")
    args = ap.parse_args()
    pot = SNAPPotential.read(potential_path("W_milady_lml"))
    hard = strain_set(pot, n_cells=3, n_strains=5) + vacancy_neb(pot, n_cells=3, n_images=5)
    soft = md_snapshots(pot, n_steps=50, n_cells=3)
    every = [f for path in args.train for f in read_frames(path)]
    final = [f for f in every if f.info["qm_point_final"]]
    held = [read_frames(path)[-1] for path in args.held_out]
    print(f"{len(final)} final and {len(every)} QM-called frames; RMSE on QM atoms, eV/Å")
    print("| potential | train final | train all | " + " | ".join(args.held_out)
          + " | bulk-MD force change | hard residual |")

    def row(label: str, p: SNAPPotential, extra: str = "| – | – |") -> None:
        print(f"| {label} | {rmse(p, final):.3f} | {rmse(p, every):.3f} | "
              + "".join(f"{rmse(p, [h]):.3f} | " for h in held) + extra[2:])

    row("Θ_i", pot)
    for label, data in (("final", final), ("all", every)):
        new, rep = retrain(pot, [(f"frame {i}", a) for i, a in enumerate(data)], hard, soft,
                           quadratic=True)
        row(f"retrained on {label}", new, f"| {rep['soft_force_change_rmse']:.4f} | "
            f"{rep['hard_residual_max']:.1e} |")
        if args.write:
            new.write(f"{args.write}_{label}")


if __name__ == "__main__":
    main()
