"""Shared by the program doubles: qmml on the path, the classical stand-in, fake SCF.

The doubles are NOT the programs: energies, forces and stress come from qmml's classical
reference potential (W_2940_2017_2 SNAP + ZBL), and every output file says so.  What they
imitate faithfully is each program's file protocol: what it reads, what it refuses, what it
writes, and how it restarts from its previous wavefunction.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402

DOUBLE_NOTE = "qmml test double: classical stand-in (W_2940_2017_2 SNAP + ZBL), NOT DFT"
SCF_FRESH, SCF_RESTART = 21, 7  # fake SCF iterations from atoms / from a previous run


def stand_in(atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """(energy eV, forces eV/Å, stress eV/Å^3 Voigt) of the classical stand-in."""
    from qmml.potential import reference_potential

    pot, zbl = reference_potential()
    atoms = atoms.copy()
    atoms.calc = pot.calculator(zbl=zbl)
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces())
    stress = np.array(atoms.get_stress()) if atoms.pbc.all() else np.zeros(6)
    return energy, forces, stress


def write_wavefunction(path: Path, atoms: Atoms, what: str) -> None:
    """A fake restart file: the geometry it belongs to, labelled."""
    path.write_text(json.dumps({"note": f"FAKE {what} written by a {DOUBLE_NOTE}",
                                "numbers": atoms.numbers.tolist(),
                                "cell": np.asarray(atoms.cell).tolist()}))


def read_wavefunction(path: Path, atoms: Atoms) -> bool:
    """Whether ``path`` is a restart file for this system (same species and cell)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (data.get("numbers") == atoms.numbers.tolist()
            and np.allclose(data.get("cell"), np.asarray(atoms.cell), atol=1e-6))


class ProgramError(Exception):
    """An input the program refuses."""
