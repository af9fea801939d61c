"""SNAP potential files and the persistent LAMMPS calculator, against independent LAMMPS runs."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from qmml import QmmlError, potential_path
from qmml.descriptors import compute_descriptors
from qmml.lmp import new_lammps
from qmml.potential import SNAPPotential, n_bispectrum, n_coefficients


def test_descriptor_counts():
    assert n_bispectrum(8) == 55
    assert n_coefficients(8, False) == 56
    assert n_coefficients(8, True) == 1596
    assert n_bispectrum(6) == 30


def test_read_write_round_trip(milady, tmp_path):
    prefix = milady.write(tmp_path / "copy")
    again = SNAPPotential.read(prefix)
    assert again.elements == ["W"] and again.radii == [0.5] and again.weights == [1.0]
    np.testing.assert_array_equal(again.coeffs, milady.coeffs)
    assert again.params == milady.params
    # ".snapcoeff" suffix is accepted as the prefix too
    assert SNAPPotential.read(f"{prefix}.snapcoeff").n_coefficients == 56


def test_quadratic_embedding_appends_zeros(milady):
    q = milady.to_quadratic()
    assert q.quadratic and q.n_coefficients == 1596
    np.testing.assert_array_equal(q.theta[:56], milady.theta)
    assert not q.theta[56:].any()


def _bare_lammps_energy_forces(atoms, prefix):
    """Energy/forces from a plain LAMMPS script (no qmml calculator code)."""
    lmp = new_lammps()
    a = atoms.cell.lengths()[0]
    n = round(len(atoms) ** (1 / 3) / 2 ** (1 / 3))
    lmp.commands_list([
        f"lattice bcc {a / n}", f"region b block 0 {n} 0 {n} 0 {n}", "create_box 1 b",
        "create_atoms 1 box", "mass 1 183.84",
        "pair_style snap", f"pair_coeff * * {prefix}.snapcoeff {prefix}.snapparam W",
    ])
    # same rattle: set positions by id (create_atoms box order differs from ASE's)
    x = lmp.numpy.extract_atom("x")
    lattice_pos = np.array(x[: len(atoms)])
    ase_ref = bulk("W", "bcc", a / n, cubic=True) * (n, n, n)
    # match lattice sites of LAMMPS atoms to ASE atoms
    d = np.linalg.norm(lattice_pos[:, None, :] - ase_ref.positions[None, :, :], axis=2)
    order = d.argmin(axis=1)
    x[: len(atoms)] = atoms.positions[order]
    lmp.commands_list(["thermo_style custom step pe", "run 0"])
    e = lmp.get_thermo("pe")
    f = np.zeros((len(atoms), 3))
    f[order] = lmp.numpy.extract_atom("f")[: len(atoms)]
    lmp.close()
    return e, f


@pytest.mark.parametrize("quadratic", [False, True])
def test_written_potential_reproduces_linear_model(milady, tmp_path, quadratic, rng):
    """pair_style snap with the written files gives Θ·D energies and G·Θ forces (1e-8)."""
    pot = milady.to_quadratic() if quadratic else milady
    theta = pot.theta
    if quadratic:  # make the quadratic block matter
        theta[56:] = rng.normal(0.0, 2e-4, theta.size - 56)
    pot = pot.with_theta(theta)
    prefix = pot.write(tmp_path / "pot")
    atoms = bulk("W", "bcc", 3.18551, cubic=True) * (3, 3, 3)
    atoms.rattle(0.08, seed=3)
    desc = compute_descriptors(atoms, pot)
    e_lmp, f_lmp = _bare_lammps_energy_forces(atoms, prefix)
    assert abs(desc.energy @ theta - e_lmp) < 1e-8
    np.testing.assert_allclose(desc.forces @ theta, f_lmp.ravel(), atol=1e-8)
    assert np.abs(f_lmp).max() > 0.1  # forces are not trivially zero


def test_calculator_forces_and_stress_are_derivatives(milady):
    atoms = bulk("W", "bcc", 3.18551, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array @ np.array([[1.01, 0.004, 0], [0, 0.995, 0.002],
                                                [0.003, 0, 1.0]]), scale_atoms=True)
    atoms.calc = milady.calculator()
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, 1e-5),
                               atol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, 1e-6),
                               atol=1e-7)


def test_calculator_reuses_one_lammps_instance(milady):
    atoms = bulk("W", "bcc", 3.18551, cubic=True) * (3, 3, 3)
    calc = milady.calculator()
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    lmp = calc._lmp
    atoms.positions[0] += [0.1, 0.0, 0.0]
    e1 = atoms.get_potential_energy()
    atoms.set_cell(atoms.cell * 1.005, scale_atoms=True)
    e2 = atoms.get_potential_energy()
    assert calc._lmp is lmp and calc.n_lammps_runs == 3
    assert e1 > e0 and e2 != e1
    # a fresh calculator on the final state agrees
    fresh = atoms.copy()
    fresh.calc = milady.calculator()
    assert abs(fresh.get_potential_energy() - e2) < 1e-9


def test_helium_is_skipped_not_fatal(milady):
    """He has no ML force and does not change the W energy (it is not in the potential)."""
    w = bulk("W", "bcc", 3.18551, cubic=True) * (3, 3, 3)
    w.calc = milady.calculator()
    e_w = w.get_potential_energy()
    he = w.copy()
    he.append("He")
    he.positions[-1] = [0.8, 1.59, 0.0]  # tetrahedral-ish site
    he.calc = milady.calculator()
    f = he.get_forces()
    assert np.all(f[-1] == 0.0)
    assert abs(he.get_potential_energy() - e_w) < 1e-9
    np.testing.assert_allclose(f[:-1], 0.0, atol=1e-9)


def test_open_cluster_matches_periodic_interior(milady):
    """Shrink-wrapped (pbc False) directions: a cluster's energy equals a sum of isolated atoms."""
    atoms = bulk("W", "bcc", 3.18551, cubic=True) * (2, 2, 2)
    atoms.pbc = False
    atoms.center(vacuum=10.0)
    atoms.calc = milady.calculator()
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-9)  # no external force
    far = atoms.copy()
    far.positions += 3.0  # translation invariance in open directions
    far.calc = milady.calculator()
    assert abs(far.get_potential_energy() - atoms.get_potential_energy()) < 1e-9


def test_reference_stand_in_cohesive_energy(reference):
    pot, zbl = reference
    atoms = bulk("W", "bcc", 3.18, cubic=True) * (2, 2, 2)
    atoms.calc = pot.calculator(zbl=zbl)
    assert abs(atoms.get_potential_energy() / len(atoms) - (-11.03)) < 0.01


def test_bad_potential_files(tmp_path, milady):
    with pytest.raises(QmmlError, match="not found"):
        SNAPPotential.read(tmp_path / "missing")
    prefix = milady.write(tmp_path / "p")
    param = tmp_path / "p.snapparam"
    param.write_text(param.read_text().replace("twojmax 8", "twojmax 6"))
    with pytest.raises(QmmlError, match="56 coefficients per element, but twojmax=6"):
        SNAPPotential.read(prefix)
    other = SNAPPotential.read(potential_path("W_2940_2017_2"))
    with pytest.raises(QmmlError, match="descriptor parameter 'rcutfac' differs"):
        milady.check_compatible(other)
