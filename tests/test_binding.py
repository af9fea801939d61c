"""Binding energies by virtual work (qmml.binding): atom mapping, ML integration check,
QM/ML binding path with the classical stand-in for QM, and the binding table.

Stand-in QM = ``engine: reference`` (W_2940_2017_2 + ZBL, a classical potential, NOT QM);
ML = W_milady_lml.  Vacancy on a ½<111> screw: near = the core site (1.5 Å from the line),
far = a first-neighbour site of it 4.0 Å from the line (one lattice hop: short, smooth path).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.io import read

from qmml import QmmlError, binding, potential_path
from qmml.io import write_frames
from qmml.engines import REFERENCE_LABEL, engine_settings_hash
from qmml.potential import SNAPPotential
from qmml.qmcache import CachedQMCalculator, QMCache
from qmml.frames import output_frame
from qmml.qmmm import relax

MILADY = str(potential_path("W_milady_lml"))
ENGINE = {"engine": "reference"}
THREE_D = {"n_line": 2, "radius": 18.0, "fixed_width": 5.0, "qm_radius": 3.0,
           "buffer": 4.7, "path_images": 13}
# direction/distance of the first-neighbour site of the core vacancy site (found once
# from the lattice; the build picks the nearest site to core + distance·direction)
DEFECTS = {"vac": {"defect": "vacancy", "dislocation": "screw", "distances": [0.0, 3.982],
                   "direction": [0.3266, 0.9452]}}
SCREW = {"kind": "screw111"}


@pytest.fixture(scope="module")
def built():
    """(near, far) unrelaxed, as the build_defect rule writes them."""
    near, _ = binding.build_defect("vac", DEFECTS["vac"], SCREW, THREE_D, MILADY, 0)
    far, _ = binding.build_defect("vac", DEFECTS["vac"], SCREW, THREE_D, MILADY, 1)
    return near, far


@pytest.fixture(scope="module")
def ml_calc():
    return SNAPPotential.read(MILADY).calculator()


def _mapped(atoms: Atoms, perm: np.ndarray, like: Atoms) -> Atoms:
    out = Atoms(atoms.numbers[perm], atoms.positions[perm], cell=like.cell, pbc=like.pbc)
    out.arrays["fix_mask"] = np.asarray(like.arrays["fix_mask"], bool)
    return out


def test_mapping_moves_exactly_one_atom_by_one_hop(built):
    near, far = built
    assert near.info["defect_distance"] < 2.0 < 3.5 < far.info["defect_distance"]
    perm = binding.atom_correspondence(far, near)
    assert sorted(perm) == list(range(len(far)))
    step = np.linalg.norm(binding.displacement(far, _mapped(near, perm, far)), axis=1)
    # unrelaxed: every atom but one sits still; the one moves from the near site to the
    # far site (first neighbours: √3/2·a0, stretched a little by the elastic field)
    assert (step > 1e-6).sum() == 1
    nn = np.sqrt(3) / 2 * far.info["a0"]
    assert 0.95 * nn < step.max() < 1.1 * nn
    mover = int(np.argmax(step))
    assert np.linalg.norm(far.positions[mover] - near.info["defect_position"]) < 1e-6
    # structures from different cylinders cannot be paired
    other, _ = binding.build_defect("vac", DEFECTS["vac"], SCREW, dict(THREE_D, n_line=3),
                                    MILADY, 1)
    with pytest.raises(QmmlError, match="atoms"):
        binding.atom_correspondence(far, other)


def test_a_path_through_the_lattice_is_refused_before_any_qm_call(built, ml_calc, tmp_path):
    """On a 3 b line the same configured pair picks sites several Å apart: the straight
    path runs the moving atom through the lattice (its virtual work was -4025 eV with the
    stand-in), so binding_path stops with the config key before its first QM call.  The
    one-hop pair of the other tests passes the same check."""
    near, far = built
    perm = binding.atom_correspondence(far, near)
    binding.check_path_clears_atoms(far, binding.displacement(far, _mapped(near, perm, far)),
                                    "one hop")

    line3 = dict(THREE_D, n_line=3)
    near3, _ = binding.build_defect("vac", DEFECTS["vac"], SCREW, line3, MILADY, 0)
    far3, _ = binding.build_defect("vac", DEFECTS["vac"], SCREW, line3, MILADY, 1)
    sites = np.linalg.norm(np.subtract(near3.info["defect_position"],
                                       far3.info["defect_position"]))
    assert sites > 1.5 * np.sqrt(3) / 2 * far3.info["a0"]  # not first neighbours
    qm = CachedQMCalculator.from_config(ENGINE, tmp_path / "cache")
    with pytest.raises(QmmlError, match=r"^defects\.vac\.distances: binding path 0\.0 -> "
                       r"3\.982 Å: .* not one lattice hop apart"):
        binding.binding_path(far3, near3, far3, near3, qm, ml_calc,
                             THREE_D["path_images"], THREE_D["buffer"])
    assert qm.n_calls == 0


def test_ml_virtual_work_reproduces_exact_ml_energy_difference(built, ml_calc):
    near, far = built
    e_far, far_ml = binding.ml_relaxed_energy(far, ml_calc, fmax=0.01)
    e_near, near_ml = binding.ml_relaxed_energy(near, ml_calc, fmax=0.01)
    perm = binding.atom_correspondence(far, near)
    a = Atoms(far_ml.numbers, far_ml.positions, cell=far.cell, pbc=far.pbc)
    a.arrays["fix_mask"] = far.arrays["fix_mask"]
    b = _mapped(near_ml, perm, far)
    d = binding.displacement(a, b)
    checks = {}
    for n in (5, 13):
        checks[n] = binding.ml_path_check(binding.linear_images(a, b, n), d, ml_calc)
    exact = e_far - e_near
    assert checks[13]["E_b_ml_path_exact"] == pytest.approx(exact, abs=1e-9)
    # Simpson with 13 images: the integral of F·dX equals the energy difference
    assert abs(checks[13]["error"]) < 1e-2, checks[13]["error"]
    # ... and the check can fail: 5 images are visibly too coarse for this hop
    assert abs(checks[5]["error"]) > 1e-2, checks[5]["error"]
    # the path really climbs a barrier (not a trivially flat integrand)
    energies = checks[13]["energies"] - checks[13]["energies"][0]
    assert energies.max() > 1.0
    # vacancy attracted to the screw core (positive binding), a fraction of an eV
    assert 0.1 < exact < 1.5, exact


@pytest.fixture(scope="module")
def qmml_paths(built, ml_calc, tmp_path_factory):
    """QM/ML-relaxed states, files as the pipeline writes them, and both binding paths."""
    near, far = built
    tmp = tmp_path_factory.mktemp("binding")
    cache = tmp / "qm_cache"
    qm = CachedQMCalculator.from_config(ENGINE, cache)
    files = {}
    for k, state in enumerate((near, far)):
        write_frames(tmp / f"structure_{k}.xyz", [state])
        relaxed = state.copy()
        stats = relax(relaxed, qm, ml_calc, THREE_D["buffer"], "FIRE", fmax=0.05, steps=300,
                      log=None)
        assert stats.converged
        write_frames(tmp / f"relaxed_{k}.xyz", [output_frame(relaxed, {})])
    n_cache_relaxed = len(QMCache(cache, engine_settings_hash(ENGINE)))

    def run(k: int):
        ref = binding.reference_index(DEFECTS["vac"]["distances"], k)
        result = binding.compute(str(tmp / f"relaxed_{ref}.xyz"), str(tmp / f"relaxed_{k}.xyz"),
                                 str(tmp / f"structure_{ref}.xyz"),
                                 str(tmp / f"structure_{k}.xyz"), MILADY, ENGINE, str(cache),
                                 THREE_D["path_images"], THREE_D["buffer"], ml_fmax=0.01)
        path = write_frames(tmp / f"path_{k}.xyz", result.frames)
        files[k] = path
        return result

    first = run(0)
    n_cache_path = len(QMCache(cache, engine_settings_hash(ENGINE)))
    again = run(0)
    trivial = run(1)
    return {"first": first, "again": again, "trivial": trivial, "files": files,
            "cache": (n_cache_relaxed, n_cache_path,
                      len(QMCache(cache, engine_settings_hash(ENGINE)))), "built": built}


@pytest.mark.slow  # the module fixture: two QM/ML relaxations + three path runs (~45 s)
def test_qmml_binding_path_counts_cache_and_rerun(qmml_paths):
    first, again = qmml_paths["first"].summary, qmml_paths["again"].summary
    n_images = THREE_D["path_images"]
    near, far = qmml_paths["built"]
    assert np.isfinite(first["E_b_qmml"])
    assert first["engine"] == REFERENCE_LABEL
    # one QM call per image, all new; the rerun answers every one from the cache
    assert first["qm_calls"] == first["qm_calls_new"] == n_images
    n_relaxed, n_path, n_end = qmml_paths["cache"]
    assert n_path - n_relaxed == n_images and n_end == n_path
    assert again["qm_calls"] == n_images and again["qm_calls_new"] == 0
    assert again["E_b_qmml"] == first["E_b_qmml"]
    # path file: one frame per image, QM/ML forces, region fixed along the path
    frames = read(qmml_paths["files"][0], index=":")
    assert len(frames) == n_images
    assert [f.info["path_image"] for f in frames] == list(range(n_images))
    region = frames[0].arrays["region"]
    for f in frames:
        assert (f.arrays["region"] == region).all()
        assert np.isfinite(f.get_forces()).all()
        assert f.info["E_b_qmml"] == pytest.approx(first["E_b_qmml"])
    counts = {r: int((region == r).sum()) for r in ("QM", "buffer", "MM")}
    assert counts == {r: first[r] for r in counts}
    # QM = union of the two end states' spheres (within qm_radius of either defect centre,
    # in either end frame) plus the atoms within qm_radius of the moving atom in any frame
    perm = binding.atom_correspondence(far, near)
    assert (region[(near.arrays["region"][perm] == "QM") | (far.arrays["region"] == "QM")]
            == "QM").all()
    r = THREE_D["qm_radius"]
    lz = far.cell[2, 2]

    def within(points, centre):
        delta = points - np.asarray(centre)
        delta[:, 2] -= lz * np.round(delta[:, 2] / lz)
        return np.linalg.norm(delta, axis=1) <= r

    expected = np.zeros(len(region), bool)
    for f in (frames[0], frames[-1]):
        for centre in (near.info["defect_position"], far.info["defect_position"]):
            expected |= within(f.positions, centre)
    step = np.linalg.norm(frames[-1].positions - frames[0].positions, axis=1)
    assert (step > binding.MOVING_THRESHOLD).sum() == 1  # the one hopping atom
    for f in frames:
        expected |= within(f.positions, f.positions[np.argmax(step)])
    assert (expected == (region == "QM")).all()
    assert counts["QM"] > max((near.arrays["region"] == "QM").sum(),
                              (far.arrays["region"] == "QM").sum())
    assert not (frames[0].arrays["fix_mask"] & (region != "MM")).any()
    # the integrals stored on the frames reproduce the summary (Simpson on 13 images)
    g = np.array([f.info["virtual_work_integrand"] for f in frames])
    w, rule = binding.quadrature_weights(n_images)
    assert rule == "simpson" and w @ g == pytest.approx(first["E_b_qmml"], rel=1e-9)
    # one hop: small quadrature error, largest atom step ≈ one first-neighbour distance
    # (2.81 Å unrelaxed; the relaxed ends add ~0.5 Å), far below a two-hop jump (≥ 4.7 Å)
    assert abs(first["E_b_qmml_path_error"]) < 0.02, first["E_b_qmml_path_error"]
    assert 2.3 < first["path_max_step"] < 3.6  # relaxed ends: 3.35 Å measured


@pytest.mark.slow
def test_far_state_is_zero_without_qm_calls(qmml_paths):
    trivial = qmml_paths["trivial"]
    assert len(trivial.frames) == 1
    s = trivial.summary
    assert s["E_b_qmml"] == 0.0 and s["E_b_ml"] == 0.0 and s["qm_calls"] == 0
    assert s["path_max_step"] == 0.0


@pytest.mark.slow
def test_binding_table_rows_signs_and_checks(qmml_paths):
    files = [qmml_paths["files"][k] for k in (0, 1)]
    table = binding.binding_table(files, configured=DEFECTS)
    for column in ("defect", "defect_type", "dislocation", "distance_requested", "distance",
                   "E_b_qmml", "E_b_qmml_path_error", "E_b_ml", "qm_calls", "engine",
                   "path_file", "path_max_step"):
        assert column in table.columns
    assert len(table) == 2
    assert list(table["distance_requested"]) == DEFECTS["vac"]["distances"]
    assert (table["defect"] == "vac").all() and (table["dislocation"] == "screw").all()
    assert (table["defect_type"] == "vacancy").all()
    near_row, far_row = table.iloc[0], table.iloc[1]
    assert far_row["E_b_qmml"] == 0.0 and far_row["E_b_ml"] == 0.0
    assert far_row["qm_calls"] == 0
    # sign: E_b = E(far) − E(near) > 0: the vacancy is attracted to the screw core
    first = qmml_paths["first"].summary
    assert near_row["E_b_qmml"] == pytest.approx(first["E_b_qmml"])
    assert near_row["E_b_ml"] > 0.05 and near_row["E_b_qmml"] > 0.05  # 0.18, 0.12 measured
    assert near_row["qm_calls"] == THREE_D["path_images"]
    # csv round trip keeps the numbers
    table.to_csv(qmml_paths["files"][0].parent / "binding.csv", index=False)
    back = pd.read_csv(qmml_paths["files"][0].parent / "binding.csv")
    assert np.allclose(back["E_b_qmml"], table["E_b_qmml"])
    # a configured distance without its path file is an error naming what is missing
    with pytest.raises(QmmlError, match="missing"):
        binding.binding_table(files[:1], configured=DEFECTS)


def test_reference_index_chains_to_the_farthest_distance():
    # distances 0, 6, 3: 0 <- 3 <- 6 (far)
    assert [binding.reference_index([0.0, 6.0, 3.0], k) for k in range(3)] == [2, 1, 1]
    # equal largest distances: the first is the far state (as max() picks it)
    assert [binding.reference_index([0.0, 5.0, 5.0], k) for k in range(3)] == [2, 1, 1]
    with pytest.raises(QmmlError):
        binding.reference_index([0.0], 1)
