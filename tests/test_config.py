"""Which settings a run uses and which configs are refused.

A ``--configfile`` is the whole config (plus schema defaults), never merged with the
embedded demo config; ``qmml check-config --show`` prints what the pipeline runs; bad
values stop with exit status 2 and one line naming the file and the key; the profile
installer never re-points another clone's profile.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qmml import QmmlError
from conftest import NO_SLURM
from qmml.config import merge_config, pipeline_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = ROOT / "config" / "config.yaml"
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
ENV = dict(os.environ, PATH=f"{NO_SLURM}:{BIN}:{os.environ['PATH']}",
           PYTHONPATH=os.pathsep.join([str(ROOT / "src"),
                                       *filter(None, [os.environ.get("PYTHONPATH")])]))


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dry_run(*args: str) -> dict[str, set[str]]:
    """Dislocation cases and defect names of the jobs a dry run from the repository root
    plans (from the jobs' wildcards) and its number of retraining jobs."""
    proc = run([str(BIN / "snakemake"), "-n", *args], cwd=ROOT)
    text = proc.stdout + proc.stderr
    return {"cases": set(re.findall(r"wildcards:.*\bcase=(\w+)", text)),
            "defects": set(re.findall(r"wildcards:.*\bname=(\w+)", text)),
            "retrain_jobs": {int(n) for n in re.findall(r"^retrain\s+(\d+)$", text, re.M)}}


def written_engine_config(tmp_path: Path, *args: str, overrides: tuple[str, ...] = (),
                          name: str = "engine.yaml") -> dict:
    """The engine config the workflow writes (or, with ``name`` config.yaml, the settings
    of the run): its one light job, run for real from the repository root (as users do),
    with the results folder moved to ``tmp_path``."""
    target = f"{tmp_path}/{name}"
    # the target first: --configfile and --config take every argument after them
    run([str(BIN / "snakemake"), target, "--cores", "1", *args,
         "--config", f"results={tmp_path}", *overrides], cwd=ROOT)
    return yaml.safe_load(Path(target).read_text())


# ---- what a run uses -------------------------------------------------------------------
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_its_own_settings_only(example, tmp_path):
    """An example config runs its dislocations and defects and its QM settings, nothing of
    the demo config (its `edge` case, tblite's method/electronic_temperature)."""
    user = yaml.safe_load(example.read_text())
    relative = str(example.relative_to(ROOT))
    planned = dry_run("--configfile", relative)
    assert planned["cases"] == set(user["dislocations"])
    assert planned["defects"] == set(user.get("defects", {}))
    engine = written_engine_config(tmp_path, "--configfile", relative)
    assert engine == user["qm"]
    # what check-config --show prints is what the pipeline runs
    shown = yaml.safe_load(run([sys.executable, "-m", "qmml.cli", "check-config", relative,
                                "--show"], cwd=ROOT).stdout)
    assert shown == pipeline_config([example])
    assert shown["qm"] == engine and set(shown["dislocations"]) == planned["cases"]
    for section in ("qmml", "three_d", "elastic"):
        assert shown[section].items() >= user[section].items()


def test_no_configfile_runs_the_embedded_demo(tmp_path):
    demo = yaml.safe_load(DEMO.read_text())
    planned = dry_run()
    assert planned["cases"] == set(demo["dislocations"]) == {"screw", "edge"}
    assert planned["defects"] == set(demo["defects"])
    assert planned["retrain_jobs"] == {demo["iterations"]}
    assert written_engine_config(tmp_path) == demo["qm"]


def test_command_line_config_overrides_keys(tmp_path):
    """--config KEY=VALUE alone overrides the demo's key; a qm naming another engine
    replaces the whole qm section of the user's file."""
    overrides = ("iterations=3", "qmml={fmax: 0.02}")
    planned = dry_run("--config", *overrides)
    assert planned["retrain_jobs"] == {3}
    assert planned["cases"] == {"screw", "edge"}
    # a nested value is a number as in a config file (Snakemake hands it over as '0.02'),
    # and the demo's other keys stay
    settings = written_engine_config(tmp_path / "run", overrides=overrides, name="config.yaml")
    assert settings["iterations"] == 3 and settings["qmml"]["fmax"] == 0.02
    assert settings["qmml"]["buffer"] == 5.0 and settings["three_d"]["buffer"] == 4.7
    assert settings == pipeline_config([DEMO], {"iterations": 3, "qmml": {"fmax": 0.02},
                                                "results": str(tmp_path / "run")})
    vasp = ROOT / "config" / "examples" / "vasp.yaml"
    engine = written_engine_config(tmp_path, "--configfile", str(vasp.relative_to(ROOT)),
                                   overrides=("qm={engine: reference}",))
    assert engine == {"engine": "reference"}


def test_merge_rules():
    base = {"qm": {"engine": "vasp", "encut": 550.0, "command": "srun vasp_std"},
            "qmml": {"fmax": 0.01, "buffer": 12.0}}
    same_engine = merge_config(base, {"qm": {"command": "srun -n 128 vasp_std"},
                                      "qmml": {"fmax": 0.02}})
    assert same_engine["qm"] == {"engine": "vasp", "encut": 550.0,
                                 "command": "srun -n 128 vasp_std"}
    assert same_engine["qmml"] == {"fmax": 0.02, "buffer": 12.0}
    other_engine = merge_config(base, {"qm": {"engine": "tblite", "kpts_line": 1}})
    assert other_engine["qm"] == {"engine": "tblite", "kpts_line": 1}
    assert base["qm"]["encut"] == 550.0  # inputs untouched


def test_missing_keys_get_schema_defaults_not_demo_values(tmp_path):
    cfg = tmp_path / "minimal.yaml"
    cfg.write_text("qm: {engine: reference}\ndislocations:\n  s: {kind: screw111, radius: 20}\n")
    settings = pipeline_config([cfg])
    assert settings["qm"] == {"engine": "reference"}
    assert settings["dislocations"] == {"s": {"kind": "screw111", "radius": 20,
                                              "fixed_width": 10.0, "glide_images": 0}}
    assert settings["qmml"]["buffer"] == 12.0 and settings["qmml"]["qm_radius"] == 6.0
    assert settings["defects"] == {} and settings["iterations"] == 1


# ---- refused configs -------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("dislocations:\n  s: {kind: screw111}\n", "key 'dislocations.s.radius': required key missing"),
    ("qmml: {fmax: .nan}\n", "key 'qmml.fmax': nan is not a finite number"),
    ("qm: {engine: tblite, electronic_temperature: .inf}\n",
     "key 'qm.electronic_temperature': inf is not a finite number"),
    ("constraints: {md_temperatures: [300, -.inf]}\n",
     "key 'constraints.md_temperatures.1': -inf is not a finite number"),
    ("qmml: {buffer: 4.69}\n",
     "key 'qmml.buffer': 4.69 Å is narrower than the ML cutoff 4.7 Å of start_potential"),
    ("three_d: {buffer: 3.0}\n",
     "key 'three_d.buffer': 3 Å is narrower than the ML cutoff 4.7 Å of start_potential"),
    ("dislocations:\n  s: {kind: screw111, radius: 30}\n"
     "defects:\n  he: {defect: He_tet, dislocation: s, distances: [0.0]}\n"
     "three_d: {qm_radius: 4.0}\n",
     "key 'three_d.qm_radius': 4 Å is smaller than the ML cutoff 4.7 Å"),
    ("start_potential: nowhere/W\n",
     "key 'start_potential': nowhere/W.snapcoeff: potential file not found"),
    ("", "file is empty"),
    ("# settings to come\n", "file is empty"),
], ids=["no-radius", "nan", "inf-engine", "inf-list", "buffer", "buffer-3d", "he-qm-radius",
        "potential", "empty", "comments-only"])
def test_check_config_refuses_with_one_line(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = run([sys.executable, "-m", "qmml.cli", "check-config", str(bad)], cwd=tmp_path,
               check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and proc.stdout == ""
    assert f"{bad}: " in lines[0] and message in lines[0]


def test_buffer_equal_to_the_cutoff_passes(tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("qmml: {buffer: 4.7}\nthree_d: {buffer: 4.7}\n")
    assert pipeline_config([cfg])["qmml"]["buffer"] == 4.7
    cfg.write_text("qmml: {buffer: 4.7}\nthree_d: {buffer: 4.6999}\n")
    with pytest.raises(QmmlError, match="three_d.buffer"):
        pipeline_config([cfg])


def test_snakemake_refuses_a_bad_configfile_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("qmml: {fmax: .nan}\n")
    proc = run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory",
                str(tmp_path), "-n", "--configfile", str(bad)], cwd=ROOT, check=False)
    assert proc.returncode != 0
    assert f"{bad}: key 'qmml.fmax': nan is not a finite number" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


# ---- profile installation --------------------------------------------------------------
def install_profile(xdg: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ROOT / "scripts" / "install-profile.sh")],
                          capture_output=True, text=True,
                          env=dict(os.environ, XDG_CONFIG_HOME=str(xdg)))


def test_install_profile_never_repoints_another_profile(tmp_path):
    ours = (ROOT / "profiles" / "slurm").resolve()
    link = tmp_path / "snakemake" / "slurm"
    first = install_profile(tmp_path)
    assert first.returncode == 0 and link.resolve() == ours
    again = install_profile(tmp_path)
    assert again.returncode == 0 and "already installed" in again.stdout
    # another clone's profile stays, and the message says where it points
    other = tmp_path / "other_clone" / "profiles" / "slurm"
    other.mkdir(parents=True)
    link.unlink()
    link.symlink_to(other)
    kept = install_profile(tmp_path)
    assert kept.returncode == 0 and link.resolve() == other.resolve()
    assert f"exists and is left as it is: {link} -> {other}" in kept.stderr
    assert f"--profile {ours}" in kept.stderr
    # a dangling link (its clone was removed) is replaced, naming what it pointed to
    other.rmdir()
    replaced = install_profile(tmp_path)
    assert replaced.returncode == 0 and link.resolve() == ours
    assert f"replaced dangling link {link} -> {other}" in replaced.stdout
    # the user's own profile directory is never touched
    link.unlink()
    link.mkdir()
    (link / "profile.yaml").write_text("executor: local\n")
    own = install_profile(tmp_path)
    assert own.returncode == 0 and not link.is_symlink()
    assert (link / "profile.yaml").read_text() == "executor: local\n"
    assert "(not a link)" in own.stderr
