"""``qmml binding``: QM/ML virtual-work binding path of a defect between two distances
(``qmml.steps.binding_path_file``)."""
from __future__ import annotations

import argparse

from qmml.cli._common import (add_engine_arguments, add_ml_ranks_argument, engine_config,
                              nonnegative_float, positive_float, positive_int, print_line)


def configure(parser: argparse.ArgumentParser) -> None:
    from qmml.binding import ML_FMAX

    parser.add_argument("--far", required=True, help="QM/ML-relaxed far state (extxyz)")
    parser.add_argument("--near", required=True, help="QM/ML-relaxed near state (extxyz)")
    parser.add_argument("--far-structure", required=True,
                        help="the far state as built (qmml build: info with defect_position)")
    parser.add_argument("--near-structure", required=True, help="the near state as built")
    parser.add_argument("--potential", required=True, help="ML potential prefix")
    add_engine_arguments(parser)
    parser.add_argument("--images", type=positive_int, default=7,
                        help="path images incl. end points (odd: Simpson)")
    parser.add_argument("--qm-radius", type=positive_float, default=None,
                        help="QM sphere radius (default: from the built structures)")
    parser.add_argument("--buffer", type=positive_float, required=True, help="buffer width, Å")
    parser.add_argument("--vacuum", type=nonnegative_float, default=5.0)
    parser.add_argument("--ml-fmax", type=positive_float, default=None,
                        help=f"fmax of the ML-only end-state relaxations (default {ML_FMAX})")
    parser.add_argument("--cache", required=True, help="QM cache directory")
    parser.add_argument("--output", required=True, help="path frames (extxyz)")
    add_ml_ranks_argument(parser)
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from qmml.steps import binding_path_file

    binding_path_file(args.far, args.near, args.far_structure, args.near_structure,
                      args.potential, engine_config(args), args.cache, args.output,
                      images=args.images, buffer=args.buffer, vacuum=args.vacuum,
                      qm_radius=args.qm_radius, ml_fmax=args.ml_fmax,
                      ml_ranks=args.ml_ranks, quiet=args.quiet, log=print_line)
    return 0
