"""Relaxations with the ML potential alone (no QM): the ML end states of binding energies,
the ML core of validation, the end states of ML-only NEBs.

The ML potential has energies, so ASE's preconditioned LBFGS with its line search applies
(force mixing, which has none, cannot use it): about a third of FIRE's force calls
(docs/performance.md, "ML-only relaxations").
"""
from __future__ import annotations

from ase import Atoms
from ase.calculators.calculator import Calculator

from qmml.frames import FIX_MASK, fixed_mask


def ml_image(atoms: Atoms) -> Atoms:
    """A bare copy of a frame (no calculator, no other arrays) with its fixed atoms
    (fix_mask, or FixAtoms) held."""
    from qmml.forcemixing import apply_fix_mask  # see qmml.binding's imports

    image = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    image.arrays[FIX_MASK] = fixed_mask(atoms).copy()
    apply_fix_mask(image)
    return image


def relax_ml(atoms: Atoms, calc: Calculator, fmax: float, steps: int) -> bool:
    """Relax ``atoms`` in place with the ML calculator ``calc`` (its constraints held);
    True if the largest free-atom force reached ``fmax`` (eV/Å) within ``steps``."""
    from ase.optimize.precon import PreconLBFGS

    atoms.calc = calc
    return bool(PreconLBFGS(atoms, logfile=None).run(fmax=fmax, steps=steps))
