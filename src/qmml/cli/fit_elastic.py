"""``qmml fit-elastic``: Θ0 with exact a0, C11, C12, C44 (``qmml.steps.fit_elastic_file``)."""
from __future__ import annotations

import argparse

from qmml.cli._common import nonnegative_float, positive_float, print_line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", required=True, help="starting potential prefix")
    for key in ("a0", "C11", "C12", "C44"):
        parser.add_argument(f"--{key}", type=positive_float, required=True,
                            help=f"target {key} ({'Å' if key == 'a0' else 'GPa'})")
    parser.add_argument("--soft", nargs="*", default=None,
                        help="extxyz soft-constraint configurations (MD snapshots); "
                             "default: generate NVE MD snapshots with the starting potential")
    parser.add_argument("--lambda0", type=nonnegative_float, default=1.0)
    parser.add_argument("--lambda-soft", type=nonnegative_float, default=1.0)
    parser.add_argument("--output", required=True, help="output potential prefix")
    parser.add_argument("--report", help="JSON report")


def run(args: argparse.Namespace) -> int:
    from qmml.steps import fit_elastic_file

    fit_elastic_file(args.potential, args.output,
                     {k: getattr(args, k) for k in ("a0", "C11", "C12", "C44")}, args.soft,
                     lambda0=args.lambda0, lambda_soft=args.lambda_soft, report=args.report,
                     log=print_line)
    return 0
