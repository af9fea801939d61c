"""The ML potential on two MPI ranks (qmml.lammps_mpi): the serial calculator's numbers, one
group of ranks for every calculator of the process, LAMMPS errors as one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from qmml.lammps_mpi import rank_group
from qmml.steps import relax_file


def _pair(atoms, potential):
    serial, spread = atoms.copy(), atoms.copy()
    serial.calc, spread.calc = potential.calculator(), potential.calculator(ranks=2)
    return serial, spread


def _agree(serial, spread) -> None:
    assert spread.get_potential_energy() == pytest.approx(serial.get_potential_energy(),
                                                          abs=1e-9)
    np.testing.assert_allclose(spread.get_forces(), serial.get_forces(), atol=1e-10)


def test_two_ranks_give_the_serial_energy_forces_and_stress(milady, small_screw, rng):
    cell = bulk("W", "bcc", 3.17, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=3)
    serial, spread = _pair(cell, milady)
    _agree(serial, spread)
    np.testing.assert_allclose(spread.get_stress(), serial.get_stress(), atol=1e-12)
    assert np.abs(serial.get_forces()).max() > 0.1  # a test with forces to compare
    for atoms in (serial, spread):  # positions moved and the cell strained in place
        atoms.positions[7] += [0.2, -0.1, 0.05]
        atoms.set_cell(atoms.cell * [1.01, 1.0, 0.995], scale_atoms=True)
    _agree(serial, spread)
    np.testing.assert_allclose(spread.get_stress(), serial.get_stress(), atol=1e-12)

    # a dislocation cylinder: open in x and y, periodic along the line
    free = ~small_screw.arrays["fix_mask"]
    small_screw.positions[free] += rng.normal(0.0, 0.03, (int(free.sum()), 3))
    cylinder, cylinder2 = _pair(small_screw, milady)
    _agree(cylinder, cylinder2)
    # one group of two ranks serves both calculators, each on a LAMMPS instance of its own
    group = rank_group(2)
    assert group.ranks == 2 and group.alive
    assert spread.calc.group is cylinder2.calc.group is group
    assert spread.calc.n_lammps_runs == 2 and cylinder2.calc.n_lammps_runs == 1


def test_a_lammps_error_on_one_rank_is_a_one_line_error_and_the_next_call_works(milady):
    cell = bulk("W", "bcc", 3.17, cubic=True) * (3, 3, 3)
    serial, spread = _pair(cell, milady)
    spread.get_forces()
    spread.positions[3] = np.nan  # LAMMPS stops on rank 0 only; rank 1 would wait for ever
    with pytest.raises(RuntimeError, match=r"^LAMMPS on 2 MPI ranks: ERROR on proc \d: "
                                           r"Non-numeric atom coords[^\n]*$"):
        spread.get_forces()
    spread.positions[3] = cell.positions[3]
    _agree(serial, spread)  # on a new group of ranks


def test_qmml_relaxation_with_the_ml_potential_on_two_ranks(small_screw_file, tmp_path,
                                                            shared_reference_cache):
    """The accelerated optimiser's ML evaluations (true system, surrogate) on the ranks:
    the same relaxation, the same QM points (from the QM cache) as in one process."""
    runs, slots = {}, rank_group(2).next_slot
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}.xyz"
        stats = relax_file(small_screw_file, out, "W_milady_lml", {"engine": "reference"},
                           shared_reference_cache, optimizer="accelerated", fmax=0.02,
                           buffer=5.0, steps=50, ml_ranks=ranks)
        runs[ranks] = (stats, read(out))
    (one, frame1), (two, frame2) = runs[1], runs[2]
    assert one.converged and two.converged
    assert two.n_qm_calls == one.n_qm_calls and two.n_qm_real_calls_process == 0
    np.testing.assert_allclose(frame2.positions, frame1.positions, atol=1e-6)
    # the run's Θ_i calculators (true QM/ML system, surrogate) were served by the ranks
    assert rank_group(2).next_slot >= slots + 2
