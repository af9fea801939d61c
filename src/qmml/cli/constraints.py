"""``qmml constraints``: strain / vacancy-NEB / MD constraint sets of a potential
(``qmml.steps.constraint_sets_file``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from qmml.cli._common import positive_float, print_line

# --quick: small cells and short runs (smoke test, not for production)
QUICK = dict(strain_cells=3, neb_cells=3, md_cells=3, n_strains=5, neb_images=5,
             neb_fmax=0.05, md_steps=20, md_snapshots=2)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", required=True,
                        help="Θ0: SNAP prefix (P.snapcoeff + P.snapparam) or a shipped name")
    parser.add_argument("--strain", type=Path, help="output extxyz: strained cells")
    parser.add_argument("--neb", type=Path, help="output extxyz: vacancy-migration NEB images")
    parser.add_argument("--md", type=Path, help="output extxyz: NVE MD snapshots")
    parser.add_argument("--a0", type=positive_float,
                        help="lattice constant (Å); default: Θ0's own")
    parser.add_argument("--temperatures", type=positive_float,
                        nargs="+", default=[300.0, 1000.0, 3000.0],
                        help="MD temperatures in K (runs start at 2T)")
    parser.add_argument("--seed", type=int, default=20231, help="MD velocity seed")
    parser.add_argument("--quick", action="store_true",
                        help="small cells and short runs (smoke test, not for production)")


def run(args: argparse.Namespace) -> int:
    from qmml.steps import constraint_sets_file

    constraint_sets_file(args.potential, strain=args.strain, neb=args.neb, md=args.md,
                         a0=args.a0, md_temperatures=args.temperatures, seed=args.seed,
                         log=print_line, **(QUICK if args.quick else {}))
    return 0
