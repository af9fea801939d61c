"""``qmml build``: a dislocation case (cylinder or glide end points, optional point defect,
QM/buffer/MM regions) written as extended XYZ with ``region`` and ``fix_mask`` arrays
(``qmml.steps.build_file``).

Settings come from ``--config`` (YAML or JSON mapping; keys = the long options with
underscores, e.g. ``fixed_width``) and/or command-line flags; flags win.
"""
from __future__ import annotations

import argparse

from qmml.cli._common import finite_float, nonnegative_float, positive_float, positive_int


def configure(parser: argparse.ArgumentParser) -> None:
    from qmml.build import DEFAULT_POTENTIAL
    from qmml.structures import KINDS

    parser.add_argument("--config", help="YAML/JSON file with the settings below")
    parser.add_argument("--kind", choices=list(KINDS), help="dislocation kind")
    parser.add_argument("--radius", type=positive_float, help="cylinder radius (Å)")
    parser.add_argument("--fixed-width", type=nonnegative_float,
                        help="outer fixed shell (Å, default 10)")
    parser.add_argument("--n-line", type=positive_int,
                        help="lattice repeats along the line (default 1)")
    parser.add_argument("--symbol", help="host element (default W)")
    parser.add_argument("--potential", help="SNAP prefix (ML cutoff; elastic constants if "
                        f"--a0/--C11/--C12/--C44 are omitted); default {DEFAULT_POTENTIAL}")
    parser.add_argument("--zbl", type=positive_float, nargs=2, metavar=("INNER", "OUTER"),
                        help="ZBL overlay of the potential (auto for W_2940_2017_2)")
    for key in ("a0", "C11", "C12", "C44"):
        parser.add_argument(f"--{key}", type=positive_float,
                            help="lattice constant (Å)" if key == "a0" else f"{key} (GPa)")
    parser.add_argument("--qm-radius", type=positive_float,
                        help="QM radius (Å); no regions if omitted")
    parser.add_argument("--buffer", type=positive_float, help="buffer width (Å, default 12)")
    parser.add_argument("--region", choices=["auto", "cylinder", "sphere"],
                        help="QM shape (auto: sphere around a defect, else cylinder)")
    parser.add_argument("--defect", help="vacancy, He_tet, He_oct or HenVm (e.g. He2V1)")
    parser.add_argument("--distance", type=nonnegative_float,
                        help="defect distance from the core (Å)")
    parser.add_argument("--direction", type=finite_float, nargs=2, metavar=("DX", "DY"),
                        help="defect direction from the core in xy (default 1 0: glide plane)")
    parser.add_argument("--z", type=finite_float,
                        help="defect height along the line (default mid-cell)")
    parser.add_argument("--glide", action="store_const", const=True,
                        help="write the glide end points (2 frames: initial, final)")
    parser.add_argument("--output", help="output .xyz (extended XYZ)")


def run(args: argparse.Namespace) -> int:
    from qmml.build import load_settings
    from qmml.io import json_text
    from qmml.steps import build_file

    settings = load_settings(args.config, vars(args))
    summary = build_file(settings, settings["output"])
    print(json_text(summary, "build summary", indent=None))
    return 0
