"""Validation of a potential against the QM reference (qmml.validation, qmml validate),
held-out frames, and `qmml retrain --path` (path energies as targets from the CLI)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from conftest import MILADY
from qmml.cli import main
from qmml.elastic import bcc_cell
from qmml.io import write_frames

A0 = MILADY["a0"]


def _hop_path(potential, n_images: int = 7, scale: float = 0.8):
    """A straight vacancy hop in a 2x2x2 cell with the potential's forces times ``scale``
    stored as the "QM/ML" forces of every image (as tests/test_path_energy.py)."""
    perfect = bcc_cell(A0, 2)
    start = perfect.copy()
    site = start.positions[0].copy()
    del start[0]
    mover = int(np.argmin(np.linalg.norm(start.positions - (site + A0 / 2), axis=1)))
    images = []
    calc = potential.calculator()
    for k, t in enumerate(np.linspace(0, 1, n_images)):
        atoms = start.copy()
        atoms.positions[mover] += t * (site - start.positions[mover])
        atoms.calc = calc
        forces = scale * atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, forces=forces)
        atoms.info["neb_image"] = k
        images.append(atoms)
    return images


# ---- qmml retrain --path ---------------------------------------------------------------
def test_retrain_cli_fits_path_energies(milady, tmp_path):
    """`qmml retrain --path P --lambda-path X`: the report has the path's barrier errors;
    with a large weight the retrained barrier on the path follows the virtual work, with
    0 it is only reported (and the potential is the force-only one)."""
    from qmml.constraints import strain_set, write_set

    path = tmp_path / "hop.xyz"
    write_frames(path, _hop_path(milady, n_images=11))
    hard = tmp_path / "strain.xyz"
    write_set(hard, strain_set(milady, a0=A0, n_cells=2, n_strains=3))
    reports = {}
    for weight in ("0", "1e4"):
        report = tmp_path / f"r{weight}.json"
        code = main(["retrain", "--potential", "W_milady_lml", "--targets", str(path),
                     "--hard", str(hard), "--lambda0", "1e-3", "--path", str(path),
                     "--lambda-path", weight, "--output", str(tmp_path / f"p{weight}"),
                     "--report", str(report)])
        assert code == 0
        reports[weight] = json.loads(report.read_text())
    for weight, report in reports.items():
        assert report["lambda_path"] == float(weight)
        (p,) = report["paths"]
        assert p["source"] == str(path) and p["images"] == 11
        assert report["hard_residual_max"] < 1e-9
    # "QM/ML" forces 20 % weaker: the potential's barrier is 1/0.8 of the virtual-work one
    # (to the quadrature error of 11 images); retrained, it follows the virtual work
    for report in reports.values():
        assert report["paths"][0]["barrier_relative_error_before"] == pytest.approx(
            0.25, abs=0.02)
    assert abs(reports["1e4"]["paths"][0]["barrier_relative_error_after"]) < 1e-3
    assert reports["1e4"]["paths"][0]["profile_rmse_after"] < \
        0.01 * reports["1e4"]["paths"][0]["profile_rmse_before"]


# ---- held-out frames -------------------------------------------------------------------
def test_heldout_frames_are_not_targets(milady, tmp_path):
    from qmml.extract import split_heldout
    from qmml.steps import extract_forces_file

    images = _hop_path(milady, n_images=10, scale=1.0)
    train, held = split_heldout(list(range(10)), 0.2)
    assert held == [4, 9] and train == [0, 1, 2, 3, 5, 6, 7, 8]
    assert split_heldout(list(range(3)), 0.2) == ([0, 1, 2], [])
    paths = []
    for k, atoms in enumerate(images):
        paths.append(tmp_path / f"frame{k}.xyz")
        write_frames(paths[-1], [atoms])
    summary = extract_forces_file(paths, "W_milady_lml", tmp_path / "targets.xyz",
                                  tmp_path / "targets.json", heldout=tmp_path / "held.xyz",
                                  heldout_fraction=0.2)
    targets = read(tmp_path / "targets.xyz", index=":")
    held_frames = read(tmp_path / "held.xyz", index=":")
    assert len(targets) == 8 and len(held_frames) == 2
    assert summary["n_heldout_frames"] == 2 and summary["n_frames"] == 8
    assert [a.info["source_file"] for a in held_frames] == [str(paths[4]), str(paths[9])]
    assert not {a.info["source_file"] for a in targets} & set(summary["heldout_sources"])
    for atoms, k in zip(held_frames, (4, 9)):
        np.testing.assert_allclose(atoms.positions, images[k].positions, atol=1e-6)


# ---- vacancy ---------------------------------------------------------------------------
def test_vacancy_reference_of_the_stand_in_is_a_direct_calculation(reference, tmp_path):
    """The QM vacancy reference with the stand-in engine: E_f equals a direct relaxation
    with the stand-in's calculator; the symmetric saddle equals a climbing-image NEB; a
    rerun takes every energy from the QM cache."""
    from ase.optimize import BFGS

    from qmml.constraints import vacancy_neb
    from qmml.steps.validation import qm_vacancy_reference_file

    pot, zbl = reference
    bulk_ref = {"a0": 3.1648, "C11": 1.0, "C12": 1.0, "C44": 1.0}
    out = tmp_path / "vacancy.json"
    result = qm_vacancy_reference_file({"engine": "reference"}, tmp_path / "cache", bulk_ref,
                                       out, n_cells=2)
    assert json.loads(out.read_text())["formation_energy"] == result["formation_energy"]
    perfect = bcc_cell(3.1648, 2)
    perfect.calc = pot.calculator(zbl=zbl)
    e_perfect = perfect.get_potential_energy()
    vac = perfect.copy()
    del vac[5]  # every site is equivalent
    vac.calc = pot.calculator(zbl=zbl)
    BFGS(vac, logfile=None).run(fmax=0.001)
    direct = vac.get_potential_energy() - 15 / 16 * e_perfect
    assert result["formation_energy"] == pytest.approx(direct, abs=2e-3)
    assert 2.0 < result["formation_energy"] < 4.5
    neb = vacancy_neb(pot, a0=3.1648, n_cells=2, n_images=5, fmax=0.005, zbl=zbl)
    assert result["migration_barrier"] == pytest.approx(neb[0].info["barrier"], abs=5e-3)
    assert result["qm_calls"] > 0
    again = qm_vacancy_reference_file({"engine": "reference"}, tmp_path / "cache", bulk_ref,
                                      tmp_path / "again.json", n_cells=2)
    assert again["qm_calls"] == 0 and again["formation_energy"] == result["formation_energy"]


# ---- screw core ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def screw():
    from qmml.structures import dislocation_cylinder

    return dislocation_cylinder("screw111", A0, MILADY["C11"], MILADY["C12"], MILADY["C44"],
                                radius=16.0, fixed_width=5.0)


def _screw_field_at(structure, centre):
    """The structure's perfect sites displaced by the screw field centred at ``centre``."""
    from qmml.structures import perfect_sites

    sites, _ = perfect_sites(structure)
    atoms = structure.copy()
    b = structure.info["burgers"][2]
    atoms.positions = sites
    atoms.positions[:, 2] += b / (2 * np.pi) * np.arctan2(sites[:, 1] - centre[1],
                                                          sites[:, 0] - centre[0])
    return atoms


def test_core_classifier(screw):
    """The built ½<111> screw is an easy core centred at its core position; the same field
    centred on a hard-triangle centre or on an atomic column is classified hard / split."""
    from qmml.validation import core_sites, core_type

    kind, centre, distances = core_type(screw, screw)
    assert kind == "easy"
    np.testing.assert_allclose(centre, screw.info["core_position"], atol=0.02)
    # the three site types are a0·√2/3 apart in the [111] projection
    spacing = A0 * np.sqrt(2) / 3
    assert distances["hard"] == pytest.approx(spacing, abs=0.03)
    assert distances["split"] == pytest.approx(spacing, abs=0.03)
    core = np.asarray(screw.info["core_position"])
    sites = core_sites(screw, core)
    assert sites["easy"] == pytest.approx(0, abs=1e-6)
    # a column next to the core and the hard centre mirrored through it
    from qmml.structures import perfect_sites

    columns = perfect_sites(screw)[0][:, :2]
    column = columns[np.argmin(np.linalg.norm(columns - core, axis=1))]
    for centre, expected in ((column, "split"), (2 * column - core, "hard")):
        kind, fitted, _ = core_type(_screw_field_at(screw, centre), screw)
        assert kind == expected
        np.testing.assert_allclose(fitted, centre, atol=0.05)


# ---- the table -------------------------------------------------------------------------
def test_validation_table_of_the_stand_in(milady, screw, tmp_path):
    """qmml validate: elastic rows = elastic.json − reference, vacancy rows = the same
    procedure with the potential, core rows of an easy core, held-out RMSE of the
    potential on frames of its own forces = 0."""
    from qmml.validation import vacancy_properties

    elastic = tmp_path / "elastic.json"
    elastic.write_text(json.dumps(MILADY))
    reference = tmp_path / "reference.json"
    ref = {"a0": 3.17, "C11": 520.0, "C12": 200.0, "C44": 150.0}
    reference.write_text(json.dumps(ref))
    vacancy = tmp_path / "vacancy.json"
    vacancy.write_text(json.dumps({"formation_energy": 3.0, "migration_barrier": 1.5,
                                   "n_cells": 2, "fmax": 0.01, "engine": "test"}))
    built = tmp_path / "screw_built.xyz"
    write_frames(built, [screw])
    qmml_frame = screw.copy()
    qmml_frame.calc = SinglePointCalculator(qmml_frame, forces=np.zeros((len(screw), 3)))
    relaxed = tmp_path / "screw_qmml.xyz"
    write_frames(relaxed, [qmml_frame])
    held = tmp_path / "held.xyz"
    write_frames(held, _hop_path(milady, n_images=3, scale=1.0))
    out = tmp_path / "validation.csv"
    assert main(["validate", "--potential", "W_milady_lml", "--elastic", str(elastic),
                 "--bulk-reference", str(reference), "--vacancy-reference", str(vacancy),
                 "--relaxed", f"screw={relaxed},{built}", "--heldout", str(held),
                 "--output", str(out)]) == 0
    table = pd.read_csv(out).set_index(["property", "case"])
    for key in ("a0", "C11", "C12", "C44"):
        r = table.loc[(key, "bulk")]
        assert float(r["value"]) == MILADY[key] and float(r["reference"]) == ref[key]
        assert float(r["error"]) == pytest.approx(MILADY[key] - ref[key], abs=1e-12)
        assert float(r["relative_error"]) == pytest.approx((MILADY[key] - ref[key]) / ref[key])
    ml = vacancy_properties(milady.calculator(), A0, 2)
    r = table.loc[("vacancy_formation_energy", "bulk")]
    assert float(r["value"]) == pytest.approx(ml["formation_energy"], abs=1e-9)
    assert float(r["error"]) == pytest.approx(ml["formation_energy"] - 3.0, abs=1e-9)
    r = table.loc[("vacancy_migration_barrier", "bulk")]
    assert float(r["value"]) == pytest.approx(ml["migration_barrier"], abs=1e-9)
    core = table.loc[("screw_core", "screw")]
    assert core["reference"] == "easy" and core["value"] == "easy"
    assert float(core["error"]) == 0.0
    assert float(table.loc[("screw_core_offset", "screw"), "value"]) < 0.3
    assert float(table.loc[("force_rmse_heldout", "held"), "value"]) < 1e-6


def test_ml_neb_barrier_is_the_vacancy_saddle_on_one_rank_and_on_two(milady):
    """The ML-only NEB of validation (ASE's ODE12r NEB optimiser, one LAMMPS instance for
    every image) on a vacancy hop: its barrier is the saddle that symmetry gives
    (vacancy_properties: the hopping atom held at the hop's midpoint), and the ML
    potential on two MPI ranks gives the same profile."""
    from qmml.validation import ml_neb_profile, vacancy_properties

    perfect = bcc_cell(A0, 2)
    hopper = int(np.argmin(np.linalg.norm(perfect.positions - A0 / 2, axis=1)))
    initial = perfect.copy()
    del initial[0]
    final = initial.copy()
    final.positions[hopper - 1] = perfect.positions[0]
    expected = vacancy_properties(milady.calculator(), A0, 2)["migration_barrier"]
    s, energy, converged = ml_neb_profile(initial, final, milady.calculator(), 5, fmax=0.01)
    assert converged
    assert s[0] == 0.0 and s[-1] == 1.0 and energy[0] == 0.0
    assert abs(energy[-1]) < 1e-6                 # the two ends are the same state
    assert energy.max() == energy[2]              # the middle image is the saddle
    assert energy.max() == pytest.approx(expected, abs=1e-3)
    s2, energy2, converged2 = ml_neb_profile(initial, final, milady.calculator(ranks=2), 5,
                                             fmax=0.01)
    assert converged2
    np.testing.assert_allclose(energy2, energy, atol=1e-6)
    np.testing.assert_allclose(s2, s, atol=1e-6)
