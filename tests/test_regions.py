"""QM / buffer / MM regions (qmml.regions) and the ``qmml build`` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.qmmm import ForceQMMM
from ase.geometry import get_distances
from ase.io import read

from qmml import QmmlError, potential_path
from qmml.cli import main
from qmml.frames import fixed_mask, free_mask
from qmml.potential import SNAPPotential
from qmml.regions import cylinder_region, sphere_region
from qmml.structures import add_point_defect, dislocation_cylinder, glide_endpoints

ELASTIC = dict(a0=3.18551, C11=513.1, C12=201.0, C44=144.9)
ML_CUTOFF = SNAPPotential.read(potential_path("W_milady_lml")).cutoff


def independent_buffer(atoms, qm, width):
    """Buffer by brute force with ASE's own minimum-image distances."""
    _, d = get_distances(atoms.positions[qm], atoms.positions, atoms.cell, atoms.pbc)
    return (d < width).any(axis=0) & ~qm


def forceqmmm_region(atoms, qm, width):
    qmmm = ForceQMMM(atoms, qm, None, None, buffer_width=width)
    qmmm.initialize_qm_buffer_mask(atoms)
    return qmmm.get_region_from_masks(atoms)


def test_cylinder_region_counts_match_independent_count():
    atoms = dislocation_cylinder("screw111", **ELASTIC, radius=30.0, fixed_width=8.0,
                                 n_line=2)
    counts = cylinder_region(atoms, None, 6.0, 8.0, ML_CUTOFF)
    core = np.asarray(atoms.info["core_position"])
    qm = np.hypot(*(atoms.positions[:, :2] - core).T) <= 6.0
    buffer = independent_buffer(atoms, qm, 8.0)
    assert counts == {"QM": qm.sum(), "buffer": buffer.sum(), "MM": len(atoms) - qm.sum()
                      - buffer.sum()}
    # ~ρ·πr²·L QM atoms (small region: ±25 %) and ForceQMMM's own masks agree exactly
    expected = 2 / 3.18551**3 * np.pi * 36 * atoms.cell[2, 2]
    assert abs(counts["QM"] - expected) < 0.25 * expected
    assert (atoms.arrays["region"] == forceqmmm_region(atoms, qm, 8.0)).all()
    assert atoms.arrays["fix_mask"].sum() == atoms.constraints[0].get_indices().size


def test_glide_path_region_uses_distance_to_segment():
    ini, fin = glide_endpoints("screw111", **ELASTIC, radius=25.0, fixed_width=6.0)
    path = np.reshape(ini.info["glide_path"], (2, 2))
    samples = path[0] + np.linspace(0, 1, 4001)[:, None] * (path[1] - path[0])
    for state in (ini, fin):
        counts = cylinder_region(state, None, 6.0, 8.0, ML_CUTOFF, path=path)
        d = np.linalg.norm(state.positions[:, None, :2] - samples[None], axis=2).min(axis=1)
        assert counts["QM"] == (d <= 6.0).sum()
        qm = state.arrays["region"] == "QM"
        near_end = np.hypot(*(state.positions[:, :2] - path[1]).T) <= 6.0
        assert (qm >= near_end).all() and qm.sum() > near_end.sum()
    # same atoms are QM in both end points (fixed reference path)
    assert 15 <= counts["QM"] <= 40


def test_sphere_region_is_periodic_along_the_line():
    atoms = dislocation_cylinder("edge111", **ELASTIC, radius=25.0, fixed_width=6.0,
                                 n_line=2)
    defect = add_point_defect(atoms, "He_oct", 3.0, z=0.3)  # next to the z boundary
    centre = np.asarray(defect.info["defect_position"])
    counts = sphere_region(defect, None, 7.0, 8.0, ML_CUTOFF)
    _, d = get_distances([centre], defect.positions, defect.cell, defect.pbc)
    qm = d[0] <= 7.0
    assert counts["QM"] == qm.sum()
    assert counts["buffer"] == independent_buffer(defect, qm, 8.0).sum()
    # without the minimum image the sphere would lose its half across z = 0
    assert (np.linalg.norm(defect.positions - centre, axis=1) <= 7.0).sum() < qm.sum()
    assert defect.arrays["region"][defect.symbols == "He"].tolist() == ["QM"]
    assert (defect.arrays["region"] == forceqmmm_region(defect, qm, 8.0)).all()


def test_region_extxyz_round_trip_through_forceqmmm(tmp_path):
    atoms = add_point_defect(
        dislocation_cylinder("screw111", **ELASTIC, radius=25.0, fixed_width=6.0, n_line=3),
        "He2V1", 4.0)
    sphere_region(atoms, None, 7.0, 8.0, ML_CUTOFF)
    path = tmp_path / "case.xyz"
    atoms.write(path, format="extxyz")
    qmmm = ForceQMMM.import_extxyz(str(path), None, None)
    region = atoms.arrays["region"]
    assert (qmmm.qm_selection_mask == (region == "QM")).all()
    assert (qmmm.qm_buffer_mask == (region != "MM")).all()
    back = read(path)
    assert (back.arrays["fix_mask"] == atoms.arrays["fix_mask"]).all()
    assert back.info["defect"] == "He2V1"
    # without the array the fixed atoms are those of the FixAtoms constraint (extxyz keeps
    # it as move_mask), and the region checks see the same shell
    del back.arrays["fix_mask"]
    assert back.constraints and back.arrays.get("fix_mask") is None
    np.testing.assert_array_equal(fixed_mask(back), atoms.arrays["fix_mask"])
    np.testing.assert_array_equal(free_mask(back), ~atoms.arrays["fix_mask"])
    assert atoms.arrays["fix_mask"].sum() > 100
    with pytest.raises(QmmlError, match="fix_mask"):  # the shell is fixed: no QM there
        sphere_region(back, None, 17.0, ML_CUTOFF, ML_CUTOFF)


def test_region_errors_name_the_key():
    atoms = dislocation_cylinder("screw111", **ELASTIC, radius=20.0, fixed_width=6.0,
                                 n_line=2)
    he = add_point_defect(atoms, "He_tet", 6.0)
    sheared = atoms.copy()
    sheared.set_cell(atoms.cell.array + [[0, 0, 0], [0, 0, 0], [1.0, 0, 0]])
    cases = [
        (lambda: cylinder_region(atoms.copy(), (-50.0, -50.0), 3.0, 8.0, ML_CUTOFF),
         "qm_radius"),
        (lambda: cylinder_region(atoms.copy(), None, 6.0, 3.0, ML_CUTOFF), "buffer"),
        (lambda: cylinder_region(he.copy(), None, 3.0, 8.0, ML_CUTOFF), "species"),
        (lambda: sphere_region(he.copy(), None, 3.0, 8.0, ML_CUTOFF), "species"),
        (lambda: cylinder_region(sheared, None, 6.0, 8.0, ML_CUTOFF), "cell"),
        (lambda: cylinder_region(atoms.copy(), None, 6.0, 12.0, ML_CUTOFF), "fix_mask"),
    ]
    for call, key in cases:
        with pytest.raises(QmmlError, match=key):
            call()
    # a He with its ML-cutoff neighbourhood inside QM is accepted
    ok = add_point_defect(dislocation_cylinder("screw111", **ELASTIC, radius=28.0,
                                               fixed_width=6.0, n_line=2), "He_tet", 6.0)
    assert sphere_region(ok, None, 8.0, 5.0, ML_CUTOFF)["QM"] > 20


def test_qmml_build_cli_glide_and_defect(tmp_path, capsys):
    out = tmp_path / "glide.xyz"
    rc = main(["build", "--kind", "screw111", "--radius", "25", "--fixed-width", "6",
               "--a0", "3.18551", "--C11", "513.1", "--C12", "201", "--C44", "144.9",
               "--qm-radius", "6", "--buffer", "8", "--glide", "--output", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    frames = read(out, ":")
    assert len(frames) == 2 and summary["frames"] == 2
    assert [f.info["state"] for f in frames] == ["initial", "final"]
    for frame in frames:
        region = frame.arrays["region"]
        assert (region == "QM").sum() == summary["QM"] > 0
        assert (region == "buffer").sum() == summary["buffer"]
        assert not frame.arrays["fix_mask"][region != "MM"].any()
        assert frame.info["ml_cutoff"] == pytest.approx(ML_CUTOFF)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file

    config = tmp_path / "case.yaml"
    config.write_text("kind: edge100_001\nradius: 26\nfixed_width: 6\nn_line: 4\n"
                      "a0: 3.18551\nC11: 513.1\nC12: 201.0\nC44: 144.9\n"
                      "defect: vacancy\ndistance: 4\nqm_radius: 7\nbuffer: 8\n"
                      f"output: {tmp_path / 'vac.xyz'}\n")
    assert main(["build", "--config", str(config)]) == 0
    vac = read(tmp_path / "vac.xyz")
    assert vac.info["defect"] == "vacancy" and vac.info["region_shape"] == "sphere"
    assert abs(vac.info["defect_distance"] - 4.0) < 3.18551
    assert "region" in vac.arrays and "fix_mask" in vac.arrays

    config.write_text("kind: screw111\nradius: 20\nbogus: 1\noutput: x.xyz\n")
    assert main(["build", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and len(err.strip().splitlines()) == 1


def test_qmml_build_measures_elastic_constants_with_the_potential(tmp_path, capsys):
    out = tmp_path / "screw.xyz"
    rc = main(["build", "--kind", "screw111", "--radius", "15", "--fixed-width", "5",
               "--potential", "W_milady_lml", "--output", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    atoms = read(out)
    # W_milady_lml was fitted to a0 = 3.18551 Å (method.md); C44 ≈ 145 GPa
    assert atoms.info["a0"] == pytest.approx(3.18551, abs=2e-3)
    assert atoms.info["C44"] == pytest.approx(144.9, rel=0.03)
    assert summary["C11"] == pytest.approx(atoms.info["C11"])
    assert "region" not in atoms.arrays  # no --qm-radius: no regions
