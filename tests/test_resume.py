"""Kill a QM/ML relaxation (SIGKILL) after K real QM calls; the rerun repeats none of them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read, write

from conftest import MILADY
from qmml import potential_path
from qmml.qmcache import KILL_ENV, QMCache
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder


@pytest.fixture(scope="module")
def screw_input(tmp_path_factory, milady):
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=18.0, fixed_width=6.0)
    cylinder_region(atoms, None, 4.5, milady.cutoff, milady.cutoff)
    atoms.set_constraint()
    path = tmp_path_factory.mktemp("resume") / "screw.xyz"
    write(path, atoms, format="extxyz")
    return path


def qmml_relax(tmp_path, input_path, tag, optimizer, kill_after=None):
    env = dict(os.environ)
    env.pop(KILL_ENV, None)
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)
    out = tmp_path / f"{tag}.xyz"
    cmd = [sys.executable, "-m", "qmml.cli", "relax", "--input", str(input_path),
           "--potential", str(potential_path("W_milady_lml")), "--engine", "reference",
           "--buffer", "4.7", "--fmax", "0.01", "--optimizer", optimizer,
           "--cache", str(tmp_path / f"cache-{tag.split('-')[0]}"), "--output", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


@pytest.mark.parametrize("optimizer", ["FIRE", "LBFGS", "ODE12r"])
def test_killed_relaxation_resumes_without_repeating_qm_calls(tmp_path, screw_input,
                                                              optimizer):
    full, full_out = qmml_relax(tmp_path, screw_input, "full", optimizer)
    assert full.returncode == 0, full.stderr
    ref = read(full_out)
    total = ref.info["n_qm_real_calls"]
    assert total >= 6 and ref.info["converged"]
    K = total // 2  # real QM calls before the kill (mid-run)
    assert "stand-in" in ref.info["qm_engine"]

    killed, out = qmml_relax(tmp_path, screw_input, "part-killed", optimizer, kill_after=K)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()  # no half-written output
    assert len(QMCache(tmp_path / "cache-part", "any")) == K  # every finished call kept
    assert (tmp_path / "part-killed.xyz.ckpt").is_file()

    resumed, out = qmml_relax(tmp_path, screw_input, "part-killed", optimizer)
    assert resumed.returncode == 0, resumed.stderr
    again = read(out)
    assert again.info["n_qm_real_calls_process"] == total - K
    # the whole run's count adds the checkpointed one: SIGKILL leaves no chance to record
    # the calls after the last checkpoint (SIGTERM does: test_bad_input)
    assert total - K < again.info["n_qm_real_calls"] <= total
    assert len(QMCache(tmp_path / "cache-part", "any")) == total
    np.testing.assert_allclose(again.positions, ref.positions, atol=1e-6)
    np.testing.assert_allclose(again.get_forces(), ref.get_forces(), atol=1e-6)
    if optimizer in ("FIRE", "LBFGS"):  # exact state restore: continued, not replayed
        assert "resuming from" in resumed.stdout and "at step 0" not in resumed.stdout

    # a finished run started again makes no QM call at all
    done, out = qmml_relax(tmp_path, screw_input, "part-killed", optimizer)
    assert done.returncode == 0 and read(out).info["n_qm_real_calls_process"] == 0
    assert read(out).info["n_qm_real_calls"] == again.info["n_qm_real_calls"]
