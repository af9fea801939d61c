"""qmml.steps: the one entry per pipeline step, called alike by `qmml <cmd>` and the
workflow scripts (same defaults both ways; unconverged runs fail unless allowed)."""
from __future__ import annotations

import argparse
import inspect

import pytest
from ase.io import read

from qmml import QmmlError, potential_path
from qmml import steps
from qmml.cli import command_module

MILADY_ELASTIC = {"a0": 3.18551, "C11": 513.1, "C12": 201.0, "C44": 144.9}


def cli_defaults(command: str) -> dict:
    parser = argparse.ArgumentParser()
    command_module(command).configure(parser)
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def step_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("command, function, renamed", [
    ("relax", steps.relax_file, {}),
    ("neb", steps.neb_file, {}),
    ("retrain", steps.retrain_file, {}),
    ("fit-elastic", steps.fit_elastic_file, {}),
    ("constraints", steps.constraint_sets_file, {"temperatures": "md_temperatures"}),
    ("binding", steps.binding_path_file, {}),
])
def test_cli_and_step_defaults_agree(command, function, renamed):
    cli, step = cli_defaults(command), step_defaults(function)
    shared = {renamed.get(k, k): v for k, v in cli.items()
              if renamed.get(k, k) in step and v is not None and not isinstance(v, bool)}
    assert len(shared) >= 2, (cli, step)  # the comparison compares something
    for key, value in shared.items():
        expected = step[key]
        if isinstance(value, list):
            value, expected = tuple(value), tuple(expected)
        assert value == expected, (command, key, value, expected)


@pytest.fixture
def screw(tmp_path):
    from qmml.build import default_settings

    path = tmp_path / "screw.xyz"
    summary = steps.build_file(default_settings(kind="screw111", radius=14.0, fixed_width=4.0,
                                                qm_radius=3.0, buffer=5.0, **MILADY_ELASTIC),
                               path)
    assert summary["frames"] == 1 and summary["QM"] > 0
    return path


def test_relax_file_unconverged_writes_output_then_fails(screw, tmp_path):
    lines = []
    kwargs = dict(optimizer="FIRE", fmax=0.01, buffer=5.0, steps=1, log=lines.append)
    with pytest.raises(steps.NotConverged, match=r"a\.xyz: relaxation NOT converged"):
        steps.relax_file(screw, tmp_path / "a.xyz", potential_path("W_milady_lml"),
                         {"engine": "reference"}, tmp_path / "cache", **kwargs)
    frame = read(tmp_path / "a.xyz")  # written before the failure: nothing computed is lost
    assert frame.info["fmax"] > frame.info["fmax_target"] == 0.01
    assert any(line.startswith("relax: NOT converged") for line in lines)
    # the same run allowed to end unconverged: QM calls all from the cache, no error
    stats = steps.relax_file(screw, tmp_path / "b.xyz", potential_path("W_milady_lml"),
                             {"engine": "reference"}, tmp_path / "cache",
                             require_convergence=False, **kwargs)
    assert not stats.converged and stats.n_qm_real_calls == 0 and stats.n_qm_calls > 0


def test_log_file_records_the_error_that_ends_a_step(tmp_path):
    log_path = tmp_path / "logs" / "step.log"
    with pytest.raises(QmmlError):
        with steps.log_file(log_path) as log:
            log("started")
            steps.read_elastic(tmp_path / "missing.json")
    text = log_path.read_text().splitlines()
    assert text[0] == "started" and text[1].startswith("error: ")
    assert "missing.json" in text[1]


def test_build_with_given_elastic_constants_measures_nothing(tmp_path):
    """The workflow passes the iteration's elastic.json: the built structure carries those
    numbers exactly (a measurement would give a0 to ~1e-10 Å, not the file's digits)."""
    import json

    elastic = tmp_path / "elastic.json"
    elastic.write_text(json.dumps(MILADY_ELASTIC))
    summary = steps.build_dislocation_file(
        {"kind": "screw111", "radius": 14.0, "fixed_width": 4.0, "glide_images": 0},
        {"qm_radius": 3.0, "buffer": 5.0}, potential_path("W_milady_lml"), elastic,
        "initial", tmp_path / "s.xyz")
    assert {k: summary[k] for k in MILADY_ELASTIC} == MILADY_ELASTIC
    assert read(tmp_path / "s.xyz").info["a0"] == MILADY_ELASTIC["a0"]
