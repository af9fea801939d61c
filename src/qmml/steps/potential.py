"""Potential steps: run settings, QM engine config, bulk targets, Θ0, constraint sets,
force extraction, retraining and the elastic check."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from qmml import QmmlError
from qmml.steps.common import Log, PathLike, _say
from qmml.steps.qmml_runs import engine_settings


def run_config_file(config: dict, output: PathLike, log: Log = None) -> None:
    """The settings the pipeline runs (the validated config with every default filled in,
    as ``qmml check-config --show`` prints them), kept with the results."""
    import yaml

    from qmml.io import write_text

    write_text(output, yaml.safe_dump(config, sort_keys=False))
    _say(log, f"settings of this run: {output}")


def engine_config_file(qm: dict, output: PathLike, log: Log = None) -> dict:
    """The QM engine config (config key ``qm``) as the YAML engine-config file every QM
    step reads; an unknown engine or a missing key fails here, before any QM work."""
    import yaml

    from qmml.engines import engine_label, resolved_settings
    from qmml.io import write_text

    qm = dict(qm)
    resolved_settings(qm)
    write_text(output, yaml.safe_dump(qm, sort_keys=True))
    _say(log, f"QM engine: {engine_label(qm)}")
    return qm


def qm_bulk_reference_file(elastic: dict, engine_config: dict | PathLike, cache: PathLike,
                           output: PathLike, log: Log = None) -> dict:
    """Targets of the elastic fit (a0, C11, C12, C44; config ``elastic`` section): numbers
    from the config, "qm" ones measured with the QM engine (cached); JSON ``output``."""
    from qmml.bulk import qm_bulk_reference
    from qmml.checks import writable, writable_dir
    from qmml.io import write_json

    writable(output)
    writable_dir(Path(cache) / "bulk", "QM cache folder")
    ref = qm_bulk_reference(elastic, engine_settings(engine_config, output), cache,
                            log=log)
    write_json(output, ref)
    _say(log, json.dumps(ref, indent=2))
    return ref


def fit_elastic_file(potential: PathLike, output: PathLike, targets: dict | PathLike,
                     soft: Sequence[PathLike] | None = None, *, lambda0: float = 1.0,
                     lambda_soft: float = 1.0, md_temperatures=(300.0, 1000.0, 3000.0),
                     md_steps: int = 200, md_cells: int = 5, report: PathLike | None = None,
                     log: Log = None) -> dict:
    """Θ0: ``potential`` refitted to ``targets`` (a0, C11, C12, C44, or the
    :func:`qm_bulk_reference_file` JSON that holds them; hard rows exact),
    keeping the forces of ``soft`` configurations (extxyz files; default: NVE MD snapshots
    of the starting potential with ``md_*``) approximately.  Writes the potential prefix
    ``output`` and the JSON ``report``; returns the report."""
    from qmml.checks import nonnegative, positive, positive_int, potential_outputs, writable
    from qmml.elastic import fit_elastic
    from qmml.io import read_frames, write_json
    from qmml.potential import SNAPPotential, resolve_prefix

    start = time.perf_counter()
    if not isinstance(targets, dict):
        from qmml.bulk import read_targets

        targets = read_targets(targets)
    source = "targets" if isinstance(targets, dict) else targets
    t = {k: positive(f"{source}: {k}", targets[k]) for k in ("a0", "C11", "C12", "C44")}
    nonnegative("lambda0", lambda0)
    nonnegative("lambda_soft", lambda_soft)
    positive_int("md_steps", md_steps)
    positive_int("md_cells", md_cells)
    writable(*potential_outputs(output), report)
    pot = SNAPPotential.read(potential)
    if soft is None:
        from qmml.constraints import lattice_constant, md_snapshots

        _say(log, f"fit-elastic: NVE MD soft set with the starting potential "
             f"({len(md_temperatures)} temperatures × {md_steps} steps, {md_cells}³ cells)")
        a0_md, soft_set = lattice_constant(pot), []
        for k, temperature in enumerate(md_temperatures):  # md_snapshots' seeds, one by one
            soft_set += md_snapshots(pot, temperatures=[temperature], n_steps=md_steps,
                                     n_cells=md_cells, a0=a0_md, seed=20231 + 7919 * k)
            _say(log, f"fit-elastic: MD at {temperature:g} K done "
                 f"({time.perf_counter() - start:.1f} s)")
    else:
        soft_set = [a for f in soft for a in read_frames(f)]
    _say(log, f"fit-elastic: {len(soft_set)} soft configurations "
         f"({time.perf_counter() - start:.1f} s); elastic rows and constrained solve")
    fitted, result = fit_elastic(pot, t["a0"], t["C11"], t["C12"], t["C44"], soft_set,
                                 lambda0, lambda_soft)
    fitted.write(output, comment=f"qmml fit-elastic from {potential}: a0={t['a0']} "
                 f"C11={t['C11']} C12={t['C12']} C44={t['C44']} GPa")
    summary = {"start": str(resolve_prefix(potential)), "targets": t,
               "hard_residual_max": result.hard_residual_max, "hard_rank": result.hard_rank,
               "n_soft_configurations": len(soft_set), **result.diagnostics,
               "seconds": time.perf_counter() - start}
    if report:
        write_json(report, summary)
    _say(log, json.dumps(summary))
    return summary


def constraint_sets_file(potential: PathLike, *, strain: PathLike | None = None,
                         neb: PathLike | None = None, md: PathLike | None = None,
                         a0: float | None = None, strain_cells: int = 5, n_strains: int = 17,
                         max_strain: float = 0.01, neb_cells: int = 5, neb_images: int = 13,
                         neb_fmax: float = 0.01, md_temperatures=(300.0, 1000.0, 3000.0),
                         md_steps: int = 200, md_snapshots: int = 10, md_cells: int = 5,
                         seed: int = 20231, log: Log = None) -> dict:
    """Hard (``strain``: strained cells, ``neb``: vacancy-migration images) and soft
    (``md``: NVE MD snapshots) constraint sets of ``potential`` as extxyz files (each
    written only when its path is given).  ``a0`` defaults to the potential's own
    zero-pressure lattice constant.  Returns a summary."""
    import math

    from qmml import constraints as C
    from qmml.checks import positive, positive_int, writable
    from qmml.potential import SNAPPotential

    if not (strain or neb or md):
        raise QmmlError("nothing to do: give at least one of --strain, --neb, --md")
    bad = [t for t in md_temperatures if not (t > 0 and math.isfinite(t))]
    if bad:
        raise QmmlError(f"--temperatures: must be positive, got {bad[0]:g} K")
    if a0 is not None and not a0 > 0:
        raise QmmlError(f"--a0: must be positive, got {a0:g} Å")
    for name, value in (("strain_cells", strain_cells), ("n_strains", n_strains),
                        ("neb_cells", neb_cells), ("neb_images", neb_images),
                        ("md_steps", md_steps), ("md_snapshots", md_snapshots),
                        ("md_cells", md_cells)):
        positive_int(name, value)
    positive("max_strain", max_strain)
    positive("neb_fmax", neb_fmax)
    writable(strain, neb, md)
    pot = SNAPPotential.read(potential)
    t0 = time.perf_counter()
    summary = {}
    given = a0 is not None
    a0 = a0 if given else C.lattice_constant(pot)
    summary["a0"] = a0
    _say(log, f"a0 = {a0:.6f} Å" + ("" if given else " (zero pressure, from the potential)"))
    if strain:
        configs = C.strain_set(pot, a0=a0, n_cells=strain_cells, n_strains=n_strains,
                               max_strain=max_strain)
        C.write_set(strain, configs)
        summary["n_strain"] = len(configs)
        _say(log, f"strain: {len(configs)} configurations × {len(configs[0])} atoms -> "
             f"{strain}")
    if neb:
        t = time.perf_counter()
        images = C.vacancy_neb(pot, a0=a0, n_cells=neb_cells, n_images=neb_images,
                               fmax=neb_fmax)
        C.write_set(neb, images)
        summary["vacancy_barrier"] = images[0].info["barrier"]
        _say(log, f"vacancy NEB: {len(images)} images × {len(images[0])} atoms, barrier "
             f"{images[0].info['barrier']:.4f} eV ({time.perf_counter() - t:.1f} s) -> {neb}")
    if md:
        t = time.perf_counter()
        snaps = C.md_snapshots(pot, temperatures=md_temperatures, a0=a0, seed=seed,
                               n_cells=md_cells, n_steps=md_steps, n_snapshots=md_snapshots)
        C.write_set(md, snaps)
        drift = max(s.info["etotal_drift"] for s in snaps)
        summary["n_md"] = len(snaps)
        _say(log, f"MD: {len(snaps)} snapshots × {len(snaps[0])} atoms, max energy drift "
             f"{drift:.2e} eV/atom ({time.perf_counter() - t:.1f} s) -> {md}")
    summary["seconds"] = time.perf_counter() - t0
    _say(log, f"done in {summary['seconds']:.1f} s")
    return summary


def constraint_descriptors_file(strain: PathLike, neb: PathLike, md: PathLike,
                                potential: PathLike, output: PathLike, cache: PathLike, *,
                                quadratic: bool = False, workers: int = 1,
                                log: Log = None) -> dict:
    """Hard rows (``strain`` + ``neb``) and soft normal equations (``md``) of the
    constraint sets into the descriptor ``cache``, where :func:`retrain_file` with the same
    sets (``hard=[strain, neb], soft=[md]``) finds them; ``output``: JSON summary."""
    from qmml.checks import positive_int, writable, writable_dir
    from qmml.descriptors import DescriptorCache, close_workers
    from qmml.io import read_frames, write_json
    from qmml.potential import SNAPPotential
    from qmml.retrain import constraint_sums

    positive_int("workers", workers)
    writable(output)
    writable_dir(cache, "descriptor cache folder")
    pot = SNAPPotential.read(potential)
    space = pot.to_quadratic() if quadratic else pot
    start = time.perf_counter()
    # the same frames, in the same order, as retrain_file reads its hard and soft sets
    hard, soft = read_frames(strain) + read_frames(neb), read_frames(md)
    _say(log, f"descriptors of {len(hard)} hard and {len(soft)} soft configurations "
         f"({workers} workers)")
    try:
        hard_rows, soft_normal, _ = constraint_sums(hard, soft, space, workers=workers,
                                                    cache=DescriptorCache(cache))
    finally:
        close_workers()
    summary = {"n_hard_rows": int(hard_rows.shape[0]), "n_soft_rows": soft_normal.n_rows,
               "n_coefficients": space.n_coefficients, "cache": str(cache),
               "seconds": time.perf_counter() - start}
    write_json(output, summary)
    _say(log, json.dumps(summary))
    return summary


def extract_forces_file(frames: Sequence[PathLike], potential: PathLike, output: PathLike,
                        summary: PathLike | None = None, heldout: PathLike | None = None,
                        heldout_fraction: float = 0.0, log: Log = None) -> dict:
    """An iteration's QM/ML frames gathered into one retraining target file, with the
    iteration potential's force errors on the QM atoms (JSON ``summary``).  A fraction
    ``heldout_fraction`` of the frames (:func:`qmml.extract.split_heldout`) goes to
    ``heldout`` instead (validation frames no retraining sees; an empty file when none)."""
    from qmml.checks import writable
    from qmml.extract import gather_frames, qm_force_errors, split_heldout
    from qmml.io import write_frames, write_json
    from qmml.potential import SNAPPotential

    writable(output, summary, heldout)
    pot = SNAPPotential.read(potential)
    gathered, held = split_heldout(gather_frames(frames), heldout_fraction)
    if held and not heldout:
        raise QmmlError("extract-forces: held-out frames need a file for them (--heldout)")
    result = qm_force_errors(gathered, pot)
    result["files"] = [str(p) for p in frames]
    result.update(heldout_fraction=heldout_fraction, n_heldout_frames=len(held),
                  heldout_sources=[str(a.info["source_file"]) for a in held])
    write_frames(output, gathered)
    if heldout:
        write_frames(heldout, held)
    if summary:
        write_json(summary, result)
    _say(log, json.dumps(result))
    return result


def retrain_file(potential: PathLike, targets: Sequence[PathLike], hard: Sequence[PathLike],
                 soft: Sequence[PathLike], output: PathLike, report: PathLike, *,
                 lambda0: float = 500.0, lambda_soft: float = 1.0, quadratic: bool = False,
                 workers: int = 1, descriptor_cache: PathLike | None = None,
                 paths: Sequence[PathLike] = (), lambda_path: float | None = None,
                 log: Log = None) -> dict:
    """Θ retrained on the QM/ML forces of ``targets`` with the ``hard`` sets exact and the
    ``soft`` sets' forces kept approximately; writes the potential prefix ``output`` and the
    JSON ``report`` (returned).  ``paths``: ordered QM/ML path files (NEB, binding path)
    whose virtual-work energies are targets too, weight ``lambda_path`` (default
    ``qmml.retrain.LAMBDA_PATH``; 0 = only reported).  ``workers`` > 1 starts descriptor
    processes (spawn): a script calling this must guard its body with
    ``if __name__ == "__main__"``."""
    from qmml.checks import nonnegative, positive_int, potential_outputs, writable, writable_dir
    from qmml.descriptors import DescriptorCache, close_workers, start_workers
    from qmml.io import read_frames, write_json
    from qmml.potential import SNAPPotential
    from qmml.frames import read_output_frames
    from qmml.retrain import LAMBDA_PATH, retrain

    nonnegative("lambda0", lambda0)
    nonnegative("lambda_soft", lambda_soft)
    positive_int("workers", workers)
    writable(*potential_outputs(output), report)
    if descriptor_cache:
        writable_dir(descriptor_cache, "descriptor cache folder")
    start_workers(workers)  # their start-up overlaps reading the inputs
    try:
        pot = SNAPPotential.read(potential)
        path_sets = [(str(path), read_output_frames(path)) for path in paths]
        target_frames = [(f"{path} frame {i}", a) for path in targets
                         for i, a in enumerate(read_frames(path))]
        hard_set = [a for path in hard for a in read_frames(path)]
        soft_set = [a for path in soft for a in read_frames(path)]
        new, result = retrain(pot, target_frames, hard_set, soft_set, lambda0, lambda_soft,
                              quadratic, workers=workers,
                              cache=DescriptorCache(descriptor_cache) if descriptor_cache
                              else None, log=log, paths=path_sets,
                              lambda_path=LAMBDA_PATH if lambda_path is None else lambda_path)
    finally:
        close_workers()
    result.update(potential=str(potential), targets=[str(p) for p in targets],
                  hard=[str(p) for p in hard], soft=[str(p) for p in soft],
                  output=str(output))
    new.write(output, comment=f"qmml retrain of {potential} on "
              f"{result['n_target_atoms']} target atoms; hard rank {result['hard_rank']}")
    write_json(report, result)
    _say(log, f"qmml retrain: QM-atom force RMSE {result['qm_force_rmse_before']:.4f} -> "
         f"{result['qm_force_rmse_after']:.4f} eV/Å, hard residual "
         f"{result['hard_residual_max']:.2e} eV/atom, {result['seconds']:.1f} s")
    for p in result["paths"]:
        _say(log, f"qmml retrain: path {p['source']}: barrier {p['barrier_before']:.4f} -> "
             f"{p['barrier_after']:.4f} eV (QM/ML virtual work "
             f"{p['barrier_qmml_virtual_work']:.4f} eV)")
    return result


def elastic_check_file(potential: PathLike, output: PathLike, log: Log = None) -> dict:
    """a0, C11, C12, C44 of ``potential`` by finite differences, as JSON ``output``: the
    iteration's elastic constants (the structures of the iteration are built with them)."""
    from qmml.checks import writable
    from qmml.elastic import A0_GUESS, measure_cubic_elastic
    from qmml.io import write_json
    from qmml.potential import SNAPPotential

    writable(output)
    pot = SNAPPotential.read(potential)
    measured = {k: float(v) for k, v in
                measure_cubic_elastic(pot.calculator(), A0_GUESS).items()}
    write_json(output, measured)
    _say(log, json.dumps(measured))
    return measured
