"""``qmml validate``: one potential against the QM reference as a table
(``qmml.steps.validation``: elastic constants, vacancy energies, Peierls barrier and
path energies, screw core structure, held-out force errors)."""
from __future__ import annotations

import argparse
from pathlib import Path

from qmml import QmmlError
from qmml.cli._common import add_ml_ranks_argument, print_line


def _pair(text: str, parts: int, option: str) -> tuple[str, ...]:
    case, _, rest = text.partition("=")
    files = rest.split(",") if rest else []
    if not case or len(files) != parts - 1:
        raise QmmlError(f"{option} {text}: expected CASE=" + ",".join(
            ["FILE"] * (parts - 1)))
    return (case, *files)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--potential", required=True, help="potential prefix to validate")
    parser.add_argument("--elastic", default=None,
                        help="its elastic.json (a0, C11, C12, C44; as the pipeline's "
                             "elastic_check writes); default: measured here")
    parser.add_argument("--bulk-reference", required=True,
                        help="QM bulk reference JSON (qm_bulk/reference.json: a0, Cij)")
    parser.add_argument("--vacancy-reference", required=True, metavar="V.json",
                        help="the QM engine's vacancy energies; computed and written there "
                             "when the file does not exist (needs --engine/--engine-config "
                             "and --cache)")
    eng = parser.add_mutually_exclusive_group()
    eng.add_argument("--engine-config", help="YAML engine config (for --vacancy-reference)")
    eng.add_argument("--engine", help="engine name with default settings")
    parser.add_argument("--cache", help="QM cache directory (for --vacancy-reference)")
    parser.add_argument("--vacancy-cells", type=int, default=None,
                        help="n of the n×n×n periodic vacancy cell (default 2)")
    parser.add_argument("--glide", nargs="+", default=[], metavar="CASE=NEB.xyz",
                        help="QM/ML glide NEBs (qmml neb output) by case")
    parser.add_argument("--relaxed", nargs="+", default=[], metavar="CASE=RELAXED.xyz,BUILT.xyz",
                        help="QM/ML relaxed screw and its unrelaxed structure (qmml build)")
    parser.add_argument("--heldout", nargs="+", default=[], metavar="FRAMES.xyz",
                        help="QM/ML frames no retraining saw (extract-forces --heldout)")
    parser.add_argument("--output", required=True, help="validation CSV")
    parser.add_argument("--profiles", default=None, metavar="ML_NEB.json",
                        help="also write the ML-only glide NEB profiles by case (JSON)")
    add_ml_ranks_argument(parser)


def run(args: argparse.Namespace) -> int:
    from qmml.steps.validation import (VACANCY_CELLS, qm_vacancy_reference_file,
                                       validate_file)

    nebs = [_pair(t, 2, "--glide") for t in args.glide]
    relaxed = [_pair(t, 3, "--relaxed") for t in args.relaxed]
    if not Path(args.vacancy_reference).is_file():
        if not (args.engine or args.engine_config) or not args.cache:
            raise QmmlError(f"{args.vacancy_reference}: not found; give --engine or "
                            "--engine-config and --cache to compute it")
        if args.engine_config:
            from qmml.engines import read_engine_config

            cfg = read_engine_config(args.engine_config)
        else:
            cfg = {"engine": args.engine}
        qm_vacancy_reference_file(cfg, args.cache, args.bulk_reference,
                                  args.vacancy_reference,
                                  n_cells=args.vacancy_cells or VACANCY_CELLS, log=print_line)
    validate_file(args.potential, args.elastic, args.bulk_reference, args.vacancy_reference,
                  args.output, nebs=nebs, relaxed=relaxed,
                  heldout=[(Path(f).stem, f) for f in args.heldout],
                  profiles=args.profiles, ml_ranks=args.ml_ranks, log=print_line)
    return 0
