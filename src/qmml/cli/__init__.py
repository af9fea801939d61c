"""``qmml <step>``: every pipeline stage as a command.

One module per command in this package, each with ``configure(parser)`` (its options) and
``run(args) -> int`` (calls one ``qmml.steps`` function).  Errors meant for users are
``QmmlError``: printed as one line, exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from qmml import QmmlError
from qmml.interrupt import EXIT_STATUS, Terminated, stop_on_sigterm, stopped_message

# command name -> (module in qmml.cli, one-line help)
COMMANDS = {
    "relax": ("relax", "force-mixed QM/ML relaxation (QM calls cached, checkpointed)"),
    "neb": ("neb", "QM/ML NEB of a glide path, virtual-work barrier (cached, checkpointed)"),
    "fit-elastic": ("fit_elastic", "fit Θ0: exact a0, C11, C12, C44 (hard constraints)"),
    "extract-forces": ("extract_forces", "gather QM/ML frames into retraining targets"),
    "retrain": ("retrain", "retrain Θ on QM/ML forces, hard constraints exact"),
    "constraints": ("constraints", "generate strain / vacancy-NEB / MD constraint sets"),
    "check-config": ("check_config", "validate a pipeline config (schema, defaults)"),
    "build": ("build", "build a dislocation case (+ defect, QM/buffer/MM regions) as extxyz"),
    "binding": ("binding", "QM/ML virtual-work binding path of a defect between two distances"),
    "validate": ("validate", "validate a potential against the QM reference (table)"),
}


def command_module(command: str):
    return importlib.import_module(f"qmml.cli.{COMMANDS[command][0]}")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the option and what is wrong), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the options of the command named in ``argv`` only: configuring a
    command imports its module, and every Snakemake job would otherwise import all of
    them (matscipy, scipy, ASE's QM/MM) before it starts."""
    parser = _Parser(prog="qmml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            command_module(name).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        with stop_on_sigterm():
            return int(command_module(args.command).run(args) or 0)
    except QmmlError as err:
        print(f"qmml {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Terminated as err:  # SLURM's time limit: say what is kept, how to go on
        print(f"qmml {args.command}: "
              f"{stopped_message(err, 'run the same command again')}", file=sys.stderr,
              flush=True)
        return EXIT_STATUS
