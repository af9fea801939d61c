"""Force-mixed QM/ML steps: relaxation, NEB and the binding path."""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Sequence

from qmml import QmmlError
from qmml.steps.common import Log, PathLike, _say


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
               ml_ranks: int = 1, quiet: bool = False, log: Log = None):
    """Force-mixed QM/ML relaxation of the structure in ``input`` (``region`` and
    ``fix_mask`` arrays) into ``output`` (QM/ML frame, qmml.frames).  Every QM call goes
    through ``cache``, every step is checkpointed (``checkpoint``, default OUTPUT.ckpt).
    ``ml_ranks``: MPI processes for the ML potential (:mod:`qmml.lammps_mpi`).
    Returns the run statistics; with ``require_convergence`` a run that ends above fmax
    raises :class:`NotConverged` after writing its output.  ``quiet``: ``log`` gets the
    summary lines only, not every optimiser step and QM call."""
    from qmml.checks import check_qmml_run, positive_int
    from qmml.frames import output_frame, provenance, read_structure, write_output_frames
    from qmml.qmmm import relax

    atoms = read_structure(input, "relax takes one structure")
    positive_int("ml_ranks", ml_ranks)
    checkpoint = checkpoint or f"{output}.ckpt"
    pot = check_qmml_run({input: atoms}, potential, buffer=buffer, fmax=fmax, steps=steps,
                         vacuum=vacuum, outputs=(output, checkpoint, qm_frames), cache=cache,
                         folders=(descriptor_cache,))
    progress = None if quiet else log
    qm, label, pot_id = _qm_setup(pot, engine_config, cache, output, progress)
    stats = relax(atoms, qm, pot.calculator(ranks=ml_ranks), buffer, optimizer=optimizer,
                  fmax=fmax, steps=steps, checkpoint=checkpoint, vacuum=vacuum,
                  log=progress, fingerprint_extra=pot_id,
                  **_accelerated_options(optimizer, [atoms], [0], hard, descriptor_cache,
                                         qm_frames, seed_frames, surrogate_space))
    info = provenance(stats, label, qm.cache.settings_hash, str(potential), buffer, ml_ranks)
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
             climb: bool = False, ml_ranks: int = 1, quiet: bool = False,
             log: Log = None):
    """QM/ML NEB (``images`` including the end points) of a glide path between two
    relaxed states, written to ``output`` with the virtual-work energy of every image
    (``neb_energy_virtual_work``) and the barrier; cached and checkpointed as
    :func:`relax_file`; ``climb``: climbing image at the virtual-work maximum;
    ``ml_ranks`` as in :func:`relax_file`.  Returns (statistics, profile)."""
    from qmml.checks import check_qmml_run, positive, positive_int
    from qmml.frames import output_frame, provenance, read_structure, write_output_frames
    from qmml.qmmm import neb, neb_moving_images

    hint = "NEB end points: one frame each"
    start, end = read_structure(initial, hint), read_structure(final, hint)
    if positive_int("images", images) < 3:
        raise QmmlError(f"--images must be >= 3 (end points included), got {images}")
    positive("spring", spring)
    positive_int("ml_ranks", ml_ranks)
    checkpoint = checkpoint or f"{output}.ckpt"
    pot = check_qmml_run({initial: start, final: end}, potential, buffer=buffer, fmax=fmax,
                         steps=steps, vacuum=vacuum, outputs=(output, checkpoint, qm_frames),
                         cache=cache, folders=(descriptor_cache,))
    progress = None if quiet else log
    qm, label, pot_id = _qm_setup(pot, engine_config, cache, output, progress)
    band, stats, profile = neb(start, end, images, qm,
                               functools.partial(pot.calculator, ranks=ml_ranks), buffer,
                               optimizer=optimizer, fmax=fmax, steps=steps, k=spring,
                               checkpoint=checkpoint, vacuum=vacuum, log=progress,
                               fingerprint_extra=pot_id, climb=climb,
                               **_accelerated_options(optimizer, [start] * images,
                                                      neb_moving_images(images), hard,
                                                      descriptor_cache, qm_frames,
                                                      seed_frames, surrogate_space))
    info = provenance(stats, label, qm.cache.settings_hash, str(potential), buffer, ml_ranks)
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


def binding_path_file(far: PathLike, near: PathLike, far_structure: PathLike,
                      near_structure: PathLike, potential: PathLike,
                      engine_config: dict | PathLike,
                      cache: PathLike, output: PathLike, *, buffer: float, images: int = 7,
                      vacuum: float = 5.0, qm_radius: float | None = None,
                      ml_fmax: float | None = None, ml_ranks: int = 1, quiet: bool = False,
                      log: Log = None) -> dict:
    """QM/ML virtual-work path of one binding segment (near ← far) written as frames to
    ``output`` (:func:`qmml.binding.compute`); returns its summary.  ``ml_fmax`` of the
    ML-only end-state relaxations: default ``qmml.binding.ML_FMAX``; ``ml_ranks`` as in
    :func:`relax_file`."""
    from qmml.binding import ML_FMAX, compute
    from qmml.checks import check_buffer, nonnegative, positive, positive_int, writable, \
        writable_dir
    from qmml.frames import write_output_frames
    from qmml.potential import SNAPPotential

    positive_int("images", images)
    positive_int("ml_ranks", ml_ranks)
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
                     ml_ranks=ml_ranks, log=None if quiet else log)
    write_output_frames(output, result.frames)  # atomic (tmp + rename)
    _say(log, json.dumps(result.summary, default=str))
    return result.summary
