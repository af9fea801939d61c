"""CP2K as a real DFT engine (cp2k_shell through ASE's CP2K calculator), on a small W system.

Cheap settings for a test (SVP-MOLOPT basis, 100 Ry, 3 QM atoms with a 3 Å buffer); the
user-facing settings are in config/examples/cp2k.yaml.  Measure the wavefunction-restart
saving with:
    PYTHONPATH=src python -m pytest -s tests/test_engine_cp2k.py
which prints the SCF iterations of every CP2K call (first call from atoms, the others
restarted from the previous call's wavefunction inside cp2k_shell).
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from conftest import MILADY
from qmml.accelerated import AcceleratedSettings
from qmml.engines.cluster import open_vacuum
from qmml.engines.programs import cp2k_scf_steps
from qmml.qmcache import CachedQMCalculator
from qmml.qmmm import make_force_qmmm, relax
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder

pytestmark = pytest.mark.skipif(
    shutil.which("cp2k_shell") is None,
    reason="cp2k_shell not installed (scripts/install-system-packages.sh: apt-get install "
           "cp2k cp2k-data)")

BUFFER = 3.0  # Å: thinner than the ML cutoff, to keep the CP2K cluster at 12 atoms
CHEAP = {"engine": "cp2k", "basis_set": "SVP-MOLOPT-PBE-GTH-q14", "cutoff": 100.0,
         "eps_default": 1e-6,
         "added_mos": 20, "eps_scf": 1e-5, "vacuum": 5.0}


def test_cp2k_qmml_relaxation_converges_with_consistent_forces(milady, tmp_path, monkeypatch):
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=12.0, fixed_width=4.0)
    counts = cylinder_region(atoms, None, qm_radius=1.6, buffer_width=BUFFER,
                             ml_cutoff=BUFFER)
    assert counts["QM"] == 3 and counts["buffer"] == 9
    monkeypatch.chdir(tmp_path)  # a relative run folder, as the pipeline's (CP2K input lines
    cfg = dict(CHEAP, directory="cp2k-run")  # are 80 characters: long absolute paths break)
    qm = CachedQMCalculator.from_config(cfg, tmp_path / "cache")
    start = time.perf_counter()
    # secants only: 3 QM atoms (9 force rows, related by the core's symmetry) cut with a
    # 3 Å buffer and Γ-only CP2K forces are an ill-posed absolute-force fit (measured: 4
    # CP2K calls with the default weight and lambda0 1e-2, 3 with none, over 20 with the
    # defaults, docs/design.md)
    stats = relax(atoms, qm, milady.calculator(), BUFFER, optimizer="accelerated",
                  fmax=0.05, vacuum=1.0, log=print,
                  accelerated=AcceleratedSettings(force_weight=0.0))
    seconds = time.perf_counter() - start
    steps = cp2k_scf_steps(tmp_path / "cp2k-run" / "cp2k.out")
    print(f"CP2K QM/ML relaxation: {qm.n_real_calls} CP2K calls, {seconds:.0f} s "
          f"({stats.qm_seconds:.0f} s in CP2K); SCF iterations per call {steps}")
    assert stats.converged and stats.fmax <= 0.05
    assert stats.fmax_history[0] > stats.fmax  # the relaxation lowered the QM/ML fmax
    assert len(steps) == qm.n_real_calls >= 2
    # every call after the first restarts from the previous wavefunction, in fewer steps
    assert qm.engine.n_restarts == qm.n_real_calls - 1
    assert max(steps[1:]) < steps[0]

    # the cluster CP2K saw: periodic along the line only, vacuum box in x and y
    cluster = make_force_qmmm(atoms, qm, milady.calculator(), BUFFER,
                              vacuum=1.0).get_qm_cluster(atoms)
    seen = qm.engine.last_input
    assert tuple(seen.pbc) == (False, False, True) and len(seen) == len(cluster) == 12
    assert (open_vacuum(seen, seen.pbc)[:2] >= 5.0 - 1e-6).all()

    # CP2K's forces are the derivative of its energy, checked on the largest QM-atom force
    # of the relaxation's first QM point (its energy and forces come from the QM cache, no
    # call): one more call in the same cp2k_shell (restarted SCF) with that component
    # moved by h; the trapezoid rule makes the forward difference O(h²):
    # ΔE = -h·(F(x) + F(x+h))/2
    first = atoms.copy()
    first.positions = stats.qm_points[0].positions[0]
    mixing = make_force_qmmm(first, qm, milady.calculator(), BUFFER, vacuum=1.0)
    base = mixing.get_qm_cluster(first)
    calls = qm.n_real_calls
    forces0, energy0 = qm.get_forces(base).copy(), qm.get_potential_energy(base)
    assert qm.n_real_calls == calls  # from the cache
    in_qm = mixing.qm_selection_mask[mixing.qm_buffer_mask]
    qm_forces = np.where(in_qm[:, None], forces0, 0.0)
    atom, axis = np.unravel_index(np.abs(qm_forces).argmax(), forces0.shape)
    h = 0.01
    moved = base.copy()
    moved.positions[atom, axis] += h
    engine = qm.engine
    forces1 = engine.get_forces(moved)
    numeric = -(engine.get_potential_energy(moved) - energy0) / h
    analytic = (forces0[atom, axis] + forces1[atom, axis]) / 2
    print(f"CP2K force on QM atom {atom} along {'xyz'[axis]}: analytic {analytic:.4f}, "
          f"finite difference {numeric:.4f} eV/Å")
    assert abs(analytic) > 0.15
    assert numeric == pytest.approx(analytic, rel=0.03)
    # the grid breaks translation invariance only slightly
    assert np.abs(forces1.sum(axis=0)).max() < 0.05 * np.abs(forces1).sum(axis=0).max()
