"""The documentation is true: docs/cli.md runs as written, docs/configuration.md matches
the schema, and the user-facing docs carry no development history."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ase.io import read

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
USER_DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
# options whose value is a file or folder the command creates
OUTPUT_OPTIONS = ("output", "report", "summary", "strain", "neb", "md", "qm-frames",
                  "cache", "descriptor-cache")
STAND_IN = "reference (classical stand-in, not QM)"


def _schema_docs():
    spec = importlib.util.spec_from_file_location("schema_docs", ROOT / "scripts" / "schema-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def named_outputs(block: str) -> set[str]:
    """Files and folders the block's commands name as outputs (after expanding the
    ``for`` loops of cli.md by hand would be fragile: loop outputs are listed in the test)."""
    joined = block.replace("\\\n", " ")
    names = set()
    for option, value in re.findall(r"--(" + "|".join(OUTPUT_OPTIONS) + r")\s+(\S+)", joined):
        if "$" not in value:
            names.add(value)
    names.update(v for v in re.findall(r">\s*([\w.]+)", joined) if "$" not in v)
    return names


def _exists(workdir: Path, name: str) -> bool:
    path = workdir / name
    if path.exists():
        return True
    # a potential prefix P names P.snapcoeff + P.snapparam
    return not path.suffix and all((workdir / f"{name}.{ext}").is_file()
                                   for ext in ("snapcoeff", "snapparam"))


def _tool_dir(tmp: Path) -> Path:
    """`qmml` = `python -m qmml.cli` and `python` = this interpreter, first on PATH."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, body in (("qmml", f'exec "{sys.executable}" -m qmml.cli "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


@pytest.mark.slow
def test_cli_walkthrough_runs_as_written(tmp_path):
    blocks = sh_blocks(CLI_DOC.read_text())
    assert len(blocks) >= 10, "docs/cli.md lost its ```sh blocks"
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ)
    env["PATH"] = f"{_tool_dir(tmp_path)}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for number, block in enumerate(blocks, 1):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"docs/cli.md sh block {number} exited {done.returncode}:\n{block}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
        missing = [n for n in named_outputs(block) if not _exists(work, n)]
        assert not missing, f"sh block {number} did not write {missing}"
    # outputs named inside the for loops
    for name in ("glide_initial_relaxed.xyz", "glide_final_relaxed.xyz", "vacancy_near.xyz",
                 "vacancy_far.xyz", "vacancy_near_relaxed.xyz", "vacancy_far_relaxed.xyz"):
        assert (work / name).is_file(), name

    # Θ0: a0 and Cij are hard constraints, met to machine precision
    theta0 = json.loads((work / "theta0.json").read_text())
    assert theta0["targets"] == {"a0": 3.172, "C11": 523.0, "C12": 204.0, "C44": 160.0}
    assert theta0["hard_residual_max"] < 1e-9
    # the built cylinder carries Θ0's elastic constants and the requested regions
    screw = read(work / "screw.xyz")
    assert abs(screw.info["a0"] - 3.172) < 1e-9 and abs(screw.info["C44"] - 160.0) < 1e-6
    regions = list(screw.arrays["region"])
    assert regions.count("QM") > 0 and regions.count("buffer") > 0

    relaxed = read(work / "screw_relaxed.xyz")
    assert relaxed.info["converged"] and relaxed.info["fmax"] <= 0.05
    assert relaxed.info["qm_engine"] == STAND_IN       # labelled: not QM

    neb = read(work / "glide_neb.xyz", ":")
    assert len(neb) == 5
    barrier = neb[-1].info["neb_barrier_virtual_work"]
    assert barrier == pytest.approx(max(im.info["neb_energy_virtual_work"] for im in neb),
                             abs=1e-9)
    assert 0 < barrier < 1.0  # eV: a glide barrier of a screw, not an unphysical path

    # retraining lowers the QM-atom force error and keeps the hard sets exact
    targets = json.loads((work / "targets.json").read_text())
    report = json.loads((work / "theta1.json").read_text())
    assert report["qm_force_rmse_before"] == pytest.approx(targets["qm_force_rmse"], rel=1e-9)
    assert report["qm_force_rmse_after"] < 0.5 * report["qm_force_rmse_before"]
    assert report["hard_residual_max"] < 1e-9
    assert "hard set" in report["descriptor_cache"]["read"]  # stored by the accelerated relax

    first = read(work / "screw_accel.xyz")
    seeded = read(work / "screw_accel_theta1.xyz")
    assert first.info["converged"] and seeded.info["converged"]
    assert seeded.info["n_qm_real_calls"] < first.info["n_qm_real_calls"]
    assert len(read(work / "screw_accel.qm_frames.xyz", ":")) == first.info["n_qm_real_calls"]

    path = read(work / "vacancy_binding.xyz", ":")
    assert len(path) == 5
    assert path[0].info["engine"] == STAND_IN
    assert path[0].info["path_max_step"] < 3.0   # one lattice hop, not a long jump

    # retraining fitted the glide path's energies too; validation rows of Θ1
    (glide,) = report["paths"]
    assert glide["images"] == 5 and report["lambda_path"] == 1000.0
    validation = {(row["property"], row["case"]): row
                  for row in csv.DictReader(open(work / "validation.csv"))}
    assert float(validation["a0", "bulk"]["reference"]) == 3.172
    assert abs(float(validation["a0", "bulk"]["error"])) < 1e-6   # hard constraint
    assert float(validation["peierls_barrier", "screw"]["reference"]) == pytest.approx(
        barrier, abs=1e-9)
    assert validation["screw_core", "screw"]["value"] in ("easy", "hard", "split")
    profile = json.loads((work / "ml_neb_profiles.json").read_text())["screw"]
    assert len(profile["energy"]) == 5 and profile["energy"][0] == 0.0
    assert float(validation["peierls_barrier", "screw"]["value"]) == pytest.approx(
        max(profile["energy"]), abs=1e-9)

    full = yaml.safe_load((work / "my_full.yaml").read_text())
    assert full["qmml"]["fmax"] == 0.01 and full["retrain"]["lambda0"] == 500.0


def test_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("qmml: {fmax: -1}\n")
    done = subprocess.run([sys.executable, "-m", "qmml.cli", "check-config", str(bad)],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "qmml.fmax" in done.stderr


def test_configuration_reference_is_generated_from_schema():
    schema_docs = _schema_docs()
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == schema_docs.render(schema), (
        "docs/configuration.md is out of date: run python scripts/schema-docs.py")

    def paths(spec, prefix):
        for key, sub in spec.get("properties", {}).items():
            yield f"{prefix}{key}"
            yield from paths(sub, f"{prefix}{key}.")
        extra = spec.get("additionalProperties")
        if isinstance(extra, dict):
            yield from paths(extra, f"{prefix}<name>.")

    every = list(paths(schema, ""))
    assert len(every) > 40
    for path in every:
        assert f"`{path}`" in committed, path


def test_render_shows_types_defaults_and_required():
    render = _schema_docs().render
    text = render({"properties": {"section": {
        "type": "object", "required": ["must"], "description": "A section.",
        "properties": {
            "must": {"type": "string", "enum": ["a", "b"], "description": "Needed."},
            "x": {"type": "number", "exclusiveMinimum": 0, "default": 2.5,
                  "description": "An x | with a bar."},
            "ab": {"oneOf": [{"type": "number"}, {"const": "qm"}], "default": "qm"}}}}})
    assert "| `section.must` | one of `a`, `b` | — | **Required.** Needed. |" in text
    assert "| `section.x` | number, > 0 | `2.5` | An x \\| with a bar. |" in text
    assert "| `section.ab` | number or `qm` | `qm` |" in text


def test_docs_carry_no_development_history():
    pattern = re.compile(r"session [0-9]|issue [0-9]|\bwas [0-9.]+.*\bnow\b", re.I)
    for path in USER_DOCS:
        assert path.is_file(), path
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(ROOT)}:{number}: {line}"


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    text = "\n".join(lines)
    for needed in ("make demo", "make test", "--profile slurm", "scripts/install-profile.sh",
                   "check-config", "pair_style snap", "118734", "data/README.md"):
        assert needed in text, needed
    for doc in ("method.md", "configuration.md", "cli.md", "engines.md", "performance.md",
                "design.md"):
        assert f"docs/{doc}" in text and (ROOT / "docs" / doc).is_file(), doc
