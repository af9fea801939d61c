"""Bad input and broken files: exit status 2 and one line naming the file, key or atoms,
before any QM call, with nothing already computed lost; SIGTERM saves and says how to
resume.  The stand-in engine ("reference") and a 75-atom screw cylinder throughout."""
from __future__ import annotations

import json
import math
import re
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from qmml import QmmlError, potential_path
from qmml.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
RUN = ["--potential", "W_milady_lml", "--engine", "reference", "--fmax", "0.05"]


def qmml(capsys, *args) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``qmml args`` (argparse exits are caught)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


def one_line(err: list[str], pattern: str) -> str:
    assert len(err) == 1, err
    assert __import__("re").search(pattern, err[0]), err[0]
    return err[0]


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.npz")) if cache.is_dir() else []


@pytest.fixture(scope="module")
def cylinder(tmp_path_factory) -> Path:
    """A W screw cylinder: 6 QM, 24 buffer, 45 MM atoms (built once)."""
    path = tmp_path_factory.mktemp("cyl") / "cyl.xyz"
    assert main(["build", "--kind", "screw111", "--radius", "12", "--fixed-width", "4",
                 "--qm-radius", "3", "--buffer", "5", "--output", str(path)]) == 0
    return path


# ---- 1. physically wrong input ---------------------------------------------------------
@pytest.mark.parametrize("buffer", ["2", "0", "-1"])
def test_buffer_below_ml_cutoff(cylinder, tmp_path, capsys, buffer):
    status, err = qmml(capsys, "relax", "--input", cylinder, *RUN, "--buffer", buffer,
                       "--cache", tmp_path / "cache", "--output", tmp_path / "out.xyz")
    assert status == 2
    if buffer == "2":  # both numbers named
        one_line(err, r"--buffer 2 Å is smaller than the cutoff 4\.700 Å of the ML potential")
    else:  # argparse: not a positive number
        one_line(err, rf"argument --buffer: must be a positive finite number, got '{buffer}'")
    assert cache_files(tmp_path / "cache") == [] and not (tmp_path / "out.xyz").exists()


def _with_species(cylinder: Path, tmp_path: Path, region: str, symbol: str) -> tuple[Path, int]:
    atoms = read(cylinder)
    labels = atoms.arrays["region"].astype(str)
    i = int(np.flatnonzero(labels == region)[0])
    atoms.symbols[i] = symbol
    path = tmp_path / f"{symbol}.xyz"
    write(path, atoms)
    return path, i


@pytest.mark.parametrize("region,symbol", [("MM", "He"), ("QM", "Fe")])
def test_species_the_potential_lacks(cylinder, tmp_path, capsys, region, symbol):
    """He in the ML region gets no ML force; Fe in this small QM region has buffer atoms
    within the ML cutoff: both are refused, naming the atom."""
    path, i = _with_species(cylinder, tmp_path, region, symbol)
    status, err = qmml(capsys, "relax", "--input", path, *RUN, "--buffer", "5",
                       "--cache", tmp_path / "cache", "--output", tmp_path / "out.xyz")
    assert status == 2
    line = one_line(err, rf"{path}: atoms {i} \({symbol}, {region}")
    assert "W_milady_lml (W)" in line and "4.70 Å" in line
    if region == "QM":
        assert __import__("re").search(r"but atom \d+ \(W, buffer\) is \d\.\d\d Å away", line)
    assert cache_files(tmp_path / "cache") == []


def test_foreign_species_allowed_deep_in_qm(cylinder):
    """The rule's positive side: an Fe atom whose every neighbour within the cutoff is QM."""
    from qmml.checks import foreign_species_errors

    atoms = read(cylinder)
    atoms.symbols[0] = "Fe"
    d = atoms.get_distances(0, range(len(atoms)), mic=True)
    atoms.arrays["region"] = np.where(d <= 4.7 + 0.5, "QM", "MM")
    assert foreign_species_errors(atoms, ["W"], 4.7) == []
    atoms.arrays["region"][np.flatnonzero(d > 0)[np.argmin(d[d > 0])]] = "buffer"
    assert len(foreign_species_errors(atoms, ["W"], 4.7)) == 1


def test_multi_frame_input_refused(cylinder, tmp_path, capsys):
    two = tmp_path / "two.xyz"
    write(two, [read(cylinder)] * 2)
    status, err = qmml(capsys, "relax", "--input", two, *RUN, "--buffer", "5",
                       "--cache", tmp_path / "cache", "--output", tmp_path / "out.xyz")
    assert status == 2
    one_line(err, rf"{two}: 2 frames, expected one structure \(relax takes one structure\)")
    status, err = qmml(capsys, "neb", "--initial", two, "--final", cylinder, *RUN,
                       "--buffer", "5", "--cache", tmp_path / "cache",
                       "--output", tmp_path / "neb.xyz")
    assert status == 2
    one_line(err, rf"{two}: 2 frames.*NEB end points: one frame each")


# ---- 2. numbers out of range -----------------------------------------------------------
@pytest.mark.parametrize("option,value", [("--fmax", "-1"), ("--fmax", "nan"),
                                          ("--steps", "-3"), ("--steps", "2.5"),
                                          ("--vacuum", "inf")])
def test_numeric_options(cylinder, tmp_path, capsys, option, value):
    args = ["relax", "--input", cylinder, "--potential", "W_milady_lml", "--engine",
            "reference", "--cache", tmp_path / "cache", "--output", tmp_path / "out.xyz",
            option, value]
    status, err = qmml(capsys, *args)
    assert status == 2
    one_line(err, rf"qmml relax: error: argument {option}: must be a positive|finite")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kwargs,pattern", [({"fmax": float("nan")}, "fmax"),
                                            ({"steps": -3}, "steps"),
                                            ({"fmax": -1.0}, "fmax")])
def test_numbers_checked_by_the_step_functions(cylinder, tmp_path, kwargs, pattern):
    from qmml.steps import relax_file

    with pytest.raises(QmmlError, match=rf"^{pattern}: must be a positive"):
        relax_file(cylinder, tmp_path / "out.xyz", "W_milady_lml", {"engine": "reference"},
                   tmp_path / "cache", buffer=5.0, **kwargs)
    assert cache_files(tmp_path / "cache") == []


# ---- 3. unwritable paths ---------------------------------------------------------------
def test_unwritable_paths(cylinder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = tmp_path / "out.xyz"
    for extra, bad in ((["--output", blocker / "out.xyz"], blocker),
                       (["--output", out, "--checkpoint", blocker / "run.ckpt"], blocker)):
        status, err = qmml(capsys, "relax", "--input", cylinder, *RUN, "--buffer", "5",
                           "--cache", tmp_path / "cache", *extra)
        assert status == 2
        one_line(err, rf"{bad}: folder of .* is not writable")
    status, err = qmml(capsys, "relax", "--input", cylinder, *RUN, "--buffer", "5",
                       "--cache", blocker / "cache", "--output", out)
    assert status == 2
    one_line(err, rf"{blocker}/cache: QM cache folder is not writable")
    assert cache_files(tmp_path / "cache") == [] and not out.exists()
    # fit-elastic fails at once, before its MD (no progress line printed)
    status, err = qmml(capsys, "fit-elastic", "--potential", "W_milady_lml", "--a0", "3.18",
                       "--C11", "520", "--C12", "200", "--C44", "160",
                       "--output", blocker / "theta0")
    assert status == 2
    one_line(err, rf"{blocker}: folder of output theta0.snapcoeff is not writable")


# ---- 4. non-finite numbers: potentials and JSON ------------------------------------------
@pytest.fixture
def nan_potential(tmp_path) -> Path:
    prefix = tmp_path / "nanpot"
    src = potential_path("W_milady_lml")
    (tmp_path / "nanpot.snapparam").write_text(Path(f"{src}.snapparam").read_text())
    lines = Path(f"{src}.snapcoeff").read_text().splitlines()
    k = next(n for n, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    lines[k + 5] = "nan"  # element line k+1, coefficients after it: coefficient 3
    (tmp_path / "nanpot.snapcoeff").write_text("\n".join(lines) + "\n")
    return prefix


def test_nan_potential(cylinder, tmp_path, capsys, nan_potential):
    coeff = rf"{nan_potential}\.snapcoeff:\d+: W coefficient \d+ is 'nan', not a finite number"
    status, err = qmml(capsys, "relax", "--input", cylinder, "--potential", nan_potential,
                       "--engine", "reference", "--buffer", "5", "--cache", tmp_path / "c",
                       "--output", tmp_path / "out.xyz")
    assert status == 2
    one_line(err, coeff)
    status, err = qmml(capsys, "build", "--kind", "screw111", "--radius", "10",
                       "--potential", nan_potential, "--output", tmp_path / "b.xyz")
    assert status == 2
    one_line(err, coeff)
    status, err = qmml(capsys, "extract-forces", cylinder, "--potential", nan_potential,
                       "--output", tmp_path / "t.xyz", "--summary", tmp_path / "s.json")
    assert status == 2
    one_line(err, coeff)
    assert not (tmp_path / "s.json").exists() and cache_files(tmp_path / "c") == []


def test_json_is_strict(tmp_path):
    from qmml.io import json_text, write_json

    path = tmp_path / "s.json"
    path.write_text('{"old": 1}\n')
    with pytest.raises(QmmlError, match=rf"^{path}: key 'errors\[1\]\.rmse' is nan"):
        write_json(path, {"n": 3, "errors": [{"rmse": 0.1}, {"rmse": float("nan")}]})
    assert json.loads(path.read_text()) == {"old": 1}  # untouched
    text = json_text({"barrier": float("inf"), "n": np.int64(2)}, null_keys=("barrier",))
    assert json.loads(text) == {"barrier": None, "n": 2}


# ---- 5. build: a host element the potential lacks ----------------------------------------
def test_build_symbol_without_potential(tmp_path, capsys):
    status, err = qmml(capsys, "build", "--kind", "screw111", "--radius", "10",
                       "--symbol", "Fe", "--output", tmp_path / "fe.xyz")
    assert status == 2
    one_line(err, r"symbol Fe: the potential W_milady_lml has no Fe \(only W\)")
    assert not (tmp_path / "fe.xyz").exists()


# ---- 6. QM-call counts of a resumed run --------------------------------------------------
def test_counts_are_the_whole_runs(cylinder, tmp_path, capsys):
    """A finished run rerun from its checkpoint (output gone) records the whole run's
    calls, not those of the last process."""
    cache, out = tmp_path / "cache", tmp_path / "out.xyz"
    args = ["relax", "--input", cylinder, *RUN, "--buffer", "5", "--steps", "200",
            "--cache", cache, "--output", out, "--quiet"]
    assert qmml(capsys, *args)[0] == 0
    first = read(out).info
    n_entries = len(cache_files(cache))
    assert first["n_qm_real_calls"] == first["n_qm_real_calls_process"] == n_entries > 5
    out.unlink()
    assert qmml(capsys, *args)[0] == 0
    again = read(out).info
    assert again["n_qm_real_calls"] == n_entries and again["n_qm_real_calls_process"] == 0
    assert again["n_qm_calls"] == first["n_qm_calls"] + again["n_qm_calls_process"]
    assert len(cache_files(cache)) == n_entries


# ---- 7. progress of long steps ----------------------------------------------------------
def test_fit_elastic_prints_progress(tmp_path):
    from qmml.steps import fit_elastic_file

    lines = []
    fit_elastic_file("W_milady_lml", tmp_path / "t0", {"a0": 3.18, "C11": 520.0,
                     "C12": 200.0, "C44": 160.0}, md_temperatures=(300.0, 1000.0),
                     md_steps=10, md_cells=3, log=lines.append)
    md = [x for x in lines if x.startswith("fit-elastic: MD at")]
    assert [x.split(" K")[0] for x in md] == ["fit-elastic: MD at 300", "fit-elastic: MD at 1000"]
    assert json.loads(lines[-1])["hard_residual_max"] < 1e-6


# ---- 8. SIGTERM: checkpoint, one line, rerun repeats no QM call --------------------------
def test_sigterm_saves_and_resumes(cylinder, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out.xyz"
    cmd = [sys.executable, "-m", "qmml.cli", "relax", "--input", str(cylinder),
           "--potential", "W_milady_lml", "--engine", "reference", "--buffer", "5",
           "--fmax", "0.001", "--steps", "400", "--cache", str(cache), "--output", str(out),
           "--quiet"]
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while len(cache_files(cache)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    ckpt = Path(f"{out}.ckpt")
    assert len(lines) == 1 and lines[0].startswith("qmml relax: stopped by SIGTERM: "
                                                   f"checkpoint {ckpt} kept ("), lines
    assert lines[0].endswith("run the same command again to resume")
    assert ckpt.is_file() and not out.exists()
    cached = len(cache_files(cache))
    real_before = int(lines[0].split("kept (")[1].split()[0])
    assert real_before == cached  # every paid call counted
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" not in rerun.stdout  # --quiet
    info = read(out).info
    total = len(cache_files(cache))
    assert info["n_qm_real_calls_process"] == total - cached  # no QM call repeated
    assert info["n_qm_real_calls"] == total and info["converged"]


# ---- 9. bulk reference cache: garbled entries are quarantined ---------------------------
def test_bulk_cache_quarantine(tmp_path, milady):
    from qmml.bulk import CachedStressCalculator
    from qmml.qmcache import CacheEntryWarning

    cell = bulk("W", "bcc", a=3.18, cubic=True).repeat(2)

    def stress(log=None):
        calc = CachedStressCalculator(milady.calculator(), tmp_path, "h", log=log)
        atoms = cell.copy()
        atoms.calc = calc
        return atoms.get_stress(), calc

    s0, calc = stress()
    assert calc.n_real_calls == 1
    (entry,) = (tmp_path / "bulk").glob("*.json")
    entry.write_text('{"energy": -1.0, "stre')  # a job killed mid-write by a non-atomic tool
    garbled = entry.read_text()
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s1, calc = stress(lines.append)
    assert calc.n_real_calls == 1 and np.allclose(s1, s0, atol=1e-12)
    (moved,) = (tmp_path / "quarantine" / "bulk").glob("*.json")
    assert moved.read_text() == garbled  # kept, not deleted
    assert any(issubclass(w.category, CacheEntryWarning) for w in caught)
    assert f"{entry} is unusable" in lines[0] and str(moved) in lines[0], lines
    assert len(lines) == 2 and re.fullmatch(r"QM bulk call 1: 16 atoms, [\d.]+ s", lines[1])
    s2, calc = stress()
    assert calc.n_cache_hits == 1 and calc.n_real_calls == 0 and np.allclose(s2, s0)
    assert math.isfinite(json.loads(entry.read_text())["energy"])


def test_sigterm_in_a_workflow_script(tmp_path):
    """``qmml.steps.log_file`` (every workflow script's log): the line goes to the log and
    stderr, status 143."""
    log = tmp_path / "job.log"
    script = ("import os, signal\nfrom qmml.steps import log_file\n"
              f"with log_file({str(log)!r}) as log:\n"
              "    log('step 1')\n    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    log('not reached')\n")
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    expected = ("stopped by SIGTERM: no checkpoint yet (no step completed); every completed "
                "QM call is kept in the QM cache; rerun snakemake to resume")
    assert proc.stderr.strip() == expected
    assert log.read_text().splitlines() == ["step 1", expected]
