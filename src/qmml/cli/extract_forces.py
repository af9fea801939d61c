"""``qmml extract-forces``: an iteration's QM/ML frames into retraining targets
(``qmml.steps.extract_forces_file``)."""
from __future__ import annotations

import argparse

from qmml.cli._common import nonnegative_float, print_line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("frames", nargs="+", help="QM/ML extxyz files (qmml relax/neb output)")
    parser.add_argument("--potential", required=True, help="the iteration's potential prefix")
    parser.add_argument("--output", required=True, help="targets extxyz")
    parser.add_argument("--summary", help="JSON summary")
    parser.add_argument("--heldout", metavar="HELDOUT.xyz",
                        help="frames held back from the targets, for validation")
    parser.add_argument("--heldout-fraction", type=nonnegative_float, default=0.0,
                        help="fraction of the frames held back (every 1/f-th, "
                             "deterministic; default 0)")


def run(args: argparse.Namespace) -> int:
    from qmml.steps import extract_forces_file

    extract_forces_file(args.frames, args.potential, args.output, args.summary,
                        heldout=args.heldout, heldout_fraction=args.heldout_fraction,
                        log=print_line)
    return 0
