"""``qmml <step>``: every pipeline stage as a command.

Each command lives in its own module, which provides ``configure(parser)`` and
``run(args) -> int``.  Errors meant for users are ``QmmlError``: printed as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from qmml import QmmlError

# command name -> (module, one-line help)
COMMANDS = {
    "relax": ("qmml.relax", "force-mixed QM/ML relaxation (QM calls cached, checkpointed)"),
    "neb": ("qmml.qmmm", "QM/ML NEB of a glide path, virtual-work barrier (cached, checkpointed)"),
    "fit-elastic": ("qmml.elastic", "fit Θ0: exact a0, C11, C12, C44 (hard constraints)"),
    "extract-forces": ("qmml.extract", "gather QM/ML frames into retraining targets"),
    "retrain": ("qmml.retrain", "retrain Θ on QM/ML forces, hard constraints exact"),
    "constraints": ("qmml.constraints", "generate strain / vacancy-NEB / MD constraint sets"),
    "check-config": ("qmml.config", "validate a pipeline config (schema, defaults)"),
    "build": ("qmml.build", "build a dislocation case (+ defect, QM/buffer/MM regions) as extxyz"),
    "binding": ("qmml.binding", "QM/ML virtual-work binding path of a defect between two distances"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except QmmlError as err:
        print(f"qmml {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
