"""``qmml <step>``: every pipeline stage as a command.

Each command lives in a module that provides a ``configure(parser)`` and a
``run(args) -> int`` function (named in ``COMMANDS``).  Errors meant for users are ``QmmlError``: printed as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from qmml import QmmlError

# command name -> (module, its configure(parser) and run(args) functions, one-line help)
COMMANDS = {
    "relax": ("qmml.relax", "configure", "run",
              "force-mixed QM/ML relaxation (QM calls cached, checkpointed)"),
    "neb": ("qmml.relax", "configure_neb", "run_neb",
            "QM/ML NEB of a glide path, virtual-work barrier (cached, checkpointed)"),
    "fit-elastic": ("qmml.elastic", "configure", "run",
                    "fit Θ0: exact a0, C11, C12, C44 (hard constraints)"),
    "extract-forces": ("qmml.extract", "configure", "run",
                       "gather QM/ML frames into retraining targets"),
    "retrain": ("qmml.retrain", "configure", "run",
                "retrain Θ on QM/ML forces, hard constraints exact"),
    "constraints": ("qmml.constraints", "configure", "run",
                    "generate strain / vacancy-NEB / MD constraint sets"),
    "check-config": ("qmml.config", "configure", "run",
                     "validate a pipeline config (schema, defaults)"),
    "build": ("qmml.build", "configure", "run",
              "build a dislocation case (+ defect, QM/buffer/MM regions) as extxyz"),
    "binding": ("qmml.binding", "configure", "run",
                "QM/ML virtual-work binding path of a defect between two distances"),
}


def _function(command: str, which: int):
    module, *names, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), names[which])


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the options of the command named in ``argv`` only: configuring a
    command imports its module, and every Snakemake job would otherwise import all of
    them (matscipy, scipy, ASE's QM/MM) before it starts."""
    parser = argparse.ArgumentParser(prog="qmml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (*_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _function(name, 0)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(_function(args.command, 1)(args) or 0)
    except QmmlError as err:
        print(f"qmml {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
