"""Path energies as training rows: virtual work of the mixed forces vs descriptor sums."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from qmml import QmmlError
from qmml.path_energy import ordered_images, path_rows, virtual_work_energies


def _hop_path(potential, n_images: int = 11, scale: float = 1.0):
    """A vacancy hop in a 2x2x2 bcc cell, straight line, with the potential's forces
    times ``scale`` stored on each image (the "QM/ML" forces); also the energies."""
    perfect = bulk("W", "bcc", 3.18551, cubic=True) * (2, 2, 2)
    start = perfect.copy()
    site = start.positions[0].copy()
    del start[0]
    mover = int(np.argmin(np.linalg.norm(start.positions - (site + 3.18551 / 2), axis=1)))
    images, energies = [], []
    calc = potential.calculator()
    for t in np.linspace(0, 1, n_images):
        atoms = start.copy()
        atoms.positions[mover] += t * (site - start.positions[mover])
        atoms.calc = calc
        forces, energy = atoms.get_forces(), atoms.get_potential_energy()
        atoms.calc = SinglePointCalculator(atoms, forces=scale * forces, energy=energy)
        atoms.arrays["forces"] = scale * forces
        images.append(atoms)
        energies.append(energy)
    return images, np.array(energies) - energies[0]


def test_rows_give_the_potential_energy_change_exactly(milady):
    images, energies = _hop_path(milady)
    rows = path_rows(images, milady, source="hop")
    assert rows.rows.shape == (len(images) - 1, milady.theta.size)
    np.testing.assert_allclose(rows.rows @ milady.theta, energies[1:], rtol=0, atol=1e-8)
    assert energies.max() > 0.5  # a real barrier (unrelaxed straight hop)


def test_virtual_work_follows_the_energy_to_spline_accuracy(milady):
    images, energies = _hop_path(milady, n_images=21)
    work = virtual_work_energies(images)
    assert work[0] == 0.0
    barrier = energies.max()
    assert np.abs(work - energies).max() < 1e-3 * barrier
    # twice the image spacing: the spline quadrature error grows far more than a
    # trapezoid's fourfold (measured 22×: 0.03 % -> 0.6 % of the barrier)
    coarse = virtual_work_energies(images[::2])
    assert np.abs(coarse - energies[::2]).max() < 0.01 * barrier
    ratio = np.abs(coarse - energies[::2]).max() / np.abs(work[::2] - energies[::2]).max()
    assert ratio > 8.0


def test_barrier_error_of_scaled_forces(milady):
    images, energies = _hop_path(milady, n_images=21, scale=0.8)  # "QM/ML" forces 20 % weaker
    rows = path_rows(images, milady)
    error = rows.barrier_error(milady.theta)
    assert error == pytest.approx(energies.max() / virtual_work_energies(images).max() - 1,
                                  abs=1e-9)
    # the ML barrier is 1/0.8 of the virtual-work one, to the trapezoid error (~2 %)
    assert error == pytest.approx(0.25, abs=0.03)


def test_paths_are_checked(milady):
    images, _ = _hop_path(milady, n_images=3)
    with pytest.raises(QmmlError, match="at least 2 images"):
        ordered_images(images[:1], "p.xyz")
    other = images[1].copy()
    del other[0]
    with pytest.raises(QmmlError, match="image 1 has other atoms"):
        ordered_images([images[0], other], "p.xyz")
    for k, atoms in enumerate(images):
        atoms.info["neb_image"] = 2 - k
    assert [a.info["neb_image"] for a in ordered_images(images, "p.xyz")] == [0, 1, 2]


def test_retraining_on_path_energies_fixes_the_barrier(milady):
    """Forces alone leave part of the barrier error; the path rows remove it, hard rows
    stay exact."""
    from qmml.constraints import strain_set
    from qmml.retrain import retrain

    images, _ = _hop_path(milady, n_images=9, scale=0.8)
    hard = strain_set(milady, a0=3.18551, n_cells=2, n_strains=3)
    targets = [(f"hop {k}", a) for k, a in enumerate(images)]
    _, forces_only = retrain(milady, targets, hard, [], lambda0=1e-3,
                             paths=[("hop", images)], lambda_path=0.0)
    _, with_path = retrain(milady, targets, hard, [], lambda0=1e-3,
                           paths=[("hop", images)], lambda_path=1e4)
    assert with_path["lambda_path"] == 1e4
    # lambda_path 0 only reports: the same potential as without paths
    _, plain = retrain(milady, targets, hard, [], lambda0=1e-3)
    assert plain["paths"] == []
    assert forces_only["qm_force_rmse_after"] == pytest.approx(plain["qm_force_rmse_after"])
    report = with_path["paths"][0]
    assert report["barrier_relative_error_before"] == pytest.approx(
        path_rows(images, milady).barrier_error(milady.theta), abs=1e-9)
    assert abs(report["barrier_relative_error_after"]) < 0.03
    assert report["profile_rmse_after"] < 0.2 * report["profile_rmse_before"]
    assert with_path["hard_residual_max"] < 1e-9


def test_binding_path_gives_its_end_to_end_row(milady):
    """A qmml binding output (path_image, E_b_qmml info) contributes one row: the
    descriptor-sum change between its end states, target −E_b of the segment."""
    images, energies = _hop_path(milady, n_images=5)
    for k, atoms in enumerate(images):
        atoms.info.update(path_image=k, E_b_qmml=0.3)
    rows = path_rows(images[::-1], milady, source="binding")  # ordered by path_image
    assert rows.rows.shape == (1, milady.theta.size)
    np.testing.assert_allclose(rows.targets, [-0.3])
    assert float(rows.rows[0] @ milady.theta) == pytest.approx(energies[-1], abs=1e-8)
