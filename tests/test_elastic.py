"""Elastic fitting: the result's a0 and Cij, measured by finite differences of LAMMPS stresses
(qmml.elastic.measure_cubic_elastic, which never touches the fitting code), equal the targets."""
from __future__ import annotations

import json

from ase.build import bulk

from qmml.cli import main
from qmml.elastic import fit_elastic, measure_cubic_elastic
from qmml.potential import SNAPPotential
from conftest import MILADY


def test_measure_milady_reproduces_its_known_a0(milady):
    m = measure_cubic_elastic(milady.calculator(), 3.18)
    assert abs(m["a0"] - MILADY["a0"]) < 1e-4
    # published 513.1/201.0/144.9 GPa; our finite-difference values are within ~1 %
    for key in ("C11", "C12", "C44"):
        assert abs(m[key] - MILADY[key]) / MILADY[key] < 0.02


def test_fit_elastic_hits_targets_exactly(milady):
    md = []
    for seed in range(2):
        atoms = bulk("W", "bcc", 3.18551, cubic=True) * (3, 3, 3)
        atoms.rattle(0.08, seed=seed)
        md.append(atoms)
    targets = {"a0": 3.172, "C11": 523.0, "C12": 204.0, "C44": 160.0}
    fitted, res = fit_elastic(milady, **targets, soft_configs=md)
    assert res.hard_residual_max < 1e-10
    m = measure_cubic_elastic(fitted.calculator(), 3.18)
    assert abs(m["a0"] - targets["a0"]) < 1e-4
    for key in ("C11", "C12", "C44"):
        assert abs(m[key] - targets[key]) < 0.5, (key, m[key])
    # smallest change: the potential is still W_milady-like, forces of the MD frames barely move
    assert res.diagnostics["soft_force_change_rmse"] < 0.2


def test_cli_fit_elastic_and_bad_target(milady, tmp_path, capsys):
    soft = tmp_path / "md.xyz"
    atoms = bulk("W", "bcc", 3.18551, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=5)
    atoms.write(soft)
    rc = main(["fit-elastic", "--potential", str(tmp_path / "none"), "--a0", "3.17",
               "--C11", "520", "--C12", "200", "--C44", "150", "--output", str(tmp_path / "o")])
    assert rc == 2 and "none.snapcoeff: potential file not found" in capsys.readouterr().err
    milady.write(tmp_path / "start")
    rc = main(["fit-elastic", "--potential", str(tmp_path / "start"), "--a0", "3.17",
               "--C11", "200", "--C12", "300", "--C44", "150", "--soft", str(soft),
               "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "C11=200.0 <= C12=300.0" in err and err.count("\n") == 1
    rc = main(["fit-elastic", "--potential", str(tmp_path / "start"), "--a0", "3.17",
               "--C11", "520", "--C12", "200", "--C44", "150", "--soft", str(soft),
               "--output", str(tmp_path / "theta0"), "--report", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["hard_residual_max"] < 1e-10
    fitted = SNAPPotential.read(tmp_path / "theta0")
    assert abs(measure_cubic_elastic(fitted.calculator(), 3.17)["C44"] - 150.0) < 0.5
