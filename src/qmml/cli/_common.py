"""Options shared by several commands (QM engine, QM/ML run settings) and printing."""
from __future__ import annotations

import argparse
from typing import Callable


def print_line(line: str) -> None:
    print(line, flush=True)


def _checked(check: str, kind: str) -> Callable[[str], object]:
    """An argparse ``type`` from the :mod:`qmml.checks` function ``check`` (its one-line
    message; imported on use, so that configuring a parser stays cheap)."""
    def convert(text: str):
        from qmml import QmmlError, checks

        try:
            return getattr(checks, check)("value", text)
        except QmmlError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("value: ")) from None

    convert.__name__ = kind  # argparse names the type in its messages
    return convert


# argparse types of every numeric option: NaN, inf and out-of-range values are refused
positive_float = _checked("positive", "positive number")
positive_int = _checked("positive_int", "positive integer")
nonnegative_float = _checked("nonnegative", "number >= 0")
finite_float = _checked("finite", "finite number")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The QM engine options, read back by :func:`engine_config`."""
    eng = parser.add_mutually_exclusive_group(required=True)
    eng.add_argument("--engine-config", help="YAML engine config (key 'engine' + settings)")
    eng.add_argument("--engine", help="engine name with default settings: tblite, gpaw, "
                     "vasp, espresso, castep, reference (classical stand-in, not QM)")
    parser.add_argument("--kpts-line", type=positive_int, default=None,
                        help="k-points along the dislocation line (tblite: replicas)")


def engine_config(args: argparse.Namespace) -> dict:
    """The engine config of :func:`add_engine_arguments`' options."""
    if args.engine_config:
        from qmml.engines import read_engine_config

        cfg = read_engine_config(args.engine_config)
    else:
        cfg = {"engine": args.engine}
    if args.kpts_line is not None:
        cfg["kpts_line"] = args.kpts_line
    return cfg


def add_ml_ranks_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ml-ranks", type=positive_int, default=1,
                        help="MPI processes for the ML potential's LAMMPS (default 1: in "
                        "this process); in QM/ML runs they wait while the QM engine runs")


def add_qmml_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qmml relax`` and ``qmml neb`` besides their inputs and fmax."""
    parser.add_argument("--potential", required=True,
                        help="ML potential prefix (PREFIX.snapcoeff + PREFIX.snapparam)")
    add_engine_arguments(parser)
    parser.add_argument("--optimizer", default="FIRE",
                        choices=["FIRE", "LBFGS", "ODE12r", "PreconLBFGS", "accelerated"],
                        help="accelerated: relax with the ML potential alone first, then "
                        "retrain a surrogate potential on the QM forces after each QM call "
                        "and relax it between QM calls (qmml.accelerated)")
    parser.add_argument("--hard", nargs="+", default=None, metavar="H.xyz",
                        help="accelerated only: hard-constraint extxyz files kept exact by "
                        "every surrogate (default: a small strain set of the potential, "
                        "generated in process)")
    parser.add_argument("--descriptor-cache", metavar="DIR", default=None,
                        help="accelerated only: folder of cached descriptor sums (as "
                        "`qmml retrain --descriptor-cache`); the hard rows are read from it "
                        "when present, else computed and stored")
    parser.add_argument("--qm-frames", metavar="FRAMES.xyz", default=None,
                        help="accelerated only: also write every QM-called geometry with its "
                        "true QM/ML forces (rejected probes and the final point included): "
                        "the QM data its surrogates were trained on, for retraining")
    parser.add_argument("--seed-frames", nargs="+", metavar="FRAMES.xyz", default=None,
                        help="accelerated only: --qm-frames files of earlier runs of the same "
                        "structure (e.g. the previous iteration's); their QM points found in "
                        "the cache train the surrogate without a QM call and the run starts "
                        "from the best of them")
    parser.add_argument("--surrogate-space", choices=["linear", "quadratic"],
                        help="accelerated only: descriptor space of the surrogate "
                        "(default: AcceleratedSettings.space, quadratic)")
    parser.add_argument("--buffer", type=positive_float, default=8.0,
                        help="buffer width in Å (at least the ML potential's cutoff)")
    parser.add_argument("--vacuum", type=nonnegative_float, default=5.0,
                        help="vacuum around the QM cluster")
    parser.add_argument("--steps", type=positive_int, default=1000,
                        help="maximum optimiser steps")
    add_ml_ranks_argument(parser)
    parser.add_argument("--cache", required=True, help="QM cache directory")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (default: OUTPUT.ckpt)")
    parser.add_argument("--output", required=True, help="output extxyz")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    parser.add_argument("--allow-unconverged", action="store_true",
                        help="exit 0 when --steps run out before fmax (the output records "
                             "converged=False); default: exit 1")


def qmml_run_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``qmml.steps.relax_file``/``neb_file`` from those options."""
    return dict(potential=args.potential, engine_config=engine_config(args), cache=args.cache,
                output=args.output, optimizer=args.optimizer, fmax=args.fmax,
                buffer=args.buffer, vacuum=args.vacuum, steps=args.steps,
                checkpoint=args.checkpoint, hard=args.hard,
                descriptor_cache=args.descriptor_cache, qm_frames=args.qm_frames,
                seed_frames=args.seed_frames, surrogate_space=args.surrogate_space,
                require_convergence=not args.allow_unconverged, ml_ranks=args.ml_ranks,
                quiet=args.quiet, log=print_line)
