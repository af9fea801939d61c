"""``qmml retrain``: Θ retrained on QM/ML forces, hard constraints exact
(``qmml.steps.retrain_file``)."""
from __future__ import annotations

import argparse

from qmml.cli._common import nonnegative_float, positive_int, print_line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", required=True, help="Θ0 prefix (P.snapcoeff+P.snapparam)")
    parser.add_argument("--targets", nargs="+", required=True, help="extxyz with forces")
    parser.add_argument("--hard", nargs="+", required=True, help="hard-constraint extxyz")
    parser.add_argument("--soft", nargs="*", default=[], help="soft-constraint extxyz")
    parser.add_argument("--lambda0", type=nonnegative_float, default=500.0)
    parser.add_argument("--lambda-soft", type=nonnegative_float, default=1.0)
    parser.add_argument("--quadratic", action="store_true",
                        help="retrain in the quadratic descriptor space (Θ0 embedded)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes for the descriptors (each runs its own LAMMPS)")
    parser.add_argument("--descriptor-cache", metavar="DIR",
                        help="folder of descriptor sums by content: sets seen before "
                             "(same frames, same descriptor parameters) are not recomputed")
    parser.add_argument("--path", nargs="+", default=[], metavar="P.xyz",
                        help="ordered QM/ML paths (qmml neb / qmml binding outputs) whose "
                             "virtual-work energies are targets too (qmml.path_energy)")
    parser.add_argument("--lambda-path", type=nonnegative_float, default=None,
                        help="weight of the path-energy rows, eV⁻² against the force rows' "
                             "(eV/Å)⁻² (default: qmml.retrain.LAMBDA_PATH; 0 = report only)")
    parser.add_argument("--output", required=True, help="output potential prefix")
    parser.add_argument("--report", required=True, help="JSON report")


def run(args: argparse.Namespace) -> int:
    from qmml.steps import retrain_file

    retrain_file(args.potential, args.targets, args.hard, args.soft, args.output, args.report,
                 lambda0=args.lambda0, lambda_soft=args.lambda_soft, quadratic=args.quadratic,
                 workers=args.workers, descriptor_cache=args.descriptor_cache, paths=args.path,
                 lambda_path=args.lambda_path, log=print_line)
    return 0
