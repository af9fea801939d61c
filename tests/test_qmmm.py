"""Force-mixed QM/ML with real engines: tblite (GFN1-xTB) and the classical stand-in."""
from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.qmmm import ForceQMMM
from ase.io import read
from scipy.spatial import Delaunay

from conftest import MILADY
from qmml.engines import REFERENCE_LABEL
from qmml.qmcache import CachedQMCalculator
from qmml.io import write_frames
from qmml.frames import output_frame, provenance
from qmml.qmmm import make_force_qmmm, neb, relax
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder, glide_endpoints, perfect_sites

RADIUS, FIXED = 20.0, 6.0


def screw(radius: float = RADIUS):
    return dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                MILADY["C44"], radius=radius, fixed_width=FIXED)


def burgers_circuits(atoms, sites):
    """Burgers circuit (in units of b) around every Delaunay triangle of atom columns.

    Differential displacements u_z(j) - u_z(i) relative to the perfect crystal, wrapped
    into [-b/2, b/2), summed around each triangle: ±1 where the dislocation core sits.
    Returns (circuits, triangle centroids in xy).
    """
    b = float(np.linalg.norm(atoms.info["burgers"]))
    tri = Delaunay(sites[:, :2])
    u = atoms.positions[:, 2] - sites[:, 2]
    circuit = np.zeros(len(tri.simplices))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        d = u[tri.simplices[:, j]] - u[tri.simplices[:, i]]
        circuit += d - b * np.round(d / b)
    return circuit / b, sites[tri.simplices, :2].mean(axis=1)


def core_position(atoms, sites) -> np.ndarray:
    circuit, centroids = burgers_circuits(atoms, sites)
    core = np.flatnonzero(np.abs(circuit) > 0.5)
    assert len(core) == 1, f"core not compact: circuits {circuit[core]}"
    assert abs(abs(circuit[core[0]]) - 1) < 0.05
    return centroids[core[0]]


def test_reference_relaxation_keeps_compact_core_in_place(milady, tmp_path):
    atoms = screw()
    counts = cylinder_region(atoms, None, qm_radius=4.5, buffer_width=milady.cutoff,
                             ml_cutoff=milady.cutoff)
    assert counts == {"QM": 12, "buffer": 30, "MM": 177}
    sites, _ = perfect_sites(atoms)
    start = atoms.positions.copy()
    core0 = core_position(atoms, sites)
    np.testing.assert_allclose(core0, atoms.info["core_position"], atol=0.5)

    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    stats = relax(atoms, qm, milady.calculator(), milady.cutoff, optimizer="FIRE",
                  fmax=0.01, log=None)
    assert stats.converged and stats.fmax <= 0.01
    assert stats.n_qm_real_calls == stats.n_qm_calls > 5  # no repeats within a run
    # region untouched by the run; fixed atoms did not move, core atoms did
    assert {r: int((atoms.arrays["region"] == r).sum()) for r in counts} == counts
    fixed = atoms.arrays["fix_mask"]
    np.testing.assert_array_equal(atoms.positions[fixed], start[fixed])
    moved = np.linalg.norm(atoms.positions - start, axis=1)
    assert moved[atoms.arrays["region"] == "QM"].max() > 0.01
    # compact core, same place
    assert np.linalg.norm(core_position(atoms, sites) - core0) < 0.5

    # output: mixed forces, region, fix_mask, provenance; ASE can re-import the masks
    info = provenance(stats, REFERENCE_LABEL, qm.cache.settings_hash, "W_milady_lml",
                      milady.cutoff)
    path = write_frames(tmp_path / "relaxed.xyz", [output_frame(atoms, info)])
    back = read(path)
    np.testing.assert_allclose(back.get_forces(),
                               atoms.get_forces(apply_constraint=False), atol=1e-6)
    free = ~back.arrays["fix_mask"]
    assert np.sqrt((back.get_forces()[free] ** 2).sum(axis=1)).max() <= 0.01 + 1e-6
    assert back.info["qm_engine"] == REFERENCE_LABEL
    assert back.info["n_qm_calls"] == stats.n_qm_calls
    assert back.info["qm_settings_hash"] == qm.cache.settings_hash
    imported = ForceQMMM.import_extxyz(path, qm, milady.calculator())
    np.testing.assert_array_equal(imported.qm_selection_mask, atoms.arrays["region"] == "QM")
    np.testing.assert_array_equal(imported.qm_buffer_mask,
                                  atoms.arrays["region"] != "MM")


@pytest.mark.slow
def test_rebuilt_calculator_cuts_the_same_cluster_and_hits_the_cache(milady, tmp_path):
    """A ForceQMMM built anew on moved atoms (as for an NEB end point or a binding path
    end after relaxation) cuts the same cluster cell, so a QM result computed during the
    relaxation is reused, not recomputed."""
    start = screw()
    cylinder_region(start, None, qm_radius=4.5, buffer_width=5.0, ml_cutoff=milady.cutoff)
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    relaxing = start.copy()
    relaxing.calc = make_force_qmmm(relaxing, qm, milady.calculator(), 5.0)
    # "relaxation": QM atoms move apart by 0.05 Å, changing their largest distance
    core = relaxing.arrays["region"] == "QM"
    centre = relaxing.positions[core].mean(axis=0)
    relaxing.positions[core, :2] += 0.05 * np.sign(relaxing.positions[core, :2] - centre[:2])
    f_relaxing = relaxing.get_forces()
    assert qm.n_real_calls == 1
    rebuilt = relaxing.copy()
    rebuilt.calc = make_force_qmmm(rebuilt, qm, milady.calculator(), 5.0)
    np.testing.assert_array_equal(rebuilt.calc.get_qm_cluster(rebuilt).cell,
                                  relaxing.calc.get_qm_cluster(relaxing).cell)
    np.testing.assert_allclose(rebuilt.get_forces(), f_relaxing, atol=1e-12)
    assert qm.n_real_calls == 1  # the rebuilt calculator made no QM call


def test_a_relaxed_structure_keeps_its_cluster_cell_across_a_rounding_boundary(milady,
                                                                               tmp_path):
    """The cluster cell is a rounded function of the QM atoms' extent; a relaxation that
    carries the extent across a rounding boundary must not change the cell of the
    structure it writes (its QM results would all be missed by the NEB or binding path
    that starts from it).  A region marked anew gets its own cell."""
    from qmml.forcemixing import QM_CELL_ROUND_OFF, QM_RADIUS_KEY

    buffer, vacuum = 5.0, 5.0
    start = screw()
    cylinder_region(start, None, qm_radius=4.5, buffer_width=buffer, ml_cutoff=milady.cutoff)
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    relaxing = start.copy()
    relaxing.calc = make_force_qmmm(relaxing, qm, milady.calculator(), buffer, vacuum)
    cell = relaxing.calc.get_qm_cluster(relaxing).cell.diagonal().copy()
    # stretch the QM atoms along x until a fresh rounding gives the next cell up
    core = relaxing.arrays["region"] == "QM"
    x = relaxing.positions[core, 0]
    half_extent = (x.max() - x.min()) / 2
    beyond = (cell[0] + QM_CELL_ROUND_OFF / 2) / 2 - buffer - vacuum + 0.05
    relaxing.positions[core, 0] = x.mean() + (x - x.mean()) * beyond / half_extent
    f_relaxing = relaxing.get_forces()
    assert qm.n_real_calls == 1
    write_frames(tmp_path / "relaxed.xyz", [relaxing])
    rebuilt = read(tmp_path / "relaxed.xyz")
    rebuilt.calc = make_force_qmmm(rebuilt, qm, milady.calculator(), buffer, vacuum)
    np.testing.assert_array_equal(rebuilt.calc.get_qm_cluster(rebuilt).cell.diagonal(), cell)
    np.testing.assert_allclose(rebuilt.get_forces(), f_relaxing, atol=1e-6)  # extxyz digits
    assert qm.n_real_calls == 1  # the relaxation's QM result, reused
    # without the carried radius the same geometry is cut in the next cell up
    fresh = rebuilt.copy()
    del fresh.info[QM_RADIUS_KEY]
    fresh.calc = make_force_qmmm(fresh, qm, milady.calculator(), buffer, vacuum)
    assert fresh.calc.get_qm_cluster(fresh).cell[0, 0] == cell[0] + QM_CELL_ROUND_OFF
    # a wider QM region marked on the relaxed structure: a cell of its own
    remarked = rebuilt.copy()
    cylinder_region(remarked, None, qm_radius=8.0, buffer_width=buffer,
                    ml_cutoff=milady.cutoff)
    remarked.calc = make_force_qmmm(remarked, qm, milady.calculator(), buffer, vacuum)
    assert remarked.calc.get_qm_cluster(remarked).cell[0, 0] >= cell[0] + 2 * QM_CELL_ROUND_OFF


def test_tblite_qm_forces_equal_direct_call_and_relaxation_lowers_fmax(milady, tmp_path):
    from tblite.ase import TBLite

    atoms = screw()
    core = np.asarray(atoms.info["core_position"])
    qm_mask = np.linalg.norm(atoms.positions[:, :2] - core, axis=1) <= 4.5
    region = np.full(len(atoms), "MM", dtype="<U6")
    region[qm_mask] = "QM"
    atoms.arrays["region"] = region  # buffer from ForceQMMM's buffer_width rule
    cfg = {"engine": "tblite", "kpts_line": 2, "electronic_temperature": 1000.0}
    qm = CachedQMCalculator.from_config(cfg, tmp_path / "cache")
    ml = milady.calculator()
    calc = make_force_qmmm(atoms, qm, ml, buffer_width=3.0)
    assert 10 <= qm_mask.sum() <= 20
    mixed = calc.get_forces(atoms)
    assert qm.n_real_calls == 1

    # direct tblite on the same cluster, replicated twice along the line
    cluster = calc.get_qm_cluster(atoms)
    assert tuple(cluster.pbc) == (False, False, True) and len(cluster) < 40
    big = cluster.repeat((1, 1, 2))
    big.calc = TBLite(method="GFN1-xTB", electronic_temperature=1000.0, verbosity=0)
    copies = big.get_forces().reshape(2, len(cluster), 3)
    # the two copies are equivalent by translation; they differ only by SCF tolerance
    np.testing.assert_allclose(copies[0], copies[1], atol=1e-4)
    direct = copies.mean(axis=0)  # qmml maps the copies' mean back onto each atom
    ml_forces = ml.get_forces(atoms)
    raw = ml_forces.copy()
    raw[qm_mask] = direct[qm_mask[calc.qm_buffer_mask]]
    expected = raw - raw.mean(axis=0)  # zero_mean=True
    np.testing.assert_allclose(mixed[qm_mask], expected[qm_mask], atol=1e-6)
    np.testing.assert_allclose(mixed[~qm_mask], expected[~qm_mask], atol=1e-6)
    assert np.abs(direct[qm_mask[calc.qm_buffer_mask]]).max() > 0.05  # real QM forces

    # a few FIRE steps with the same cache: the start is not recomputed, fmax drops
    qm2 = CachedQMCalculator.from_config(cfg, tmp_path / "cache")
    stats = relax(atoms, qm2, ml, 3.0, optimizer="FIRE", fmax=0.01, steps=2, log=None)
    assert qm2.n_cache_hits >= 1 and qm2.n_real_calls == 2
    assert stats.fmax < 0.5 * stats.fmax_history[0]


@pytest.mark.slow
def test_reference_neb_glide_barrier_by_virtual_work(milady, tmp_path):
    ini, fin = glide_endpoints("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                               MILADY["C44"], radius=16.0, fixed_width=FIXED)
    path = ini.info["glide_path"]
    for state in (ini, fin):
        state.info["glide_path"] = path
        cylinder_region(state, None, 4.0, milady.cutoff, milady.cutoff,
                        path=[path[:2], path[2:]])
    fin.arrays["region"] = ini.arrays["region"].copy()
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    for state in (ini, fin):
        assert relax(state, qm, milady.calculator(), milady.cutoff, fmax=0.01,
                     log=None).converged
    images, stats, profile = neb(ini, fin, 5, qm, milady.calculator, milady.cutoff,
                                 fmax=0.05, steps=200, log=None)
    assert stats.converged
    e = profile["energy"]
    # equivalent end states: the virtual work from one to the other is ~0;
    # the Peierls barrier of the screw in W is tens of meV per b (stand-in, coarse path)
    assert abs(e[-1] - e[0]) < 0.02
    assert 0.005 < profile["barrier"] < 0.2
    assert [str(r) for r in images[2].arrays["region"]] == list(ini.arrays["region"])


def test_preconditioned_neb_is_judged_on_its_true_forces(milady, tmp_path):
    """PreconLBFGS steps on preconditioned band forces, which are far smaller than the
    true NEB forces here; its fmax and convergence are the true forces'."""
    from qmml.nebband import make_neb

    ini, fin = glide_endpoints("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                               MILADY["C44"], radius=16.0, fixed_width=FIXED)
    path = ini.info["glide_path"]
    cylinder_region(ini, None, 3.0, milady.cutoff, milady.cutoff, path=[path[:2], path[2:]])
    fin.arrays["region"] = ini.arrays["region"].copy()
    qm = CachedQMCalculator.from_config({"engine": "reference"}, tmp_path / "cache")
    images, stats, _ = neb(ini, fin, 5, qm, milady.calculator, milady.cutoff,
                           optimizer="PreconLBFGS", fmax=0.05, steps=2, log=None)
    band = [im.copy() for im in images]
    for im in band:
        im.calc = make_force_qmmm(im, qm, milady.calculator(), milady.cutoff)
    true = np.linalg.norm(make_neb(band).get_forces(), axis=1).max()
    assert stats.fmax == pytest.approx(true, rel=1e-9)
    assert stats.converged == (true <= 0.05)
    preconditioned = make_neb(band, precon="Exp")
    stepped = np.linalg.norm(preconditioned.get_forces(), axis=1).max()
    assert stepped < 0.1 * true  # what the optimiser steps on: no measure of convergence


def test_cli_unconverged_exit_code_and_flag(tmp_path, capsys):
    """Out of steps: exit 1 by default; --allow-unconverged writes the output, exit 0,
    and the frame says converged=False (the pipeline's laptop setting).  Options of the
    accelerated optimiser given to another one are one-line errors."""
    from ase.io import read

    from qmml import potential_path
    from qmml.cli import main

    structure = tmp_path / "screw.xyz"
    assert main(["build", "--kind", "screw111", "--radius", "14", "--fixed-width", "4",
                 "--a0", "3.18551", "--C11", "513.1", "--C12", "201.0", "--C44", "144.9",
                 "--qm-radius", "3", "--buffer", "5", "--output", str(structure)]) == 0
    common = ["relax", "--input", str(structure), "--potential",
              str(potential_path("W_milady_lml")), "--engine", "reference", "--steps", "1",
              "--buffer", "5", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(common + ["--output", str(tmp_path / "a.xyz")]) == 1
    assert main(common + ["--output", str(tmp_path / "b.xyz"), "--allow-unconverged"]) == 0
    frame = read(tmp_path / "b.xyz")
    assert frame.info["converged"] is False or frame.info["converged"] == "False"
    assert frame.info["fmax"] > frame.info["fmax_target"]
    capsys.readouterr()
    assert main(common + ["--output", str(tmp_path / "c.xyz"),
                          "--descriptor-cache", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("qmml relax: error: --descriptor-cache is only used with --optimizer "
                   "accelerated")
    assert not (tmp_path / "c.xyz").exists()
    assert main(common + ["--output", str(tmp_path / "c.xyz"),
                          "--qm-frames", str(tmp_path / "f.xyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "qmml relax: error: --qm-frames is only used with --optimizer accelerated"
