"""GPAW (real DFT, LCAO) as the QM engine of one QM/ML force call."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import MILADY
from qmml.qmcache import CachedQMCalculator
from qmml.qmmm import make_force_qmmm
from qmml.structures import dislocation_cylinder

gpaw = pytest.importorskip("gpaw", reason="GPAW not installed "
                           "(CC=g++ pip install gpaw gpaw-data)")

# tiny but real: single-zeta basis, coarse grid, 2 k-points along the line
CFG = {"engine": "gpaw", "mode": "lcao", "basis": "sz(dzp)", "h": 0.35, "kpts_line": 2}


@pytest.mark.gpaw
@pytest.mark.slow
def test_gpaw_qm_forces_equal_direct_gpaw_call(milady, tmp_path):
    from gpaw import GPAW

    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=12.0, fixed_width=4.0)
    core = np.asarray(atoms.info["core_position"])
    qm_mask = np.linalg.norm(atoms.positions[:, :2] - core, axis=1) <= 2.0  # core triangle
    region = np.full(len(atoms), "MM", dtype="<U6")
    region[qm_mask] = "QM"
    atoms.arrays["region"] = region
    qm = CachedQMCalculator.from_config(CFG, tmp_path)
    ml = milady.calculator()
    calc = make_force_qmmm(atoms, qm, ml, buffer_width=3.0, vacuum=3.0)
    mixed = calc.get_forces(atoms)
    assert qm_mask.sum() == 3 and qm.n_real_calls == 1

    cluster = calc.get_qm_cluster(atoms)
    assert tuple(cluster.pbc) == (False, False, True) and 6 <= len(cluster) <= 15
    cluster.calc = GPAW(mode="lcao", basis="sz(dzp)", h=0.35, xc="PBE", setups={"W": "6"},
                        kpts=(1, 1, 2), symmetry="off", txt=None,
                        occupations={"name": "methfessel-paxton", "width": 0.1})
    direct = cluster.get_forces()
    raw = ml.get_forces(atoms)
    raw[qm_mask] = direct[qm_mask[calc.qm_buffer_mask]]
    expected = raw - raw.mean(axis=0)  # ForceQMMM zero_mean=True
    np.testing.assert_allclose(mixed, expected, atol=1e-6)
    assert np.abs(direct[qm_mask[calc.qm_buffer_mask]]).max() > 0.01  # real DFT forces
