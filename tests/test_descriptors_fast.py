"""Per-atom descriptor path (sna/atom, snad/atom) and parallel descriptor sums against the
plain ``compute snap`` path and against LAMMPS ``pair_style snap`` forces."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from qmml.descriptors import (DescriptorCache, ForceSet, NormalEquations, close_workers,
                              compute_descriptors, descriptor_sums, energy_rows)
from qmml.descriptors.snap import _compute_snap_descriptors
from qmml.structures import dislocation_cylinder
from conftest import MILADY


@pytest.fixture(scope="module")
def quadratic(milady):
    """Θ0 in the quadratic space with small non-zero quadratic coefficients (so the
    quadratic columns matter in the force check)."""
    q = milady.to_quadratic()
    theta = q.theta
    theta[56:] = np.random.default_rng(3).normal(0.0, 1e-3, theta.size - 56)
    return q.with_theta(theta)


def _sheared_cell(seed=1):
    atoms = bulk("W", "bcc", MILADY["a0"], cubic=True) * (3, 3, 3)
    cell = atoms.cell.array.copy()
    cell[0, 1] += 0.4  # triclinic: LAMMPS frame differs from ASE's
    cell[2, 0] += 0.3
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _close(a, b, rtol=1e-10):
    scale = max(np.abs(b).max(initial=0.0), 1.0)
    assert a.shape == b.shape
    assert np.abs(a - b).max(initial=0.0) <= rtol * scale


@pytest.mark.parametrize("run_atoms", [None, 150])
def test_per_atom_path_equals_compute_snap_periodic(quadratic, run_atoms, monkeypatch):
    """Triclinic periodic cell: rows from open clusters with explicit periodic images (with
    at most 150 atoms per LAMMPS run: several clusters) equal compute snap's."""
    import qmml.descriptors.snap as descriptors

    if run_atoms:
        monkeypatch.setattr(descriptors, "_RUN_ATOMS", run_atoms)
    atoms = _sheared_cell()
    mask = np.arange(len(atoms)) % 3 == 0
    fast = compute_descriptors(atoms, quadratic, force_mask=mask)
    ref = _compute_snap_descriptors(atoms, quadratic, force_mask=mask)
    assert fast.forces.shape == (3 * mask.sum(), 1596)
    _close(fast.energy, ref.energy)
    _close(fast.forces, ref.forces)
    assert fast.energy[0] == len(atoms)
    # force rows are forces: rows·Θ equals pair_style snap (independent LAMMPS evaluation)
    atoms.calc = quadratic.calculator()
    f = atoms.get_forces()[mask].ravel()
    assert np.abs(fast.forces @ quadratic.theta - f).max() < 1e-8
    assert abs(fast.energy @ quadratic.theta - atoms.get_potential_energy()) < 1e-8
    # energy only: no rows, same sums
    only = compute_descriptors(atoms, quadratic, forces=False)
    assert only.forces is None
    _close(only.energy, ref.energy)


@pytest.mark.parametrize("run_atoms", [None, 300])
def test_per_atom_path_open_cylinder_with_fixed_shell(quadratic, run_atoms, monkeypatch):
    """Open boundaries, one-Burgers-vector periodic line, rows only for free atoms: the
    central-atom restriction must keep every atom within the cutoff of a free atom.  With
    at most 300 atoms per LAMMPS run the rows are summed from several open clusters."""
    import qmml.descriptors.snap as descriptors

    runs = []
    if run_atoms:
        monkeypatch.setattr(descriptors, "_RUN_ATOMS", run_atoms)
        real_system = descriptors.lammps_system
        monkeypatch.setattr(descriptors, "lammps_system",
                            lambda atoms, el: runs.append(len(atoms)) or real_system(atoms, el))
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=18, fixed_width=6)
    atoms.rattle(0.02, seed=4)
    free = ~atoms.arrays["fix_mask"].astype(bool)
    assert 0 < free.sum() < len(atoms)
    fast = compute_descriptors(atoms, quadratic, force_mask=free, energy=False)
    ref = _compute_snap_descriptors(atoms, quadratic, force_mask=free)
    assert fast.energy is None
    if run_atoms:
        assert len(runs) >= 3 and max(runs) < 2 * run_atoms  # several bounded clusters
    _close(fast.forces, ref.forces)
    atoms.calc = quadratic.calculator()
    assert np.abs(fast.forces @ quadratic.theta - atoms.get_forces()[free].ravel()).max() < 1e-8


def test_parallel_sums_equal_serial_compute_snap(quadratic, monkeypatch):
    import qmml.descriptors.sums as descriptors

    split = []
    real_split = descriptors._split_force_job
    monkeypatch.setattr(descriptors, "_split_force_job",
                        lambda job, parts: split.append(job[3][0]) or real_split(job, parts))
    frames = []
    for seed in range(4):
        a = bulk("W", "bcc", MILADY["a0"], cubic=True) * (2 + seed % 2, 2, 2)
        a.rattle(0.05, seed=seed)
        frames.append(a)
    rng = np.random.default_rng(7)
    masks = [rng.random(len(a)) < 0.6 for a in frames]
    targets = [rng.normal(size=(len(a), 3)) for a in frames]
    keeps = [np.arange(len(a)) < 3 for a in frames]
    ref = NormalEquations(1596)
    kept = []
    for a, m, t, k in zip(frames, masks, targets, keeps):
        rows = _compute_snap_descriptors(a, quadratic, force_mask=m).forces
        ref.add(rows, t[m].ravel())
        kept.append(rows[np.repeat(k[m], 3)])
    ref_energy = np.array([_compute_snap_descriptors(a, quadratic, forces=False).energy / len(a)
                           for a in frames])
    try:
        # five force frames on two workers: the last large one is split in two parts
        runs = [descriptor_sums(
            quadratic, [ForceSet(frames, masks, targets, keeps), ForceSet(frames[1:2])],
            [frames], workers=2) for _ in range(2)]
    finally:
        close_workers()
    (sums, soft), (hard,) = runs[0]
    assert split == [(2, 0), (2, 0)]  # frame 2 of the first set, in both runs
    # same inputs, same bits: sums are added in job order, not completion order
    np.testing.assert_array_equal(runs[1][0][0].normal.gtg, sums.normal.gtg)
    np.testing.assert_array_equal(runs[1][0][0].normal.gtf, sums.normal.gtf)
    _close(sums.normal.matrix(), ref.matrix())
    _close(sums.normal.gtf, ref.gtf)
    assert sums.normal.n_rows == ref.n_rows == 3 * sum(int(m.sum()) for m in masks)
    assert sums.normal.ftf == pytest.approx(ref.ftf, rel=1e-12)
    assert len(sums.kept_rows) == 4
    for got, want in zip(sums.kept_rows, kept):  # frame order kept
        _close(got, want)
    assert soft.normal.n_rows == 3 * len(frames[1])
    _close(hard, ref_energy)
    # serial energy_rows: same numbers
    _close(energy_rows(frames, quadratic), ref_energy)


def test_descriptor_cache_reuses_only_identical_sets(quadratic, tmp_path, monkeypatch):
    """A set already in the cache is read, bit for bit, not computed; a set that differs in
    one coordinate by 1e-9 Å, or a damaged entry, is computed again."""
    import qmml.descriptors.sums as desc

    frames = []
    for seed in range(3):
        a = bulk("W", "bcc", MILADY["a0"], cubic=True) * (2, 2, 2)
        a.rattle(0.05, seed=seed)
        frames.append(a)
    rng = np.random.default_rng(5)
    targets = [rng.normal(size=(len(a), 3)) for a in frames]
    keeps = [np.arange(len(a)) < 2 for a in frames]
    force_set = ForceSet(frames, None, targets, keeps)
    cache = DescriptorCache(tmp_path / "cache")
    (first,), (rows,) = descriptor_sums(quadratic, [force_set], [frames], cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    computed = []
    real_job = desc._chunk_job
    monkeypatch.setattr(desc, "_chunk_job", lambda pot, chunk: computed.append(
        [job[1] for job in chunk]) or real_job(pot, chunk))
    (again,), (rows_again,) = descriptor_sums(quadratic, [force_set], [frames], cache=cache)
    assert computed == []
    np.testing.assert_array_equal(rows_again, rows)
    np.testing.assert_array_equal(again.normal.matrix(), first.normal.matrix())
    np.testing.assert_array_equal(again.normal.gtf, first.normal.gtf)
    assert (again.normal.ftf, again.normal.n_rows) == (first.normal.ftf, first.normal.n_rows)
    assert len(again.kept_rows) == 3
    for got, want in zip(again.kept_rows + again.kept_targets,
                         first.kept_rows + first.kept_targets):
        np.testing.assert_array_equal(got, want)

    moved = [a.copy() for a in frames]
    moved[2].positions[0, 0] += 1e-9
    (_,), (rows_moved,) = descriptor_sums(quadratic, [force_set], [moved], cache=cache)
    assert computed == [["energy"] * 3]  # the energy set only; the force set was found
    _close(rows_moved, rows)

    computed.clear()
    for entry in (tmp_path / "cache").glob("force-*.npz"):
        entry.write_bytes(b"damaged")
    (recomputed,), _ = descriptor_sums(quadratic, [force_set], [frames], cache=cache)
    assert computed == [["force"] * 3]
    np.testing.assert_array_equal(recomputed.normal.matrix(), first.normal.matrix())
