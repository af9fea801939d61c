"""Pipeline steps of the validation (``qmml validate``, workflow rules
``qm_vacancy_reference``, ``validate`` and ``validation_figure``): file-level functions
as in :mod:`qmml.steps`, one per step."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from qmml import QmmlError
from qmml.steps.common import Log, PathLike, _say
from qmml.steps.qmml_runs import engine_settings

VACANCY_CELLS = 2     # n of the n×n×n periodic cell of the vacancy properties
VACANCY_FMAX = 0.01   # eV/Å
VACANCY_STEPS = 200


def qm_vacancy_reference_file(engine_config: dict | PathLike, cache: PathLike,
                              bulk_reference: dict | PathLike, output: PathLike, *,
                              n_cells: int = VACANCY_CELLS, fmax: float = VACANCY_FMAX,
                              steps: int = VACANCY_STEPS, log: Log = None) -> dict:
    """The QM engine's vacancy formation energy and migration barrier
    (:func:`qmml.validation.vacancy_properties`) at its own lattice constant (``a0`` of
    the QM bulk reference), every QM energy+forces kept in ``cache``/periodic (a rerun
    repeats no QM call); JSON ``output``."""
    from qmml.bulk import bulk_calculator, bulk_settings_hash, read_targets
    from qmml.engines import engine_label
    from qmml.io import write_text
    from qmml.qmcache import CachedQMCalculator, QMCache
    from qmml.validation import vacancy_properties

    cfg = engine_settings(engine_config, output)
    reference = bulk_reference if isinstance(bulk_reference, dict) else \
        read_targets(bulk_reference)
    start = time.perf_counter()
    calc = CachedQMCalculator(bulk_calculator(cfg, n_cells),
                              QMCache(Path(cache) / "periodic", bulk_settings_hash(cfg, n_cells)),
                              retries=int(cfg.get("retries", 1)), log=log)
    result = vacancy_properties(calc, float(reference["a0"]), n_cells, fmax, steps)
    result.update(engine=engine_label(cfg), qm_calls=calc.n_real_calls,
                  qm_cache_hits=calc.n_cache_hits, seconds=time.perf_counter() - start)
    write_text(output, json.dumps(result, indent=2) + "\n")
    _say(log, json.dumps(result))
    return result


def validate_file(potential: PathLike, elastic: PathLike | None, bulk_reference: PathLike,
                  vacancy_reference: PathLike, output: PathLike, *,
                  nebs: Sequence[tuple[str, PathLike]] = (),
                  relaxed: Sequence[tuple[str, PathLike, PathLike]] = (),
                  heldout: Sequence[tuple[str, PathLike]] = (),
                  profiles: PathLike | None = None, ml_ranks: int = 1, log: Log = None):
    """``validation.csv`` of one potential (:mod:`qmml.validation`): elastic rows
    (``elastic``, the potential's elastic.json, or None to measure them, vs
    ``bulk_reference``), vacancy rows (the same procedure as
    ``vacancy_reference`` with the potential, same cell), per glide case in ``nebs``
    (case, QM/ML NEB file) the ML-only Peierls barrier and the ML energy profile on the
    QM/ML path, per screw case in ``relaxed`` (case, QM/ML relaxed frame, unrelaxed
    structure) the core structure of an ML-only relaxation vs the QM/ML one, per file of
    ``heldout`` (label, frames) the force RMSE on its QM atoms; ``profiles``: JSON of the
    ML-only NEB profiles by case (:func:`qmml.validation.peierls_profile`); ``ml_ranks``:
    MPI processes of the one ML calculator of the glide-path and core calculations (the
    small vacancy cells stay in this process).  Returns the table."""
    from qmml.checks import positive_int
    from qmml.frames import read_output_frames
    from qmml.io import atomic_writer, read_frames, read_mapping, write_text
    from qmml.potential import SNAPPotential
    from qmml import validation as V

    positive_int("ml_ranks", ml_ranks)
    start = time.perf_counter()
    pot = SNAPPotential.read(potential)
    if elastic is None:  # measured here, as the pipeline's elastic_check does
        from qmml.elastic import A0_GUESS, measure_cubic_elastic

        measured = measure_cubic_elastic(pot.calculator(), A0_GUESS)
    else:
        measured = read_mapping(elastic, V.ELASTIC_KEYS)
    rows = V.elastic_rows(measured, read_mapping(bulk_reference, V.ELASTIC_KEYS))
    qm_vac = read_mapping(vacancy_reference, ("formation_energy", "migration_barrier",
                                              "n_cells", "fmax"))
    ml_vac = V.vacancy_properties(pot.calculator(), float(measured["a0"]),
                                  int(qm_vac["n_cells"]), float(qm_vac["fmax"]),
                                  int(qm_vac.get("steps", VACANCY_STEPS)))
    rows += V.vacancy_rows(ml_vac, qm_vac, f"{qm_vac['n_cells']}^3 cell, "
                           f"{qm_vac.get('engine', 'QM')} ({vacancy_reference})")
    _say(log, f"validate: elastic and vacancy rows ({time.perf_counter() - start:.1f} s)")
    ml_nebs = {}
    ml = pot.calculator(ranks=ml_ranks)  # one instance (ranks) for every large structure
    for case, path in nebs:
        images = read_output_frames(path)
        rows += V.path_energy_rows(case, images, ml, str(path))
        ml_nebs[case] = V.peierls_profile(images, ml, str(path))
        rows += V.peierls_rows(case, ml_nebs[case])
        _say(log, f"validate: {case} glide path and ML NEB "
             f"({time.perf_counter() - start:.1f} s)")
    for case, qmml_path, structure_path in relaxed:
        (structure,) = read_frames(structure_path)
        if structure.info.get("kind") != "screw111":
            continue
        qmml = read_output_frames(qmml_path)[-1]
        rows += V.core_rows(case, V.ml_relaxed(structure, ml), qmml, structure,
                            str(qmml_path))
        _say(log, f"validate: {case} core ({time.perf_counter() - start:.1f} s)")
    for label, path in heldout:  # an empty file: nothing held out that iteration
        if Path(path).stat().st_size:
            rows += V.heldout_rows(label, read_frames(path), pot, str(path))
    result = V.table(rows)
    if profiles is not None:  # the glide-barrier figure draws them
        write_text(profiles, json.dumps(ml_nebs, indent=1) + "\n")
    with atomic_writer(output) as fh:
        result.to_csv(fh, index=False)
    _say(log, result.to_string())
    return result


def validation_figure_file(tables: Sequence[tuple[int, PathLike]], output: PathLike,
                           log: Log = None) -> dict:
    """Every property's error against iteration (:func:`qmml.validation_plot.plot`) from
    the (iteration, validation.csv) pairs."""
    from qmml.validation_plot import plot

    if not tables:
        raise QmmlError("validation figure: no validation tables given")
    numbers = plot(tables, output)
    _say(log, f"wrote {output}: {len(numbers)} properties")
    return numbers
