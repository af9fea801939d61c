"""Dislocation cylinders, glide end points and point defects (qmml.structures)."""
from __future__ import annotations

import numpy as np
import pytest

from qmml import QmmlError
from qmml.structures import (KINDS, add_point_defect, dislocation_cylinder, glide_endpoints,
                             perfect_sites)

A0, C11, C12, C44 = 3.18551, 513.1, 201.0, 144.9  # W_milady_lml (method.md)
ELASTIC = dict(a0=A0, C11=C11, C12=C12, C44=C44)
B111, B100 = A0 * np.sqrt(3) / 2, A0
BURGERS = {"screw111": (B111, 2), "edge111": (B111, 0),
           "edge100_110": (B100, 0), "edge100_001": (B100, 0)}  # |b|, lab axis of b


def cylinder(kind: str, radius: float = 30.0, fixed: float = 8.0, n_line: int = 1):
    return dislocation_cylinder(kind, **ELASTIC, radius=radius, fixed_width=fixed,
                                n_line=n_line)


@pytest.mark.parametrize("kind", list(KINDS))
def test_atom_count_cell_and_burgers(kind):
    atoms = cylinder(kind)
    rho = 2 / A0**3  # bcc
    expected = rho * np.pi * 30.0**2 * atoms.cell[2, 2]
    assert abs(len(atoms) - expected) / expected < 0.04
    assert atoms.cell.orthorhombic and list(atoms.pbc) == [False, False, True]
    b = np.asarray(atoms.info["burgers"])
    length, axis = BURGERS[kind]
    assert np.linalg.norm(b) == pytest.approx(length, rel=1e-12)
    assert abs(b[axis]) == pytest.approx(length, rel=1e-12)  # screw: b ∥ z, edge: b ∥ x
    for key, value in ELASTIC.items():
        assert atoms.info[key] == pytest.approx(value)
    # n_line repeats the slab exactly
    long = cylinder(kind, n_line=3)
    assert len(long) == 3 * len(atoms)
    assert long.cell[2, 2] == pytest.approx(3 * atoms.cell[2, 2])
    assert long.arrays["fix_mask"].sum() == 3 * atoms.arrays["fix_mask"].sum()
    assert long.info["n_line"] == 3


@pytest.mark.parametrize("kind", list(KINDS))
def test_burgers_circuit_closure(kind):
    """Around the core the elastic displacement grows continuously by exactly b."""
    atoms = cylinder(kind)
    sites, residual = perfect_sites(atoms)
    # every atom sits on a perfect-crystal site + the elastic field of its C_ij
    assert np.nanmax(residual) < 1e-4
    u = atoms.positions - sites
    d = atoms.positions[:, :2] - atoms.info["core_position"]
    r, theta = np.linalg.norm(d, axis=1), np.arctan2(d[:, 1], d[:, 0])
    loop = np.flatnonzero((r > 10) & (r < 16))
    loop = loop[np.argsort(theta[loop])]
    steps = np.diff(np.vstack([u[loop], u[loop[:1]]]), axis=0)  # counter-clockwise
    sizes = np.linalg.norm(steps, axis=1)
    cut = np.argmax(sizes)
    b = np.asarray(atoms.info["burgers"])
    # single-valued u: the smooth increase b is returned in one jump across the cut
    assert np.linalg.norm(steps[cut] + b) < 0.2
    assert np.delete(sizes, cut).max() < 0.15
    assert np.linalg.norm(steps.sum(axis=0)) < 1e-9


def test_screw_field_is_b_theta_over_2pi():
    atoms = cylinder("screw111")
    sites, _ = perfect_sites(atoms)
    uz = atoms.positions[:, 2] - sites[:, 2]
    d = atoms.positions[:, :2] - atoms.info["core_position"]
    r, theta = np.linalg.norm(d, axis=1), np.arctan2(d[:, 1], d[:, 0])
    ring = (r > 6) & (r < 20)
    b = B111
    # the 1/2[111] screw in a cubic crystal has the isotropic u_z = bθ/2π (3-fold axis)
    diff = uz[ring] - b * theta[ring] / (2 * np.pi)
    diff -= b * np.round((diff - diff[0]) / b)  # branch of θ
    assert np.ptp(diff) < 0.02


def test_edge_field_depends_on_anisotropy():
    a = cylinder("edge100_110")
    b = dislocation_cylinder("edge100_110", A0, C11, C12, 1.3 * C44, 30.0, 8.0)
    assert len(a) == len(b)
    assert np.abs(a.positions - b.positions).max() > 0.02
    # exactly isotropic (2·C44 = C11 − C12): the Stroh solver is degenerate -> user error
    with pytest.raises(QmmlError, match="C44"):
        dislocation_cylinder("edge100_110", A0, C11, C12, (C11 - C12) / 2, 15.0, 5.0)


@pytest.mark.parametrize("kind", ["screw111", "edge100_001"])
def test_fixed_shell(kind):
    atoms = cylinder(kind, radius=30.0, fixed=8.0)
    fix = atoms.arrays["fix_mask"]
    assert atoms.constraints[0].get_indices().tolist() == np.flatnonzero(fix).tolist()
    # fixed = outer 8 Å of the perfect cylinder (before the elastic displacement)
    sites, _ = perfect_sites(atoms)
    r_site = np.linalg.norm(sites[:, :2] - atoms.info["core_position"], axis=1)
    assert fix.tolist() == (r_site > 22.0).tolist()
    assert r_site.max() <= 30.0
    ring = np.pi * (30.0**2 - 22.0**2) * atoms.cell[2, 2] * 2 / A0**3
    assert abs(fix.sum() - ring) / ring < 0.08


def test_glide_endpoints_one_peierls_period():
    ini, fin = glide_endpoints("screw111", **ELASTIC, radius=25.0, fixed_width=6.0)
    assert len(ini) == len(fin)
    assert (ini.arrays["fix_mask"] == fin.arrays["fix_mask"]).all()
    step = np.subtract(fin.info["core_position"], ini.info["core_position"])
    assert step == pytest.approx([A0 * np.sqrt(6) / 3, 0.0])  # {110} glide, a0·√(2/3)
    fix = ini.arrays["fix_mask"]
    assert np.abs(ini.positions[fix] - fin.positions[fix]).max() < 1e-12  # averaged
    assert np.abs(ini.positions[~fix] - fin.positions[~fix]).max() > 0.5
    for state in (ini, fin):
        _, residual = perfect_sites(state)
        assert np.nanmax(residual[~fix]) < 1e-4  # free atoms: elastic field of that core


def nearest_host(atoms, index, count):
    host = np.flatnonzero(atoms.symbols == "W")
    return np.sort(atoms.get_distances(index, host, mic=True))[:count]


@pytest.mark.parametrize("kind", ["screw111", "edge100_110"])
def test_interstitial_site_geometry(kind):
    atoms = cylinder(kind, radius=30.0, fixed=6.0, n_line=2)  # distinct images along z
    tet = add_point_defect(atoms, "He_tet", 10.0)
    he = len(tet) - 1
    assert tet.symbols[he] == "He" and len(tet) == len(atoms) + 1
    assert nearest_host(tet, he, 4) == pytest.approx(A0 * np.sqrt(5) / 4, rel=0.05)
    assert nearest_host(tet, he, 5)[4] > 0.8 * A0
    assert tet.info["defect_distance"] == pytest.approx(10.0, abs=A0 / 2)
    assert tet.info["defect_position"] == pytest.approx(tet.positions[he].tolist())
    oct_ = add_point_defect(atoms, "He_oct", 10.0)
    d = nearest_host(oct_, len(oct_) - 1, 6)
    assert d[:2] == pytest.approx(A0 / 2, rel=0.05)
    assert d[2:] == pytest.approx(A0 / np.sqrt(2), rel=0.05)
    assert not tet.arrays["fix_mask"][he]


def test_vacancy_is_nearest_lattice_site_to_target():
    atoms = cylinder("edge111", radius=25.0, fixed=6.0)
    direction = np.array([0.6, 0.8])
    vac = add_point_defect(atoms, "vacancy", 7.0, direction=direction)
    assert len(vac) == len(atoms) - 1
    assert vac.arrays["fix_mask"].sum() == atoms.arrays["fix_mask"].sum()
    core = np.asarray(atoms.info["core_position"])
    target = np.array([*(core + 7.0 * direction), atoms.cell[2, 2] / 2])
    sites, _ = perfect_sites(atoms)
    delta = sites - target
    delta[:, 2] -= atoms.cell[2, 2] * np.round(delta[:, 2] / atoms.cell[2, 2])
    removed = np.argmin(np.linalg.norm(delta, axis=1))
    # the removed atom is exactly the one whose perfect site is nearest to the target
    kept = np.delete(atoms.positions, removed, axis=0)
    assert np.abs(kept - vac.positions).max() < 1e-12
    expected = np.linalg.norm(atoms.positions[removed, :2] - core)
    assert vac.info["defect_distance"] == pytest.approx(expected)
    assert abs(vac.info["defect_distance"] - 7.0) < A0 * np.sqrt(3) / 2


def test_helium_vacancy_clusters():
    atoms = cylinder("screw111", radius=25.0, fixed=6.0, n_line=3)
    he2v1 = add_point_defect(atoms, "He2V1", 6.0)
    assert (he2v1.symbols == "He").sum() == 2 and len(he2v1) == len(atoms) + 1
    he = np.flatnonzero(he2v1.symbols == "He")
    centre = np.asarray(he2v1.info["defect_position"])
    assert he2v1.positions[he].mean(axis=0) == pytest.approx(centre, abs=1e-9)
    he3v2 = add_point_defect(atoms, "He3V2", 6.0)
    assert (he3v2.symbols == "He").sum() == 3 and len(he3v2) == len(atoms) + 1
    he = np.flatnonzero(he3v2.symbols == "He")
    # He pairwise apart, and no W closer than 1.5 Å
    assert he3v2.get_distances(he[0], he[1:], mic=True).min() > 1.0
    assert min(nearest_host(he3v2, i, 1)[0] for i in he) > 1.5


def test_errors_name_the_key():
    atoms = cylinder("screw111", radius=20.0, fixed=5.0)
    cases = [
        (lambda: add_point_defect(atoms, "vacancy", 17.0), "distance"),
        (lambda: add_point_defect(atoms, "He_xyz", 3.0), "defect"),
        (lambda: add_point_defect(atoms, "vacancy", -1.0), "distance"),
        (lambda: add_point_defect(add_point_defect(atoms, "vacancy", 3.0), "He_tet", 5.0),
         "defect"),
        (lambda: dislocation_cylinder("screw110", **ELASTIC, radius=20, fixed_width=5),
         "kind"),
        (lambda: dislocation_cylinder("screw111", **ELASTIC, radius=20, fixed_width=25),
         "fixed_width"),
        (lambda: dislocation_cylinder("screw111", A0, 200.0, 300.0, C44, 20, 5), "C11"),
        (lambda: dislocation_cylinder("screw111", **ELASTIC, radius=20, fixed_width=5,
                                      n_line=0), "n_line"),
    ]
    for call, key in cases:
        with pytest.raises(QmmlError, match=key):
            call()


def test_a_vacancy_at_the_screw_core_removes_the_same_atom_whatever_the_round_off():
    """The three columns around a screw core are equally far from it: builds whose a0
    differs by round-off (each iteration's potential keeps a0 to ~1e-8) remove the same
    atom, so the atom order that seeds and binding paths rely on is the same."""
    removed = set()
    for k in range(8):
        atoms = dislocation_cylinder("screw111", **dict(ELASTIC, a0=A0 * (1 + k * 3e-9)),
                                     radius=20.0, fixed_width=6.0, n_line=2)
        vacancy = add_point_defect(atoms, "vacancy", 0.0)
        moved = np.linalg.norm(atoms.positions[:-1] - vacancy.positions, axis=1) > 1e-3
        removed.add(int(np.argmax(moved)) if moved.any() else len(atoms) - 1)
    assert len(removed) == 1, removed
