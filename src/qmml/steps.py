"""Pipeline steps as file-level functions: the one entry into the library for each step.

Every ``qmml <command>`` (``qmml.cli``) and every workflow script (``workflow/scripts``)
calls exactly one of these functions; both pass the same values, so a step computes the
same thing whichever way it is run.  Each takes paths and values, writes its outputs and
returns a summary; ``log`` (a ``Callable[[str], None]``) receives progress lines.
Heavy modules are imported inside the functions: a job imports only what its step needs.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from qmml import QmmlError
from qmml.interrupt import log_file  # noqa: F401  (the workflow scripts' log, with SIGTERM)

Log = Callable[[str], None] | None
PathLike = str | Path


def _say(log: Log, line: str) -> None:
    if log:
        log(line)


# ---- force-mixed QM/ML relaxation and NEB ------------------------------------------------
class NotConverged(QmmlError):
    """A relaxation/NEB ran out of steps before fmax (its output is written)."""


def engine_settings(engine_config: dict | PathLike, output: PathLike | None = None) -> dict:
    """An engine config given as a mapping or as an engine-config file; with ``output``,
    the program runs in a folder of its own for that output (``with_run_folder``)."""
    from qmml.engines import read_engine_config, with_run_folder

    if not isinstance(engine_config, dict):
        engine_config = read_engine_config(engine_config)
    return engine_config if output is None else with_run_folder(engine_config, output)


def _qm_setup(pot, engine_config: dict | PathLike, cache: PathLike, output: PathLike,
              log: Log):
    from qmml.engines import engine_label
    from qmml.qmcache import CachedQMCalculator

    engine_config = engine_settings(engine_config, output)
    qm = CachedQMCalculator.from_config(engine_config, cache, log=log)
    label = engine_label(engine_config)
    if engine_config["engine"] == "reference":  # a classical stand-in, labelled as such
        _say(log, f"QM engine: {label}")
    # the potential's coefficients are part of the run identity (resume safety)
    pot_id = (hashlib.sha256(pot.coeffs.tobytes()).hexdigest()[:16],)
    return qm, label, pot_id


def _accelerated_options(optimizer: str, images, moving, hard, descriptor_cache, qm_frames,
                         seed_frames, surrogate_space) -> dict:
    """hard set, settings and seeds for the accelerated optimiser (empty dict otherwise);
    ``images``/``moving``: the run's images and the indices of those that move."""
    if optimizer != "accelerated":
        for flag, value in (("--hard", hard), ("--descriptor-cache", descriptor_cache),
                            ("--qm-frames", qm_frames), ("--seed-frames", seed_frames)):
            if value:
                raise QmmlError(f"{flag} is only used with --optimizer accelerated")
        return {}
    from qmml.accelerated import AcceleratedSettings, seed_points
    from qmml.descriptors import DescriptorCache
    from qmml.io import read_frames

    hard_set = [a for path in hard for a in read_frames(path)] if hard else None
    space = {"space": surrogate_space} if surrogate_space else {}
    seeds = [x for path in seed_frames or ()
             for x in seed_points(read_frames(path), images, moving, path)]
    return {"hard": hard_set, "accelerated": AcceleratedSettings(**space),
            "descriptor_cache": DescriptorCache(descriptor_cache) if descriptor_cache
            else None, "seeds": seeds}


def _write_qm_frames(path: PathLike | None, images, moving, stats, info: dict) -> None:
    if path:
        from qmml.accelerated import qm_point_frames
        from qmml.frames import write_output_frames

        write_output_frames(path, qm_point_frames(images, moving, stats, info))


def _qm_counts(stats) -> str:
    """QM-call counts of the whole run, then of this process (an unclosed parenthesis)."""
    return (f"QM calls {stats.n_qm_calls}, {stats.n_qm_real_calls} real (whole run); this "
            f"process {stats.n_qm_calls_process} (new {stats.n_qm_real_calls_process}")


def _check_converged(stats, what: str, output: PathLike, require_convergence: bool) -> None:
    if require_convergence and not stats.converged:
        raise NotConverged(f"{output}: {what} NOT converged: fmax {stats.fmax:.5f} > "
                           f"{stats.fmax_target} eV/Å after {stats.steps} steps "
                           "(checkpointed: a rerun with more steps, or with "
                           "require_convergence false, continues from there)")


def relax_file(input: PathLike, output: PathLike, potential: PathLike,
               engine_config: dict | PathLike, cache: PathLike, *, optimizer: str = "FIRE",
               fmax: float = 0.01, buffer: float = 8.0, vacuum: float = 5.0, steps: int = 1000,
               checkpoint: PathLike | None = None, hard: Sequence[PathLike] | None = None,
               descriptor_cache: PathLike | None = None, qm_frames: PathLike | None = None,
               seed_frames: Sequence[PathLike] | None = None,
               surrogate_space: str | None = None, require_convergence: bool = True,
               quiet: bool = False, log: Log = None):
    """Force-mixed QM/ML relaxation of the structure in ``input`` (``region`` and
    ``fix_mask`` arrays) into ``output`` (QM/ML frame, qmml.frames).  Every QM call goes
    through ``cache``, every step is checkpointed (``checkpoint``, default OUTPUT.ckpt).
    Returns the run statistics; with ``require_convergence`` a run that ends above fmax
    raises :class:`NotConverged` after writing its output.  ``quiet``: ``log`` gets the
    summary lines only, not every optimiser step and QM call."""
    from qmml.checks import check_qmml_run
    from qmml.frames import output_frame, provenance, read_structure, write_output_frames
    from qmml.qmmm import relax

    atoms = read_structure(input, "relax takes one structure")
    checkpoint = checkpoint or f"{output}.ckpt"
    pot = check_qmml_run({input: atoms}, potential, buffer=buffer, fmax=fmax, steps=steps,
                         vacuum=vacuum, outputs=(output, checkpoint, qm_frames), cache=cache,
                         folders=(descriptor_cache,))
    progress = None if quiet else log
    qm, label, pot_id = _qm_setup(pot, engine_config, cache, output, progress)
    stats = relax(atoms, qm, pot.calculator(), buffer, optimizer=optimizer, fmax=fmax,
                  steps=steps, checkpoint=checkpoint, vacuum=vacuum, log=progress,
                  fingerprint_extra=pot_id,
                  **_accelerated_options(optimizer, [atoms], [0], hard, descriptor_cache,
                                         qm_frames, seed_frames, surrogate_space))
    info = provenance(stats, label, qm.cache.settings_hash, str(potential), buffer)
    write_output_frames(output, [output_frame(atoms, info)])
    _write_qm_frames(qm_frames, [atoms], [0], stats, info)
    if optimizer == "accelerated":
        _say(log, f"relax: accelerated, {stats.outer_steps} outer steps, surrogate hard "
             f"residual max {stats.surrogate_hard_residual_max:.2e} eV/atom")
    _say(log, f"relax: {'converged' if stats.converged else 'NOT converged'} fmax "
         f"{stats.fmax:.5f} eV/A after {stats.steps} steps; {_qm_counts(stats)}, "
         f"{stats.qm_seconds:.1f} s in QM, {stats.wall_seconds:.1f} s total); engine "
         f"{label}; wrote {output}")
    _check_converged(stats, "relaxation", output, require_convergence)
    return stats


def neb_file(initial: PathLike, final: PathLike, output: PathLike, potential: PathLike,
             engine_config: dict | PathLike, cache: PathLike, *, images: int = 7,
             spring: float = 0.1, optimizer: str = "FIRE", fmax: float = 0.05,
             buffer: float = 8.0, vacuum: float = 5.0, steps: int = 1000,
             checkpoint: PathLike | None = None,
             hard: Sequence[PathLike] | None = None,
             descriptor_cache: PathLike | None = None, qm_frames: PathLike | None = None,
             seed_frames: Sequence[PathLike] | None = None,
             surrogate_space: str | None = None, require_convergence: bool = True,
             quiet: bool = False, log: Log = None):
    """QM/ML NEB (``images`` including the end points) of a glide path between two
    relaxed states, written to ``output`` with the virtual-work energy of every image
    (``neb_energy_virtual_work``) and the barrier; cached and checkpointed as
    :func:`relax_file`.  Returns (statistics, profile)."""
    from qmml.checks import check_qmml_run, positive, positive_int
    from qmml.frames import output_frame, provenance, read_structure, write_output_frames
    from qmml.qmmm import neb, neb_moving_images

    hint = "NEB end points: one frame each"
    start, end = read_structure(initial, hint), read_structure(final, hint)
    if positive_int("images", images) < 3:
        raise QmmlError(f"--images must be >= 3 (end points included), got {images}")
    positive("spring", spring)
    checkpoint = checkpoint or f"{output}.ckpt"
    pot = check_qmml_run({initial: start, final: end}, potential, buffer=buffer, fmax=fmax,
                         steps=steps, vacuum=vacuum, outputs=(output, checkpoint, qm_frames),
                         cache=cache, folders=(descriptor_cache,))
    progress = None if quiet else log
    qm, label, pot_id = _qm_setup(pot, engine_config, cache, output, progress)
    band, stats, profile = neb(start, end, images, qm, pot.calculator, buffer,
                               optimizer=optimizer, fmax=fmax, steps=steps, k=spring,
                               checkpoint=checkpoint, vacuum=vacuum, log=progress,
                               fingerprint_extra=pot_id,
                               **_accelerated_options(optimizer, [start] * images,
                                                      neb_moving_images(images), hard,
                                                      descriptor_cache, qm_frames,
                                                      seed_frames, surrogate_space))
    info = provenance(stats, label, qm.cache.settings_hash, str(potential), buffer)
    info["neb_barrier_virtual_work"] = profile["barrier"]
    e_images = profile["image_energy"]
    write_output_frames(output, [
        output_frame(im, dict(info, neb_image=i, neb_energy_virtual_work=float(e_images[i])))
        for i, im in enumerate(band)])
    _write_qm_frames(qm_frames, band, neb_moving_images(len(band)), stats, info)
    _say(log, f"neb: {'converged' if stats.converged else 'NOT converged'} fmax "
         f"{stats.fmax:.5f} eV/A after {stats.steps} steps; virtual-work barrier "
         f"{profile['barrier']:.4f} eV; {_qm_counts(stats)}, {stats.qm_seconds:.1f} s in "
         f"QM, {stats.wall_seconds:.1f} s total); engine {label}; "
         f"wrote {output}")
    _check_converged(stats, "NEB", output, require_convergence)
    return stats, profile


# ---- potential: QM engine, bulk targets, Θ0, constraint sets, targets, retraining ------
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
                        summary: PathLike | None = None, log: Log = None) -> dict:
    """An iteration's QM/ML frames gathered into one retraining target file, with the
    iteration potential's force errors on the QM atoms (JSON ``summary``)."""
    from qmml.checks import writable
    from qmml.extract import gather_frames, qm_force_errors
    from qmml.io import write_frames, write_json
    from qmml.potential import SNAPPotential

    writable(output, summary)
    pot = SNAPPotential.read(potential)
    gathered = gather_frames(frames)
    result = qm_force_errors(gathered, pot)
    result["files"] = [str(p) for p in frames]
    write_frames(output, gathered)
    if summary:
        write_json(summary, result)
    _say(log, json.dumps(result))
    return result


def retrain_file(potential: PathLike, targets: Sequence[PathLike], hard: Sequence[PathLike],
                 soft: Sequence[PathLike], output: PathLike, report: PathLike, *,
                 lambda0: float = 500.0, lambda_soft: float = 1.0, quadratic: bool = False,
                 workers: int = 1, descriptor_cache: PathLike | None = None,
                 log: Log = None) -> dict:
    """Θ retrained on the QM/ML forces of ``targets`` with the ``hard`` sets exact and the
    ``soft`` sets' forces kept approximately; writes the potential prefix ``output`` and the
    JSON ``report`` (returned).  ``workers`` > 1 starts descriptor processes (spawn): a
    script calling this must guard its body with ``if __name__ == "__main__"``."""
    from qmml.checks import nonnegative, positive_int, potential_outputs, writable, writable_dir
    from qmml.descriptors import DescriptorCache, close_workers, start_workers
    from qmml.io import read_frames, write_json
    from qmml.potential import SNAPPotential
    from qmml.retrain import retrain

    nonnegative("lambda0", lambda0)
    nonnegative("lambda_soft", lambda_soft)
    positive_int("workers", workers)
    writable(*potential_outputs(output), report)
    if descriptor_cache:
        writable_dir(descriptor_cache, "descriptor cache folder")
    start_workers(workers)  # their start-up overlaps reading the inputs
    try:
        pot = SNAPPotential.read(potential)
        target_frames = [(f"{path} frame {i}", a) for path in targets
                         for i, a in enumerate(read_frames(path))]
        hard_set = [a for path in hard for a in read_frames(path)]
        soft_set = [a for path in soft for a in read_frames(path)]
        new, result = retrain(pot, target_frames, hard_set, soft_set, lambda0, lambda_soft,
                              quadratic, workers=workers,
                              cache=DescriptorCache(descriptor_cache) if descriptor_cache
                              else None, log=log)
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


# ---- structures ----------------------------------------------------------------------
ELASTIC_KEYS = ("a0", "C11", "C12", "C44")


def read_elastic(elastic: dict | PathLike | None) -> dict:
    """a0, C11, C12, C44 from a mapping or an elastic.json (:func:`elastic_check_file`);
    {} for None (then the builders measure them with the potential)."""
    if elastic is None:
        return {}
    if not isinstance(elastic, dict):
        from qmml.io import read_mapping

        elastic = read_mapping(elastic, ELASTIC_KEYS)
    return {k: float(elastic[k]) for k in ELASTIC_KEYS}


def build_file(settings: dict, output: PathLike, state: int | None = None,
               log: Log = None) -> dict:
    """The dislocation case of ``settings`` (:func:`qmml.build.load_settings`) as extxyz:
    every state, or only state ``state`` (0 initial, 1 final of a glide pair).  Elastic
    constants: ``settings`` a0/C11/C12/C44 when given, else measured with the potential."""
    from qmml.build import build_case
    from qmml.checks import check_build_settings, writable
    from qmml.io import write_frames

    check_build_settings(settings)
    writable(output)
    states, summary = build_case(settings)
    write_frames(output, states if state is None else [states[state]])
    summary.update(output=str(output), frames=len(states) if state is None else 1)
    _say(log, json.dumps(summary, indent=2))
    return summary


def build_dislocation_file(case: dict, qmml: dict, potential: PathLike,
                           elastic: dict | PathLike | None, state: str, output: PathLike,
                           log: Log = None) -> dict:
    """State ``state`` ("initial", or "final" of a glide case) of the configured
    dislocation ``case`` (config ``dislocations.<case>``) with the QM region of the
    ``qmml`` config section, built with the elastic constants ``elastic`` of
    ``potential`` (:func:`build_file`)."""
    from qmml.build import default_settings

    settings = default_settings(kind=case["kind"], radius=case["radius"],
                                fixed_width=case["fixed_width"], potential=str(potential),
                                qm_radius=qmml["qm_radius"], buffer=qmml["buffer"],
                                glide=case["glide_images"] > 0, output=str(output),
                                **read_elastic(elastic))
    return build_file(settings, output, state=0 if state == "initial" else 1, log=log)


def build_defect_file(name: str, defect: dict, dislocation: dict, three_d: dict,
                      potential: PathLike, k: int, output: PathLike,
                      elastic: dict | PathLike | None = None, log: Log = None) -> dict:
    """Distance index ``k`` of configured defect ``name`` on a long 3D dislocation
    (:func:`qmml.binding.build_defect`) as extxyz ``output``."""
    from qmml.binding import build_defect
    from qmml.checks import writable
    from qmml.io import write_frames

    writable(output)
    atoms, summary = build_defect(name, defect, dislocation, three_d, str(potential), int(k),
                                  elastic=read_elastic(elastic))
    write_frames(output, [atoms])
    _say(log, json.dumps(summary, indent=2))
    return summary


# ---- binding energies ----------------------------------------------------------------
def binding_table_file(paths: Sequence[PathLike], output: PathLike,
                       configured: dict | None = None, log: Log = None):
    """binding.csv: one row per configured (defect, dislocation, distance) from the path
    files (:func:`qmml.binding.binding_table`), E_b > 0 = attraction."""
    from qmml.binding import binding_table
    from qmml.io import atomic_writer

    table = binding_table(list(paths), configured=configured)
    with atomic_writer(output) as fh:  # no half-written table
        table.to_csv(fh, index=False)
    _say(log, table.to_string())
    return table


def binding_path_file(far: PathLike, near: PathLike, far_structure: PathLike,
                      near_structure: PathLike, potential: PathLike,
                      engine_config: dict | PathLike,
                      cache: PathLike, output: PathLike, *, buffer: float, images: int = 7,
                      vacuum: float = 5.0, qm_radius: float | None = None,
                      ml_fmax: float | None = None, quiet: bool = False,
                      log: Log = None) -> dict:
    """QM/ML virtual-work path of one binding segment (near ← far) written as frames to
    ``output`` (:func:`qmml.binding.compute`); returns its summary.  ``ml_fmax`` of the
    ML-only end-state relaxations: default ``qmml.binding.ML_FMAX``."""
    from qmml.binding import ML_FMAX, compute
    from qmml.checks import check_buffer, nonnegative, positive, positive_int, writable, \
        writable_dir
    from qmml.frames import write_output_frames
    from qmml.potential import SNAPPotential

    positive_int("images", images)
    nonnegative("vacuum", vacuum)
    for name, value in (("qm_radius", qm_radius), ("ml_fmax", ml_fmax)):
        if value is not None:
            positive(name, value)
    check_buffer(buffer, SNAPPotential.read(potential).cutoff, potential)
    writable(output)
    writable_dir(cache, "QM cache folder")
    result = compute(str(far), str(near), str(far_structure), str(near_structure),
                     str(potential), engine_settings(engine_config, output), str(cache),
                     int(images),
                     float(buffer),
                     vacuum=float(vacuum), qm_radius=qm_radius,
                     ml_fmax=ML_FMAX if ml_fmax is None else ml_fmax,
                     log=None if quiet else log)
    write_output_frames(output, result.frames)  # atomic (tmp + rename)
    _say(log, json.dumps(result.summary, default=str))
    return result.summary


# ---- figures and report --------------------------------------------------------------
def _keyed_inputs(inputs: dict, iterations: dict) -> dict:
    """Figure inputs with their iterations: each name in ``iterations`` becomes a list of
    (iteration, path) pairs (the workflow gives both lists in the same order)."""
    out = {}
    for name, files in inputs.items():
        files = list(files)
        if name in iterations:
            its = list(iterations[name])
            if len(its) != len(files):
                raise QmmlError(f"figure input {name}: {len(files)} files but "
                                f"{len(its)} iterations")
            files = list(zip(its, files))
        out[name] = files
    return out


def _plain(value):
    """numpy scalars and tuple keys (binding groups) -> JSON."""
    if isinstance(value, dict):
        return {" / ".join(k) if isinstance(k, tuple) else str(k): _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def figures_file(inputs: dict, iterations: dict, outputs: dict, log: Log = None) -> dict:
    """The paper's six figures (:func:`qmml.figures.make_all`) as PNG ``outputs`` (by
    figure name); ``inputs``: lists of paths by input name, ``iterations``: the iteration
    of each path of the iteration-keyed inputs.  Returns (and logs) their numbers."""
    from qmml.figures import make_all

    numbers = make_all(_keyed_inputs(inputs, iterations), outputs, log=log)
    _say(log, json.dumps(_plain(numbers), indent=2))
    return numbers


def report_file(output: PathLike, figures: dict, inputs: dict, iterations: dict,
                config: dict | None = None, captions: PathLike | None = None,
                log: Log = None) -> Path:
    """The self-contained HTML report (:func:`qmml.report.write_report`): ``figures`` by
    name, ``inputs``/``iterations`` as :func:`figures_file`, captions read from the
    ``captions`` folder (``<figure>.rst``)."""
    from qmml.report import read_captions, write_report

    keyed = _keyed_inputs(inputs, iterations)
    text = read_captions(captions, list(figures)) if captions else {}
    path = write_report(output, dict(figures), elastic=keyed.get("elastic", ()),
                        retrain=keyed.get("retrain", ()),
                        targets_summary=keyed.get("targets_summary", ()),
                        binding=(list(keyed.get("binding", ())) or [None])[0],
                        frames=list(keyed.get("relaxed", ())) + list(keyed.get("neb", ())),
                        config=config, captions=text)
    _say(log, f"wrote {output} with {len(figures)} figures")
    return path
