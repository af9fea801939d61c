"""Constraint sets for retraining, computed with Θ0 = W_milady_lml (method.md, "Retraining")."""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk

from qmml import QmmlError, potential_path
from qmml.cli import main
from qmml.constraints import lattice_constant, md_snapshots, strain_set, vacancy_neb, write_set
from qmml.io import read_frames as read_set
from qmml.potential import SNAPPotential

A0_MILADY = 3.18551  # Å, Goryaeva et al. PRM 5, 103803 (2021)

# The six modes written out by hand (not taken from the module): S = (abᵀ+baᵀ)/(2|a||b|).
_r2, _r6 = np.sqrt(2), np.sqrt(6)
EXPECTED_S = {
    "hydrostatic": np.eye(3) / 3,
    "uniaxial_100": np.diag([1.0, 0, 0]),
    "uniaxial_111": np.full((3, 3), 1 / 3),
    "shear_100_010": np.array([[0, 0.5, 0], [0.5, 0, 0], [0, 0, 0]]),
    "shear_110_001": np.array([[0, 0, 1], [0, 0, 1], [1, 1, 0]]) / (2 * _r2),
    # a=[1,1,0], b=[1,-1,2]: a bᵀ + b aᵀ = [[2,0,2],[0,-2,2],[2,2,0]], |a||b| = √2·√6
    "shear_110_1-12": np.array([[2, 0, 2], [0, -2, 2], [2, 2, 0]]) / (2 * _r2 * _r6),
}


@pytest.fixture(scope="module")
def theta0() -> SNAPPotential:
    return SNAPPotential.read(potential_path("W_milady_lml"))


@pytest.fixture(scope="module")
def a0(theta0) -> float:
    return lattice_constant(theta0)


def test_lattice_constant_of_theta0(theta0, a0):
    assert abs(a0 - A0_MILADY) < 1e-4
    # a minimum of E(a), not just a root of p: compressed cells push out, stretched pull in
    calc = theta0.calculator()
    pressures = []
    for a in (a0 - 0.01, a0, a0 + 0.01):
        atoms = bulk("W", "bcc", a=a, cubic=True)
        atoms.calc = calc
        pressures.append(-atoms.get_stress()[:3].mean() / units.GPa)
    assert pressures[0] > 1.0 and pressures[2] < -1.0
    assert abs(pressures[1]) < 1e-6


def test_strain_set_default_counts_and_deformation(theta0, a0):
    configs = strain_set(theta0, a0=a0)
    assert len(configs) == 102
    assert all(len(c) == 250 for c in configs)
    reference = bulk("W", "bcc", a=a0, cubic=True).repeat(5)
    assert np.allclose(reference.cell.array, np.eye(3) * 5 * a0)
    eps_expected = np.linspace(-0.01, 0.01, 17)
    for mode, S in EXPECTED_S.items():
        assert np.allclose(S, S.T)
        members = [c for c in configs if c.info["mode"] == mode]
        assert len(members) == 17
        assert np.allclose([c.info["strain"] for c in members], eps_expected, atol=1e-15)
        for c in members:
            # cell rows v → F v, i.e. cell = ref_cell Fᵀ: recover F from the two cells
            F = np.linalg.solve(reference.cell.array, c.cell.array).T
            assert np.allclose(F, np.eye(3) + c.info["strain"] * S, atol=1e-14)
            assert np.allclose(c.positions, reference.positions @ F.T, atol=1e-10)
    shears = [EXPECTED_S[m] for m in EXPECTED_S if m.startswith("shear")]
    assert all(np.isclose(np.trace(S), 0) and np.isclose(np.linalg.norm(S), 1 / _r2)
               for S in shears)


def test_strain_set_stress_with_theta0(theta0, a0):
    configs = strain_set(theta0, a0=a0, n_strains=3)  # ε = -1 %, 0, +1 %
    calc = theta0.calculator()
    unstrained = next(c for c in configs if c.info["strain"] == 0.0)
    unstrained.calc = calc
    assert np.abs(unstrained.get_stress() / units.GPa).max() < 1e-4
    e0 = unstrained.get_potential_energy()
    for mode in ("hydrostatic", "shear_110_1-12"):
        lo, hi = (c for c in configs if c.info["mode"] == mode and c.info["strain"] != 0)
        for c in (lo, hi):
            c.calc = calc
            assert c.get_potential_energy() > e0 + 1e-3  # a0 is an energy minimum
        if mode == "hydrostatic":
            p_lo = -lo.get_stress()[:3].mean() / units.GPa
            p_hi = -hi.get_stress()[:3].mean() / units.GPa
            assert p_lo > 1.0 > -1.0 > p_hi  # compressed: positive pressure


@pytest.fixture(scope="module")
def neb_images(theta0, a0):
    return vacancy_neb(theta0, a0=a0)  # paper size: 5×5×5 cell, 13 images (~20 s)


def _vacant_site(atoms, a0, n_cells=5):
    sites = bulk("W", "bcc", a=a0, cubic=True).repeat(n_cells).positions
    d = np.linalg.norm(sites[:, None, :] - atoms.positions[None, :, :], axis=2).min(axis=1)
    empty = np.flatnonzero(d > 0.5)
    assert len(empty) == 1
    return sites[empty[0]]


def test_vacancy_neb(neb_images, a0):
    images = neb_images
    assert len(images) == 13
    assert all(len(im) == 249 for im in images)
    # endpoints are vacancy configurations one nearest-neighbour hop apart
    hop = _vacant_site(images[-1], a0) - _vacant_site(images[0], a0)
    assert np.isclose(np.linalg.norm(hop), a0 * np.sqrt(3) / 2, atol=1e-9)
    moved = np.linalg.norm(images[-1].positions - images[0].positions, axis=1)
    assert np.sum(moved > 1.0) == 1  # one atom hops, the rest only relax
    assert abs(moved.max() - a0 * np.sqrt(3) / 2) < 0.3
    energies = np.array([im.info["e_theta0"] for im in images])
    barrier = images[0].info["barrier"]
    print(f"vacancy migration barrier with W_milady_lml: {barrier:.4f} eV")
    assert np.isclose(barrier, energies.max() - energies[0])
    assert 0.5 < barrier < 3.0
    assert abs(energies[-1] - energies[0]) < 2e-3  # symmetry-equivalent endpoints
    # rises then falls: monotonic over the outer thirds, maximum in the middle third
    assert np.all(np.diff(energies[:5]) > 0) and np.all(np.diff(energies[-5:]) < 0)
    assert 4 <= int(np.argmax(energies)) <= 8
    assert np.all(energies[1:-1] > energies[0] + 0.1)


def test_md_snapshots_300K(theta0, a0):
    snaps = md_snapshots(theta0, temperatures=(300.0,), a0=a0, n_steps=200, n_snapshots=10)
    assert len(snaps) == 10 and all(len(s) == 250 for s in snaps)
    assert [s.info["step"] for s in snaps] == list(range(20, 201, 20))
    drift = max(s.info["etotal_drift"] for s in snaps)
    print(f"NVE 300 K energy drift over 200 fs: {drift:.2e} eV/atom")
    assert drift < 1e-3
    # started at 2T = 600 K on the lattice: equipartition gives ~T in the second half
    late = [s.info["temperature"] for s in snaps[5:]]
    assert 150 < np.mean(late) < 450
    assert all(50 < t < 800 for t in late)
    # atoms displaced from their lattice sites by thermal motion (rms ~0.05 Å at 300 K)
    sites = bulk("W", "bcc", a=a0, cubic=True).repeat(5).positions
    for s in snaps[5:]:
        d = s.positions[:, None, :] - sites[None, :, :]
        d -= np.rint(d / (5 * a0)) * 5 * a0  # minimum image in the cubic cell
        nearest = np.linalg.norm(d, axis=2).min(axis=1)
        rms = np.sqrt((nearest ** 2).mean())
        assert 0.01 < rms < 0.2 and nearest.max() < 0.6  # vibrating, not diffusing


def test_md_deterministic_and_hot(theta0, a0):
    kwargs = dict(temperatures=(3000.0,), a0=a0, n_cells=2, n_steps=100, n_snapshots=10, seed=7)
    first, second = md_snapshots(theta0, **kwargs), md_snapshots(theta0, **kwargs)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(first, second))
    other = md_snapshots(theta0, **dict(kwargs, seed=8))
    assert not np.allclose(first[-1].positions, other[-1].positions)
    # 16 atoms: the instantaneous T fluctuates strongly, so average the second half
    assert 1500 < np.mean([s.info["temperature"] for s in first[5:]]) < 4500
    assert max(s.info["etotal_drift"] for s in first) < 1e-2  # 3000 K, 16 atoms
    with pytest.raises(QmmlError, match="positive"):
        md_snapshots(theta0, temperatures=(-5.0,), a0=a0)


def test_write_read_roundtrip(theta0, a0, tmp_path):
    configs = strain_set(theta0, a0=a0, n_cells=2, n_strains=3)
    path = write_set(tmp_path / "s.xyz", configs)
    assert not (tmp_path / "s.xyz.tmp").exists()
    back = read_set(path)
    assert len(back) == 18
    for a, b in zip(configs, back):
        assert np.allclose(a.positions, b.positions) and np.allclose(a.cell, b.cell)
        assert b.info["mode"] == a.info["mode"]
        assert b.info["strain"] == pytest.approx(a.info["strain"])
        assert b.calc is None
    with pytest.raises(QmmlError, match="not found"):
        read_set(tmp_path / "missing.xyz")


def test_cli_quick(tmp_path, capsys):
    out = {k: tmp_path / f"{k}.xyz" for k in ("strain", "neb", "md")}
    rc = main(["constraints", "--potential", "W_milady_lml", "--quick",
               "--strain", str(out["strain"]), "--neb", str(out["neb"]), "--md", str(out["md"])])
    assert rc == 0
    strain, neb, md = (read_set(out[k]) for k in ("strain", "neb", "md"))
    assert len(strain) == 30 and len(strain[0]) == 54  # quick: 3×3×3 cells, 6 modes × 5 ε
    assert len(neb) == 5 and len(neb[0]) == 53 and 0.5 < neb[0].info["barrier"] < 3.0
    assert len(md) == 6 and {s.info["target_temperature"] for s in md} == {300.0, 1000.0, 3000.0}
    assert abs(strain[0].info["a0"] - A0_MILADY) < 1e-4
    assert "barrier" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    rc = main(["constraints", "--potential", str(tmp_path / "nope"),
               "--md", str(tmp_path / "m.xyz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "nope.snapcoeff" in err and "not found" in err
    with pytest.raises(SystemExit) as stop:  # refused while parsing the options
        main(["constraints", "--potential", "W_milady_lml", "--temperatures", "300", "-10",
              "--md", str(tmp_path / "m.xyz")])
    rc, err = stop.value.code, capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "-10" in err
    assert not (tmp_path / "m.xyz").exists()
    rc = main(["constraints", "--potential", "W_milady_lml"])
    assert rc == 2 and "nothing to do" in capsys.readouterr().err
