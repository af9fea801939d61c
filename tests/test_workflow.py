"""The Snakemake pipeline: DAGs of every shipped config, bad configs, and one end-to-end run
of a tiny config (classical stand-in QM, accelerated optimiser, 2 iterations) that the
end-to-end tests share, the partial rerun last."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read

from conftest import NO_SLURM
from qmml.figures import FIGURES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml")),
           ROOT / "tests" / "data" / "tiny.yaml"]


def snakemake(workdir: Path, configfile: Path, *args: str, check: bool = True):
    env = dict(os.environ, PATH=f"{NO_SLURM}:{BIN}:{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dry_run_jobs(proc) -> list[dict]:
    """Rule, input and output files of every job a dry run lists."""
    jobs = []
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("rule", "localrule") and parts[1].endswith(":"):
            jobs.append({"rule": parts[1][:-1], "input": [], "output": []})
        elif jobs and line.startswith("    ") and parts and parts[0] in ("input:", "output:"):
            jobs[-1][parts[0][:-1]] = [p.rstrip(",") for p in parts[1:]]
        elif jobs and line.startswith("    ") and parts and parts[0] == "priority:":
            jobs[-1]["priority"] = int(parts[1])
    return jobs


def planned_jobs(proc) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    jobs, table = {}, False
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
            continue
        if table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.name)
def test_dry_run_builds_full_dag(configfile, tmp_path):
    import yaml

    cfg = yaml.safe_load(configfile.read_text())
    jobs = planned_jobs(snakemake(tmp_path, configfile, "-n"))
    n_iter = cfg.get("iterations", 1)
    n_cases = len(cfg["dislocations"])
    glide = sum(1 for d in cfg["dislocations"].values() if d.get("glide_images", 0))
    n_points = sum(len(d["distances"]) for d in cfg.get("defects", {}).values())
    assert jobs["fit_elastic"] == 1 and jobs["qm_bulk_reference"] == 1
    assert jobs["retrain"] == n_iter
    # the accelerated optimiser also uses the last iteration's sets (its hard rows), which
    # no retraining turns into descriptors
    accelerated = cfg.get("qmml", {}).get("optimizer") == "accelerated"
    assert jobs["constraint_sets"] - jobs["constraint_descriptors"] == int(accelerated)
    assert jobs["qmml_relax"] == n_iter * (n_cases + glide)
    assert jobs.get("qmml_neb", 0) == n_iter * glide
    iters_3d = n_iter + 1 if cfg.get("retrain", {}).get("use_3d") else 1
    assert jobs.get("qmml_3d_defect", 0) == iters_3d * n_points
    assert all(jobs[f"figure_{name}"] == 1 for name in FIGURES) and jobs["report"] == 1
    # every potential (0..N) is validated; the QM vacancy reference is computed once
    assert jobs["validate"] == n_iter + 1 and jobs["qm_vacancy_reference"] == 1
    assert jobs["validation_figure"] == 1
    assert not (tmp_path / "results").exists()  # a dry run computes nothing


def test_dry_run_validation_and_path_targets(tmp_path):
    """Each iteration's retraining reads its glide NEB as a path target; validate i reads
    potential i, the QM/ML runs of iteration min(i, N-1) and the held-out frames of the
    iterations before and at i."""
    tiny = (ROOT / "tests" / "data" / "tiny.yaml").read_text()
    config = tmp_path / "glide.yaml"
    config.write_text(tiny.replace("fixed_width: 5.0}", "fixed_width: 5.0, glide_images: 5}", 1))
    jobs = dry_run_jobs(snakemake(tmp_path, config, "-n"))
    retrain = {job["output"][0]: job["input"] for job in jobs if job["rule"] == "retrain"}
    for j in (1, 2):
        assert f"results/iter_{j - 1}/qmml/screw_neb.xyz" in \
            retrain[f"results/iter_{j}/potential.snapcoeff"]
    validate = {job["output"][0]: job["input"] for job in jobs if job["rule"] == "validate"}
    assert sorted(validate) == [f"results/iter_{i}/validation.csv" for i in range(3)]
    for i, k, held in ((0, 0, [0]), (1, 1, [0, 1]), (2, 1, [1])):
        inputs = validate[f"results/iter_{i}/validation.csv"]
        assert f"results/iter_{i}/potential.snapcoeff" in inputs
        assert f"results/iter_{k}/qmml/screw_neb.xyz" in inputs
        assert f"results/iter_{k}/qmml/screw_initial.xyz" in inputs
        assert "results/qm_bulk/vacancy.json" in inputs
        assert sorted(f for f in inputs if f.endswith("heldout.xyz")) == \
            [f"results/iter_{m}/heldout.xyz" for m in held]
    # the glide case's structures, relaxations and NEB (the longest chain) go first; the
    # 3D defects wait for the retraining anyway
    firsts = {(job["rule"], job["output"][0].split("/")[-1]) for job in jobs
              if job.get("priority", 0) > 0}
    assert firsts == {(rule, f"screw_{name}.xyz") for rule, name in (
        ("build_dislocation", "initial"), ("build_dislocation", "final"),
        ("qmml_relax", "initial"), ("qmml_relax", "final"), ("qmml_neb", "neb"))}
    assert sum(1 for job in jobs if job.get("priority")) == 10  # both iterations
    # the glide figure draws the ML-only NEBs the validation of Θ0 and of the last
    # potential ran, and waits for nothing else but the QM/ML NEBs
    (glide,) = [job for job in jobs if job["rule"] == "figure_glide_barriers"]
    assert sorted(glide["input"]) == [
        "results/iter_0/ml_neb_profiles.json", "results/iter_0/qmml/screw_neb.xyz",
        "results/iter_1/qmml/screw_neb.xyz", "results/iter_2/ml_neb_profiles.json"]


@pytest.mark.parametrize("use_3d", [False, True])
def test_accelerated_runs_are_seeded_by_the_previous_iteration(tmp_path, use_3d):
    """With the accelerated optimiser each relaxation from iteration 1 on gets the previous
    iteration's QM points of the same structure (seed_frames); the 3D ones only when
    retraining uses the 3D runs (otherwise earlier iterations do not run them): seeding
    adds no job."""
    tiny = (ROOT / "tests" / "data" / "tiny.yaml").read_text()
    config = tmp_path / "accelerated.yaml"
    assert "optimizer: accelerated" in tiny
    config.write_text(tiny.replace("use_3d: false", f"use_3d: {str(use_3d).lower()}"))
    proc = snakemake(tmp_path, config, "-n")
    jobs = planned_jobs(proc)
    assert jobs["qmml_relax"] == 2 and jobs["qmml_3d_defect"] == (6 if use_3d else 2)
    runs = [job for job in dry_run_jobs(proc) if job["rule"] in ("qmml_relax", "qmml_3d_defect")]
    assert len(runs) == jobs["qmml_relax"] + jobs["qmml_3d_defect"]
    # seed_frames of the relaxation: the .qm_frames.xyz inputs
    seeded = {next(o for o in job["output"] if not o.endswith(".qm_frames.xyz")): seed
              for job in runs for seed in job["input"] if seed.endswith(".qm_frames.xyz")}
    expected = {"results/iter_1/qmml/screw_initial.xyz":
                "results/iter_0/qmml/screw_initial.qm_frames.xyz"}
    if use_3d:
        expected.update({f"results/iter_{i}/3d/vac_{k}.xyz":
                         f"results/iter_{i - 1}/3d/vac_{k}.qm_frames.xyz"
                         for i in (1, 2) for k in (0, 1)})
    assert seeded == expected


@pytest.mark.parametrize("bad, message", [
    ("qmml:\n  fmax: -1\n", "key 'qmml.fmax': -1 is less than or equal to the minimum of 0"),
    ("qmml:\n  fmx: 0.1\n", "key 'qmml.fmx': unknown key"),
    ("dislocations:\n  s: {kind: spiral}\n", "key 'dislocations.s.kind'"),
    ("defects:\n  v: {defect: vacancy, dislocation: nope, distances: [1]}\n",
     "'nope' is not a configured dislocation"),
])
def test_bad_config_stops_before_anything_runs(tmp_path, bad, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(bad)
    proc = snakemake(tmp_path, cfg, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def _qm_cache_entries(results: Path) -> int:
    return sum(1 for _ in (results / "qm_cache").rglob("*.npz")) + \
        sum(1 for _ in (results / "qm_cache").rglob("bulk/*.json"))


# One run of the tiny pipeline serves the end-to-end tests below (one work unit, see
# conftest.SHARED; in file order: the partial rerun, which changes the run, comes last).


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny config run to its report: 2 iterations, accelerated optimiser."""
    work = tmp_path_factory.mktemp("tiny_pipeline")
    snakemake(work, ROOT / "tests" / "data" / "tiny.yaml")
    return work


@pytest.mark.slow
def test_end_to_end_potentials_figures_and_validation(tiny_run):
    res = tiny_run / "results"
    # iteration-1 retrained potential exists and keeps the elastic constants of Θ0
    assert (res / "iter_1" / "potential.snapcoeff").is_file()
    e0 = json.loads((res / "iter_0" / "elastic.json").read_text())
    e1 = json.loads((res / "iter_1" / "elastic.json").read_text())
    for key in ("a0", "C11", "C12", "C44"):
        assert abs(e1[key] / e0[key] - 1) < 1e-6, (key, e0[key], e1[key])
    # the retraining read the constraint sets' descriptors that constraint_descriptors cached
    for j in (1, 2):
        cached = json.loads((res / f"iter_{j}" / "retrain.json").read_text())["descriptor_cache"]
        assert cached == {"read": ["soft", "hard set"], "computed": ["targets"]}, cached
    # the QM-atom force error of the iteration's potential drops from iteration 0 to 1
    err = [json.loads((res / f"iter_{i}" / "targets.json").read_text())["qm_force_rmse"]
           for i in (0, 1)]
    assert err[1] < err[0] / 2, err
    # one binding-energy row per configured (defect, dislocation, distance)
    table = pd.read_csv(res / "iter_2" / "binding.csv")
    assert len(table) == 2 and set(table["defect"]) == {"vac"}
    assert np.isfinite(table["E_b_qmml"]).all() and np.isfinite(table["E_b_ml"]).all()
    html = (res / "report.html").read_text()
    for name in ("force_parity", "force_rmse", "elastic_constants", "glide_barriers",
                 "dd_maps", "binding_energy"):
        assert (res / "figures" / f"{name}.png").stat().st_size > 5000
    assert html.count("data:image/png;base64,") >= 7
    # every potential validated against the stand-in "QM": elastic rows are elastic.json
    # minus the bulk reference; the vacancy rows compare the same procedure
    reference = json.loads((res / "qm_bulk" / "reference.json").read_text())
    for i in range(3):
        table = pd.read_csv(res / f"iter_{i}" / "validation.csv")
        rows = table.set_index(["property", "case"])
        elastic = json.loads((res / f"iter_{i}" / "elastic.json").read_text())
        for key in ("a0", "C11", "C12", "C44"):
            assert float(rows.loc[(key, "bulk"), "error"]) == pytest.approx(
                elastic[key] - reference[key], abs=1e-9)
        for prop in ("vacancy_formation_energy", "vacancy_migration_barrier"):
            assert np.isfinite(float(rows.loc[(prop, "bulk"), "value"]))
        assert rows.loc[("screw_core", "screw"), "reference"] in ("easy", "hard", "split")
        assert rows.loc[("screw_core", "screw"), "value"] in ("easy", "hard", "split")
    assert (res / "figures" / "validation.png").stat().st_size > 5000
    assert 'id="validation"' in html



@pytest.mark.slow
def test_end_to_end_accelerated_optimizer(tiny_run):
    """The dislocation and both 3D defect relaxations get the iteration's hard sets,
    converge on the true QM/ML forces in a few QM calls, each iteration retrains on their
    frames, iteration 1 starts from iteration 0's cached QM points, and binding energies
    come out."""
    res = tiny_run / "results"
    frames = [res / f"iter_{i}" / "qmml" / "screw_initial.xyz" for i in (0, 1)]
    frames += sorted((res / "iter_2" / "3d").glob("vac_?.xyz"))
    assert len(frames) == 4
    n_qm_points = {}
    for path in frames:
        frame = read(path, format="extxyz")
        assert frame.info["optimizer"] == "accelerated" and frame.info["converged"], path
        # next to it: every QM-called geometry with its true QM/ML forces, ending at it
        points = read(path.with_suffix(".qm_frames.xyz"), index=":", format="extxyz")
        n_qm_points[path.parent.parent.name, path.name] = len(points)
        assert len(points) >= 2 and points[-1].info["qm_point_final"] is True
        np.testing.assert_array_equal(points[-1].positions, frame.positions)
        np.testing.assert_array_equal(points[-1].get_forces(), frame.get_forces())
        assert frame.info["surrogate_hard_residual_max"] <= 1e-9
        # measured: 3 QM calls for the screw in iteration 0, 3 for each 3D vacancy; a
        # surrogate loop that stalls (as one whose steps had to lower the true fmax did on
        # a 3D vacancy: 560 calls) shows as hundreds
        assert frame.info["n_qm_real_calls"] <= 16, (path, frame.info["n_qm_real_calls"])
        free = ~frame.arrays["fix_mask"]
        assert np.linalg.norm(frame.get_forces()[free], axis=1).max() <= 0.02
    # their hard rows went through the descriptor cache the retraining uses
    logs = [res / "logs" / f"iter_{i}" / "qmml_relax_screw_initial.log" for i in (0, 1)]
    logs += (res / "logs" / "iter_2").glob("qmml_3d_defect_*.log")
    assert len(logs) == 4
    for log in logs:
        text = log.read_text()
        assert "hard rows" in text and "the descriptor cache" in text, log
    # retraining fitted every QM-called geometry of the screw relaxation, not its end alone
    for i in (0, 1):
        report = json.loads((res / f"iter_{i + 1}" / "retrain.json").read_text())
        assert report["hard_residual_max"] <= 1e-9
        held = json.loads((res / f"iter_{i}" / "targets.json").read_text())["n_heldout_frames"]
        assert report["n_target_frames"] == n_qm_points[f"iter_{i}", "screw_initial.xyz"] - held
    assert "hard set" in report["descriptor_cache"]["read"]
    # iteration 1 relaxed the same screw with Θ1, seeded with iteration 0's QM points: all
    # replayed from the cache (new QM calls only after them), starting from the best
    earlier = read(res / "iter_0" / "qmml" / "screw_initial.qm_frames.xyz", index=":")
    points = read(res / "iter_1" / "qmml" / "screw_initial.qm_frames.xyz", index=":")
    seeds = [p for p in points if p.info["qm_point_seed"]]
    assert len(seeds) == len(earlier)
    assert [p.info["qm_point_seed"] for p in points[:len(seeds)]] == [True] * len(seeds)
    for seed, old in zip(seeds, earlier):
        np.testing.assert_allclose(seed.positions, old.positions, atol=1e-7)
        qm = seed.arrays["region"] == "QM"  # QM forces do not depend on Θ
        np.testing.assert_allclose(seed.get_forces()[qm], old.get_forces()[qm], atol=1e-6)
    new = len(points) - len(seeds)
    assert read(frames[1]).info["n_qm_real_calls"] == new
    assert f"{len(seeds)} of {len(seeds)} seed QM points replayed" in logs[1].read_text()
    print(f"QM calls of the screw relaxation: iteration 0 {len(earlier)}, iteration 1 {new} "
          f"new after {len(seeds)} seeds")
    # measured: iteration 0 takes 3 QM calls, iteration 1 none: iteration 0's end point is
    # within fmax with Θ1 as well (0.0056 eV/Å against 0.02), so it is the result
    assert new <= 1
    if new == 0:
        best = min(seeds, key=lambda p: p.info["qm_point_fmax"])
        np.testing.assert_array_equal(read(frames[1]).positions, best.positions)
    table = pd.read_csv(res / "iter_2" / "binding.csv")
    assert len(table) == 2 and np.isfinite(table["E_b_qmml"]).all()


@pytest.mark.slow
def test_end_to_end_partial_rerun(tiny_run):
    config = ROOT / "tests" / "data" / "tiny.yaml"
    tmp_path, res = tiny_run, tiny_run / "results"
    # adding an iteration runs only the new one: nothing of iterations 0 and 1 is planned
    more = tmp_path / "three.yaml"
    more.write_text(config.read_text().replace("iterations: 2", "iterations: 3"))
    jobs = planned_jobs(snakemake(tmp_path, more, "-n"))
    assert jobs["retrain"] == 1 and jobs["qmml_relax"] == 1 and jobs["extract_forces"] == 1
    assert "fit_elastic" not in jobs and "qm_bulk_reference" not in jobs

    # rerun after deleting one iteration-1 QM/ML output (named as a target, as the README
    # says): it and everything downstream of it rerun, nothing upstream, and every QM call
    # comes from the cache
    n_cache = _qm_cache_entries(res)
    relaxed = res / "iter_1" / "qmml" / "screw_initial.xyz"
    relaxed.unlink()
    target = str(relaxed.relative_to(tmp_path))
    proc = snakemake(tmp_path, config, "-n", target, "all")
    jobs = planned_jobs(proc)
    assert jobs["qmml_relax"] == 1 and jobs["extract_forces"] == 1 and jobs["retrain"] == 1
    for upstream in ("fit_elastic", "qm_bulk_reference", "build_dislocation"):
        assert upstream not in jobs, jobs
    # the sets of potentials 0 and 1 stay; potential 2 is retrained from the rerun, and the
    # accelerated 3D runs take their hard rows from its sets
    sets = [out for job in dry_run_jobs(proc) if job["rule"] == "constraint_sets"
            for out in job["output"]]
    assert sets and all(out.startswith("results/iter_2/") for out in sets), sets
    assert jobs["report"] == 1
    snakemake(tmp_path, config, target, "all")
    assert relaxed.is_file()
    assert _qm_cache_entries(res) == n_cache
    # the rerun relaxation reproduced its frame from the QM cache bit for bit, so the
    # retraining found even its targets' descriptors in the descriptor cache
    rerun = json.loads((res / "iter_2" / "retrain.json").read_text())["descriptor_cache"]
    assert rerun == {"read": ["soft", "targets", "hard set"], "computed": []}, rerun
    logs = [res / "logs" / "iter_1" / "qmml_relax_screw_initial.log",
            *(res / "logs" / "iter_2").glob("qmml_3d_defect_*.log")]
    for log in logs:
        assert "(new 0," in log.read_text(), log


