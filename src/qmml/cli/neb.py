"""``qmml neb``: QM/ML NEB of a glide path with its virtual-work barrier
(``qmml.steps.neb_file``; cached and checkpointed as ``qmml relax``)."""
from __future__ import annotations

import argparse

from qmml.cli._common import (add_qmml_run_arguments, positive_float, positive_int,
                              qmml_run_options)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--initial", required=True, help="relaxed initial state (extxyz)")
    parser.add_argument("--final", required=True, help="relaxed final state (extxyz)")
    parser.add_argument("--images", type=positive_int,
                        default=7, help="images including end points")
    parser.add_argument("--spring", type=positive_float,
                        default=0.1, help="NEB spring constant, eV/Å²")
    parser.add_argument("--fmax", type=positive_float, default=0.05, help="force tolerance, eV/Å")
    parser.add_argument("--climb", action="store_true",
                        help="climbing image: the highest image of the virtual-work profile "
                        "climbs to the saddle (force mixing has no energy)")
    add_qmml_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qmml.steps import NotConverged, neb_file

    try:
        neb_file(args.initial, args.final, images=args.images, spring=args.spring,
                 climb=args.climb,
                 **qmml_run_options(args))
    except NotConverged:
        return 1  # the summary line above says so; the output is written
    return 0
