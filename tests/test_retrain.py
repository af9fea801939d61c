"""Retraining Θ0 (W_milady_lml) on QM/ML forces of a ½<111> screw core.

The "QM" here is the classical stand-in W_2940_2017_2+ZBL (labelled as such): ~25 atoms
around the core get its forces through ASE ForceQMMM, the rest get Θ0 forces.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.qmmm import ForceQMMM
from ase.constraints import FixAtoms
from ase.io import read, write
from ase.optimize import FIRE

from qmml.cli import main
from qmml.elastic import strained
from qmml.potential import SNAPPotential
from qmml.frames import forces_of as target_forces
from conftest import MILADY


def _screw_cylinder(radius=22.0, fix_width=8.0):
    from matscipy.dislocation import BCCScrew111Dislocation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = BCCScrew111Dislocation(MILADY["a0"], MILADY["C11"], MILADY["C12"], MILADY["C44"],
                                   symbol="W")
        _, disloc = d.build_cylinder(radius, fix_width=fix_width, verbose=False)[:2]
    core = np.array(disloc.info["core_positions"][0][:2])
    return disloc, core


@pytest.fixture(scope="module")
def qmml_frames(milady, reference, tmp_path_factory):
    """Three QM/ML frames of a Θ0-relaxed screw core with ~25 stand-in-QM atoms."""
    ref_pot, zbl = reference
    disloc, core = _screw_cylinder()
    fix = disloc.arrays["fix_mask"].astype(bool)
    disloc.set_constraint(FixAtoms(mask=fix))
    disloc.calc = milady.calculator()
    FIRE(disloc, logfile=None).run(fmax=0.01, steps=300)
    r = np.linalg.norm(disloc.positions[:, :2] - core, axis=1)
    qm_mask = r < 6.9
    frames = []
    for seed in (None, 1, 2):
        atoms = disloc.copy()
        atoms.set_constraint()
        if seed is not None:
            atoms.positions[~fix] += np.random.default_rng(seed).normal(0, 0.02, (int((~fix).sum()), 3))
        qmmm = ForceQMMM(atoms, qm_mask, ref_pot.calculator(zbl=zbl), milady.calculator(),
                         buffer_width=9.5)
        atoms.calc = qmmm
        forces = atoms.get_forces()
        out = atoms.copy()
        out.calc = None
        out.new_array("forces", forces)
        out.new_array("region", qmmm.get_region_from_masks(atoms))
        out.arrays["fix_mask"] = fix
        out.info["qm_engine"] = "reference (classical stand-in, not QM): W_2940_2017_2+ZBL"
        frames.append(out)
    path = tmp_path_factory.mktemp("retrain") / "targets.xyz"
    write(path, frames, format="extxyz")
    return path, int(qm_mask.sum())


@pytest.fixture(scope="module")
def constraint_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("constraints")
    base = bulk("W", "bcc", MILADY["a0"], cubic=True) * (3, 3, 3)
    hard = []
    for mode in range(6):
        for eps in (-0.01, -0.005, 0.0, 0.005, 0.01):
            e = np.zeros(6)
            e[mode] = eps
            hard.append(strained(base, e))
    vac = base.copy()
    del vac[0]
    hard.append(vac)
    soft = []
    for seed in range(3):
        a = base.copy()
        a.rattle(0.08, seed=seed)
        soft.append(a)
    write(d / "hard.xyz", hard, format="extxyz")
    write(d / "soft.xyz", soft, format="extxyz")
    return d / "hard.xyz", d / "soft.xyz"


@pytest.mark.parametrize("quadratic", [False, True])
def test_retrain_screw_core(milady, qmml_frames, constraint_files, tmp_path, quadratic):
    targets, n_qm = qmml_frames
    hard, soft = constraint_files
    assert 20 <= n_qm <= 30
    start = tmp_path / "theta0"
    milady.write(start)
    out, report_path = tmp_path / "theta1", tmp_path / "report.json"
    args = ["retrain", "--potential", str(start), "--targets", str(targets), "--hard", str(hard),
            "--soft", str(soft), "--lambda0", "500" if quadratic else "1e-6",
            "--lambda-soft", "1", "--output", str(out), "--report", str(report_path)]
    assert main(args + (["--quadratic"] if quadratic else [])) == 0
    report = json.loads(report_path.read_text())
    for key in ("qm_force_rmse_before", "qm_force_rmse_after", "target_force_rmse_before",
                "target_force_rmse_after", "hard_residual_max", "soft_force_change_rmse",
                "hard_rank", "n_coefficients", "n_target_atoms", "seconds"):
        assert key in report
    assert report["n_coefficients"] == (1596 if quadratic else 56)
    # the quadratic space (paper's choice) must cut the QM error >= 3x; the 56-coefficient
    # linear space, minus the hard rank, has far fewer free directions
    gain = 3.0 if quadratic else 2.0
    assert report["qm_force_rmse_after"] * gain <= report["qm_force_rmse_before"], report
    assert report["soft_force_change_rmse"] < 0.05
    assert report["hard_residual_max"] <= 1e-9

    new = SNAPPotential.read(out)
    assert new.quadratic == quadratic
    # independent check through LAMMPS pair_style snap: hard-set energies per atom unchanged
    frames = read(hard, index=":")
    for atoms in frames[::7]:
        atoms.calc = milady.calculator()
        e0 = atoms.get_potential_energy() / len(atoms)
        atoms.calc = new.calculator()
        assert abs(atoms.get_potential_energy() / len(atoms) - e0) <= 1e-9
    # and the written potential's forces on QM atoms are the reported ones
    frame = read(targets, index=0)
    qm = frame.arrays["region"] == "QM"
    qm_forces = target_forces(frame, "frame 0")[qm]
    frame.calc = new.calculator()
    rmse = np.sqrt(np.mean((frame.get_forces()[qm] - qm_forces) ** 2))
    assert rmse < report["qm_force_rmse_before"] / 2.5


def test_retrain_descriptor_cache(milady, qmml_frames, constraint_files, tmp_path,
                                  monkeypatch):
    """--descriptor-cache: the same potential as without it; a rerun with new weights reads
    the targets, hard and soft sums from the cache and computes no descriptor."""
    import qmml.descriptors.sums as desc

    targets, _ = qmml_frames
    hard, soft = constraint_files
    milady.write(tmp_path / "theta0")

    def run(name, lambda0, cache=True):
        args = ["retrain", "--potential", str(tmp_path / "theta0"), "--targets", str(targets),
                "--hard", str(hard), "--soft", str(soft), "--lambda0", lambda0,
                "--output", str(tmp_path / name), "--report", str(tmp_path / f"{name}.json")]
        assert main(args + (["--descriptor-cache", str(tmp_path / "cache")] if cache
                            else [])) == 0
        return (tmp_path / f"{name}.snapcoeff").read_text().split("\n", 1)[1]

    plain = run("plain", "1e-6", cache=False)
    assert run("cold", "1e-6") == plain
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3  # targets, soft, hard

    def no_descriptors(*_):
        raise AssertionError("descriptors computed although every set is in the cache")

    monkeypatch.setattr(desc, "_chunk_job", no_descriptors)
    assert run("warm", "1e-6") == plain
    cold, warm = (json.loads((tmp_path / f"{n}.json").read_text())["descriptor_cache"]
                  for n in ("cold", "warm"))
    assert cold == {"read": [], "computed": ["soft", "targets", "hard set"]}
    assert warm == {"read": ["soft", "targets", "hard set"], "computed": []}
    assert run("warm_other_weight", "1e-3") != plain
    monkeypatch.undo()
    assert run("plain_other_weight", "1e-3", cache=False) == \
        (tmp_path / "warm_other_weight.snapcoeff").read_text().split("\n", 1)[1]


def test_frames_and_paths_with_species_outside_the_potential_are_left_out(
        milady, qmml_frames, constraint_files):
    """A W potential cannot learn what He takes part in: a QM/ML frame or a path holding He
    is no target.  The retraining equals the one without them, and its report names them."""
    from qmml.retrain import retrain

    path, _ = qmml_frames
    frames = read(path, index=":")
    with_he = frames[0].copy()
    with_he.append("He")
    with_he.positions[-1] = with_he.positions[0] + (0.0, 0.0, 1.2)
    forces = np.vstack([target_forces(frames[0], "frame 0"), [[0.0, 0.0, 3.0]]])
    with_he.new_array("forces", forces)
    with_he.arrays["region"][-1] = "QM"
    hard, soft = (read(f, index=":") for f in constraint_files)
    w_only = [(f"W {i}", a) for i, a in enumerate(frames)]
    theta_w, report_w = retrain(milady, w_only, hard, soft, lambda0=1e-6)
    theta_he, report_he = retrain(milady, w_only + [("He frame", with_he)], hard, soft,
                                  lambda0=1e-6, paths=[("He path", [with_he, with_he])])
    np.testing.assert_array_equal(theta_he.theta, theta_w.theta)
    assert report_w["left_out"] == []
    assert report_he["left_out"] == ["He frame (He)", "He path (He)"]
    assert report_he["n_target_frames"] == report_w["n_target_frames"] == 3
    assert report_he["paths"] == []


def test_frames_without_region_count_as_qm_in_retrain_and_extract(milady, qmml_frames):
    """A frame without a 'region' array (a plain QM calculation) mixed with QM/ML frames:
    all its free atoms are QM atoms, for the retraining report and the extracted errors."""
    from qmml.extract import qm_atom_forces
    from qmml.retrain import target_set

    path, n_qm = qmml_frames
    with_region, plain = read(path, index=0), read(path, index=1)
    del plain.arrays["region"]
    free = ~plain.arrays["fix_mask"].astype(bool)
    fs = target_set([("a", with_region), ("b", plain)])
    n_qm_free = int((fs.keep_masks[0] & fs.force_masks[0]).sum())
    assert 0 < n_qm_free <= n_qm
    assert fs.keep_masks[1].all()
    ref, _ = qm_atom_forces([with_region, plain], milady)
    assert len(ref) == n_qm_free + int(free.sum())
    np.testing.assert_array_equal(ref[n_qm_free:], target_forces(plain, "b")[free])


def test_retrain_bad_inputs(milady, constraint_files, tmp_path, capsys):
    hard, soft = constraint_files
    milady.write(tmp_path / "p")
    base = ["retrain", "--potential", str(tmp_path / "p"), "--hard", str(hard),
            "--output", str(tmp_path / "o"), "--report", str(tmp_path / "r.json")]

    def error_of(targets):
        assert main(base + ["--targets", str(targets)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    no_forces = tmp_path / "noforces.xyz"
    write(no_forces, bulk("W", "bcc", 3.18, cubic=True) * (2, 2, 2), format="extxyz")
    assert "no 'forces' array" in error_of(no_forces)

    he = bulk("W", "bcc", 3.18, cubic=True) * (2, 2, 2)
    he.append("He")
    he.new_array("forces", np.zeros((len(he), 3)))
    he_file = tmp_path / "he.xyz"
    write(he_file, he, format="extxyz")
    he_error = error_of(he_file)
    assert "every target frame holds species the potential (W) lacks" in he_error
    assert "he.xyz frame 0 (He)" in he_error

    all_fixed = bulk("W", "bcc", 3.18, cubic=True) * (2, 2, 2)
    all_fixed.new_array("forces", np.zeros((len(all_fixed), 3)))
    all_fixed.new_array("fix_mask", np.ones(len(all_fixed), bool))
    fixed_file = tmp_path / "fixed.xyz"
    write(fixed_file, all_fixed, format="extxyz")
    assert "no target atoms" in error_of(fixed_file)

    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    assert "empty.xyz" in error_of(empty)
    assert "missing.xyz: file not found" in error_of(tmp_path / "missing.xyz")

    # mismatched descriptor parameters between snapcoeff and snapparam
    (tmp_path / "p.snapparam").write_text(
        (tmp_path / "p.snapparam").read_text().replace("twojmax 8", "twojmax 6"))
    assert "twojmax=6" in error_of(no_forces)
