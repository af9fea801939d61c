"""QM engine registry and the QM cache: settings, errors, retries, atomic storage."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from qmml import QmmlError
from qmml.engines import (BUILDERS, DEFAULTS, REFERENCE_LABEL, EngineNotRunnable,
                          engine_label, engine_settings_hash, is_retryable,
                          make_qm_calculator, read_engine_config, resolved_settings)
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


DOUBLES = Path(__file__).resolve().parent / "doubles"


def test_vasp_needs_a_command(monkeypatch):
    monkeypatch.delenv("ASE_VASP_COMMAND", raising=False)
    with pytest.raises(QmmlError, match="'command'.*ASE_VASP_COMMAND"):
        make_qm_calculator({"engine": "vasp"})
    monkeypatch.setenv("ASE_VASP_COMMAND", "srun_missing -n 4 vasp_std")
    with pytest.raises(EngineNotRunnable, match="environment variable ASE_VASP_COMMAND"):
        make_qm_calculator({"engine": "vasp"})
    monkeypatch.setenv("ASE_VASP_COMMAND", str(DOUBLES / "vasp_double"))
    calc = make_qm_calculator({"engine": "vasp", "kpts_line": 12})
    vasp = BUILDERS["vasp"](calc.settings, (1, 1, 12))
    # the paper's settings are the documented defaults, and no symmetry on clusters
    assert vasp.float_params["encut"] == 550.0 and vasp.int_params["isym"] == 0
    assert vasp.float_params["sigma"] == 0.1 and vasp.int_params["ismear"] == 1
    assert DEFAULTS["vasp"]["xc"] == "PBE"


@pytest.mark.parametrize("command, missing", [
    ("vasp_std_nowhere", "vasp_std_nowhere"),
    ("launcher_nowhere -n 64 vasp_std", "launcher_nowhere"),
    ("sh -c true", None),
])
def test_command_check_names_the_missing_program(command, missing):
    cfg = {"engine": "vasp", "command": command}
    if missing is None:
        make_qm_calculator(cfg)
        return
    with pytest.raises(EngineNotRunnable) as err:
        make_qm_calculator(cfg)
    msg = str(err.value)
    assert f"'{missing}' is not an executable" in msg and "key 'command'" in msg
    assert "\n" not in msg and not is_retryable(err.value)


def test_launcher_command_checks_the_program_after_the_launcher(tmp_path, monkeypatch):
    launcher = tmp_path / "srun"
    launcher.write_text("#!/bin/sh\nexec \"$@\"\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(EngineNotRunnable, match="'vasp_gone' is not an executable"):
        make_qm_calculator({"engine": "vasp", "command": "srun -n 64 --exclusive vasp_gone"})
    make_qm_calculator({"engine": "vasp", "command": f"srun -n 2 {DOUBLES / 'vasp_double'}"})


@pytest.mark.parametrize("cfg, key, hint", [
    ({"engine": "tblite", "methd": "GFN1-xTB"}, "methd", "method"),
    ({"engine": "gpaw", "bassis": "dzp"}, "bassis", "basis"),
    ({"engine": "cp2k", "cuttoff": 300}, "cuttoff", "cutoff"),
    ({"engine": "vasp", "command": "sh", "encutt": 500}, "encutt", "encut"),
    ({"engine": "espresso", "command": "sh", "pseudopotentials": {}, "ecutwf": 40},
     "ecutwf", "ecutwfc"),
    ({"engine": "castep", "command": "sh", "cut_of_energy": 500}, "cut_of_energy",
     "cut_off_energy"),
    ({"engine": "reference", "kpts": 3}, "kpts", None),
])
def test_unknown_engine_key_is_an_error_naming_it(cfg, key, hint):
    with pytest.raises(QmmlError) as err:
        resolved_settings(cfg)
    msg = str(err.value)
    assert f"unknown key '{key}'" in msg and "valid:" in msg and "\n" not in msg
    if hint:
        assert f"did you mean '{hint}'" in msg
    assert "kpts_line" in msg  # the common keys are listed too
    # without the typo the config is accepted, with every documented key of its engine
    resolved_settings({k: v for k, v in cfg.items() if k != key} | DEFAULTS[cfg["engine"]])


def test_read_engine_config_names_file_and_unknown_key(tmp_path):
    path = tmp_path / "qm.yaml"
    path.write_text("engine: tblite\nmethd: GFN2-xTB\n")
    with pytest.raises(QmmlError, match=r"qm\.yaml: unknown key 'methd'.*did you mean 'method'"):
        read_engine_config(path)


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


def test_failure_quote_finds_cp2k_abort_message(tmp_path):
    from qmml.engines.errors import output_tail

    out = tmp_path / "cp2k.out"
    out.write_text(" *******************************************************************************\n"
                   " *   ___                                                                       *\n"
                   " *  /   \\                                                                      *\n"
                   " * [ABORT]                                                                     *\n"
                   " *  \\___/                           MT1D unimplemented                         *\n"
                   " *    |                                                                        *\n"
                   " *******************************************************************************\n"
                   + "".join(f"  {i} routine_{i}\n" for i in range(12, 0, -1)))
    quote = output_tail([tmp_path / "missing.out", out])
    assert quote.startswith("last lines of cp2k.out: CP2K ABORT: MT1D unimplemented")
    assert "1 routine_1" in quote and "\n" not in quote


def test_cp2k_refuses_a_run_folder_too_long_for_its_input_lines(tmp_path):
    """Refused when the engine is built (before its first call), not as a CP2K parse error."""
    long = tmp_path / ("x" * 70)
    settings = resolved_settings({"engine": "cp2k", "directory": str(long)})
    with pytest.raises(QmmlError, match=r"key 'directory'.*at most 64"):
        BUILDERS["cp2k"](settings, 1)
    assert not long.exists()


def test_cp2k_eps_default_is_written_only_when_given(tmp_path, monkeypatch):
    """&QS EPS_DEFAULT from the optional key; a config without it keeps its settings hash
    (and so its cached QM results)."""
    monkeypatch.chdir(tmp_path)
    plain = {"engine": "cp2k", "directory": "run"}
    tight = dict(plain, eps_default=1e-8)
    assert "EPS_DEFAULT" not in BUILDERS["cp2k"](resolved_settings(plain), 1).parameters.inp
    qs = BUILDERS["cp2k"](resolved_settings(tight), 1).parameters.inp
    assert "&QS\n      EXTRAPOLATION ASPC\n      EPS_DEFAULT 1.0e-08\n    &END QS" in qs
    assert engine_settings_hash(tight) != engine_settings_hash(plain)
    assert "eps_default" not in resolved_settings(plain)
