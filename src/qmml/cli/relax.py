"""``qmml relax``: force-mixed QM/ML relaxation (``qmml.steps.relax_file``).

Every QM call is cached in ``--cache`` and every optimiser step checkpointed, so a killed
run started again with the same arguments repeats no QM call and continues.  The output
is a QM/ML frame (``qmml.frames``: mixed ``forces``, ``region``, ``fix_mask``, provenance
info), readable by ``ForceQMMM.import_extxyz`` and by ``qmml retrain``.  With
``--optimizer accelerated``, ``--qm-frames`` also writes every QM-called geometry in the
same format, and ``--seed-frames`` reads such a file of an earlier run of the same
structure: its cached QM points are reused, not recomputed.
"""
from __future__ import annotations

import argparse

from qmml.cli._common import add_qmml_run_arguments, positive_float, qmml_run_options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True,
                        help="extxyz with 'region' (QM/buffer/MM) and 'fix_mask' arrays")
    parser.add_argument("--fmax", type=positive_float, default=0.01, help="force tolerance, eV/Å")
    add_qmml_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qmml.steps import NotConverged, relax_file

    try:
        relax_file(args.input, **qmml_run_options(args))
    except NotConverged:
        return 1  # the summary line above says so; the output is written
    return 0
