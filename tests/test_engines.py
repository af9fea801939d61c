"""QM engine registry and the QM cache: settings, errors, retries, atomic storage."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from qmml import QmmlError
from qmml.engines import (DEFAULTS, REFERENCE_LABEL, engine_label, engine_settings_hash,
                          make_qm_calculator)
from qmml.qmcache import POSITION_TOL, CachedQMCalculator, QMCache, cluster_key


def _w_chain() -> Atoms:
    """4 W atoms periodic along z only (like a line-periodic QM cluster), rattled."""
    a = Atoms("W4", positions=[[5.0, 5.0, 0.0], [7.6, 5.0, 0.7], [5.0, 7.6, 1.4],
                               [6.4, 6.4, 2.1]], cell=[12.0, 12.0, 2.7587], pbc=[0, 0, 1])
    a.rattle(0.02, seed=3)
    return a


@pytest.mark.parametrize("cfg, needle", [
    ({"engine": "siesta"}, "unknown engine 'siesta'"),
    ({}, "required key 'engine'"),
    ({"engine": "espresso", "command": "pw.x"}, "key 'pseudopotentials'"),
    ({"engine": "tblite", "kpts_line": 0}, "'kpts_line'"),
])
def test_bad_configs_name_the_key(cfg, needle):
    with pytest.raises(QmmlError) as err:
        make_qm_calculator(cfg)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_vasp_needs_a_command(monkeypatch):
    monkeypatch.delenv("ASE_VASP_COMMAND", raising=False)
    with pytest.raises(QmmlError, match="'command'.*ASE_VASP_COMMAND"):
        make_qm_calculator({"engine": "vasp"})
    monkeypatch.setenv("ASE_VASP_COMMAND", "srun vasp_std")
    calc = make_qm_calculator({"engine": "vasp", "kpts_line": 12})
    # the paper's settings are the documented defaults
    assert calc.calc.float_params["encut"] == 550.0
    assert calc.calc.float_params["sigma"] == 0.1 and calc.calc.int_params["ismear"] == 1
    assert DEFAULTS["vasp"]["xc"] == "PBE"


def test_bulk_kpts_is_qmml_setting_not_an_engine_parameter(monkeypatch):
    """bulk_kpts reaches no engine calculator (VASP would write it to INCAR, QE to its
    namelist); it keys the bulk results of k-point engines, never the cluster results."""
    from qmml.bulk import bulk_calculator, bulk_settings_hash

    monkeypatch.setenv("ASE_VASP_COMMAND", "vasp_std")
    vasp = {"engine": "vasp", "kpts_line": 12}
    assert "bulk_kpts" not in make_qm_calculator(dict(vasp, bulk_kpts=16)).calc.parameters
    assert "bulk_kpts" not in bulk_calculator(dict(vasp, bulk_kpts=16), 2).parameters
    assert bulk_calculator(dict(vasp, bulk_kpts=16), 2).parameters["kpts"] == (8, 8, 8)
    assert engine_settings_hash(dict(vasp, bulk_kpts=16)) == engine_settings_hash(vasp)
    assert bulk_settings_hash(dict(vasp, bulk_kpts=16), 2) != bulk_settings_hash(vasp, 2)
    tblite = {"engine": "tblite"}
    assert bulk_settings_hash(dict(tblite, bulk_kpts=16), 2) == engine_settings_hash(tblite)


def test_settings_hash_tracks_physics_not_paths():
    base = {"engine": "tblite", "kpts_line": 2}
    h = engine_settings_hash(base)
    assert h == engine_settings_hash(dict(base, retries=5))  # retry policy: same physics
    assert h != engine_settings_hash(dict(base, kpts_line=3))
    assert h != engine_settings_hash(dict(base, electronic_temperature=300.0))
    assert engine_settings_hash({"engine": "reference"}) != h
    assert engine_label({"engine": "reference"}) == REFERENCE_LABEL
    assert "stand-in" in REFERENCE_LABEL and "not QM" in REFERENCE_LABEL


def test_cache_key_rounding():
    a = _w_chain()
    k = cluster_key(a, "h")
    b = a.copy()
    b.positions[0, 0] += 0.1 * POSITION_TOL  # below the tolerance: same entry
    assert cluster_key(b, "h") == k
    b.positions[0, 0] += 10 * POSITION_TOL
    assert cluster_key(b, "h") != k
    assert cluster_key(a, "other-settings") != k
    c = a.copy()
    c.pbc = [False, False, False]
    assert cluster_key(c, "h") != k


def test_cache_hit_returns_stored_forces_and_counts_real_calls(tmp_path):
    cfg = {"engine": "reference"}
    qm = CachedQMCalculator.from_config(cfg, tmp_path)
    cache = qm.cache
    a = _w_chain()
    f1 = qm.get_forces(a.copy())
    assert qm.n_real_calls == 1 and len(cache) == 1
    assert np.abs(f1).max() > 1e-3  # a rattled structure has forces
    # a fresh wrapper (new process) answers from disk, bit for bit
    qm2 = CachedQMCalculator.from_config(cfg, tmp_path)
    f2 = qm2.get_forces(a.copy())
    assert qm2.n_real_calls == 0 and qm2.n_cache_hits == 1
    np.testing.assert_array_equal(f1, f2)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries
    # and the answer is the engine's
    direct = make_qm_calculator(cfg)
    np.testing.assert_allclose(direct.get_forces(a.copy()), f1, atol=1e-10)


def test_scf_failure_retries_then_one_clear_error(tmp_path):
    # 2 SCF cycles cannot converge GFN1-xTB W; the retry doubles them (still too few)
    cfg = {"engine": "tblite", "max_iterations": 2, "retries": 1}
    lines = []
    qm = CachedQMCalculator.from_config(cfg, tmp_path, log=lines.append)
    with pytest.raises(QmmlError) as err:
        qm.get_forces(_w_chain())
    msg = str(err.value)
    assert "tblite" in msg and "2 attempt(s)" in msg and "SCF not converged" in msg
    assert len(lines) == 1 and "retry 1/1" in lines[0]
    assert qm.n_real_calls == 0 and len(QMCache(tmp_path, "x")) == 0


def test_tblite_replicates_along_the_line_only():
    calc = make_qm_calculator({"engine": "tblite", "kpts_line": 3})
    big, reps = calc.replicate(_w_chain())
    assert reps == (1, 1, 3) and len(big) == 12
    sphere = _w_chain()
    sphere.pbc = False
    assert calc.replicate(sphere)[1] == (1, 1, 1)  # 3D sphere: Γ only


def test_cache_survives_an_extxyz_round_trip(tmp_path):
    """A structure written to extxyz (8 decimals) and read back still hits its entry."""
    from ase.io import read, write

    cfg = {"engine": "reference"}
    qm = CachedQMCalculator.from_config(cfg, tmp_path / "cache")
    a = _w_chain()
    a.positions += np.random.default_rng(7).uniform(-1e-3, 1e-3, a.positions.shape)
    f = qm.get_forces(a.copy())
    write(tmp_path / "a.xyz", a)
    back = read(tmp_path / "a.xyz")
    assert np.abs(back.positions - a.positions).max() > 0  # really rounded
    qm2 = CachedQMCalculator.from_config(cfg, tmp_path / "cache")
    np.testing.assert_array_equal(qm2.get_forces(back), f)
    assert qm2.n_real_calls == 0
    moved = back.copy()
    moved.positions[1, 2] += 1e-5  # a genuinely different cluster is recomputed
    qm2.get_forces(moved)
    assert qm2.n_real_calls == 1
