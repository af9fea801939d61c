"""The accelerated optimiser's force rows with a species the potential lacks (He in W)."""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk

from qmml.accelerated.system import qm_force_rows


def test_rows_ignore_helium_as_the_potential_does(milady):
    """Rows·Θ are the potential's own forces on the QM atoms of a W cell holding a He
    atom (its pair style maps He to NULL); the He atom's rows are zero."""
    cell = bulk("W", "bcc", 3.18551, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=3)
    with_he = cell + Atoms("He", [cell.positions[0] + [1.0, 0.6, 0.3]])
    qm = np.zeros(len(with_he), dtype=bool)
    qm[[0, 1, 2, len(with_he) - 1]] = True  # three W atoms and the He atom
    rows = qm_force_rows(with_he, milady, qm)
    assert rows.shape == (3 * 4, milady.n_coefficients)
    assert not rows[-3:].any()
    with_he.calc = milady.calculator()
    forces = with_he.get_forces()
    np.testing.assert_allclose((rows @ milady.theta).reshape(-1, 3)[:3], forces[[0, 1, 2]],
                               rtol=0, atol=1e-8)
    # the He atom changes nothing for W: the same rows as the cell without it
    np.testing.assert_allclose(rows[:9], qm_force_rows(cell, milady, qm[:-1]), atol=1e-12)
    assert np.abs(forces[len(cell)]).max() == 0.0  # the potential exerts no force on He
