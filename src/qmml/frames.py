"""The QM/ML frame format: the one place that writes and reads it.

A QM/ML frame is an extxyz configuration with per-atom arrays

* ``region``: ``"QM"``, ``"buffer"`` or ``"MM"`` (strings),
* ``fix_mask``: True for atoms held fixed (outer shell of a cylinder),
* ``forces``: the mixed QM/ML forces (eV/Å; single-point results of the frame),

and provenance info keys (:data:`PROVENANCE_KEYS`: engine, QM settings hash, potential,
optimiser, fmax, QM call counts, ...).  Relaxations, NEBs and binding paths write frames
with :func:`output_frame`; force extraction, retraining, binding, the figures and the
report read them with the functions below.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from qmml import QmmlError

REGION, FIX_MASK, FORCES = "region", "fix_mask", "forces"
REGION_LABELS = ("QM", "buffer", "MM")
# info keys every relaxation/NEB output frame records (see provenance); QM call counts are
# the whole run's (every process of a resumed run), *_process those of the last process
PROVENANCE_KEYS = ("qm_engine", "qm_settings_hash", "ml_potential", "host", "optimizer",
                   "fmax_target", "fmax", "converged", "steps", "n_qm_calls",
                   "n_qm_real_calls", "n_qm_calls_process", "n_qm_real_calls_process",
                   "buffer_width")


# ---- writing ---------------------------------------------------------------------------
def provenance(stats, engine: str, settings_hash: str, potential: str,
               buffer_width: float, ml_ranks: int = 1) -> dict:
    """Info keys written with every QM/ML output frame (``stats``: a qmmm RunStats;
    ``ml_ranks``: the ML potential's MPI processes)."""
    import socket

    where = {"host": socket.gethostname()}
    if os.environ.get("SLURM_JOB_ID"):  # which scheduler job computed it
        where["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return {"qm_engine": engine, "qm_settings_hash": settings_hash, "ml_potential": potential,
            **where, "ml_ranks": int(ml_ranks),
            "optimizer": stats.optimizer, "fmax_target": stats.fmax_target,
            "fmax": stats.fmax, "converged": bool(stats.converged), "steps": stats.steps,
            "n_qm_calls": stats.n_qm_calls, "n_qm_real_calls": stats.n_qm_real_calls,
            "n_qm_calls_process": stats.n_qm_calls_process,
            "n_qm_real_calls_process": stats.n_qm_real_calls_process,
            # seconds of this process: inside the QM engine, and in the whole run
            "qm_seconds_process": round(stats.qm_seconds, 3),
            "wall_seconds_process": round(stats.wall_seconds, 3),
            "buffer_width": buffer_width,
            **({"surrogate_hard_residual_max": stats.surrogate_hard_residual_max,
                "surrogate_outer_steps": stats.outer_steps}
               if hasattr(stats, "surrogate_hard_residual_max") else {})}


def output_frame(atoms: Atoms, info: dict, forces: np.ndarray | None = None) -> Atoms:
    """A copy carrying the mixed forces (``forces``), ``region``, ``fix_mask`` and info.

    ``forces`` default to those of the atoms' calculator.
    """
    if forces is None:
        forces = atoms.get_forces(apply_constraint=False)
    out = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.arrays[REGION] = np.asarray(atoms.arrays[REGION]).astype("<U6")
    fix = atoms.arrays.get(FIX_MASK, np.zeros(len(atoms), dtype=bool))
    out.arrays[FIX_MASK] = np.asarray(fix, dtype=bool)
    # keep what the input knew about itself (dislocation kind, core, defect, ...)
    out.info.update({k: v for k, v in atoms.info.items()
                     if isinstance(v, (str, int, float, bool, list, tuple, np.ndarray))})
    out.info.update(info)
    out.calc = SinglePointCalculator(out, forces=forces)
    return out


def write_output_frames(path: str | Path, frames: list[Atoms]) -> Path:
    """QM/ML frames as one extxyz file, atomically."""
    from qmml.io import write_frames

    return write_frames(path, frames)


# ---- reading ---------------------------------------------------------------------------
def forces_of(atoms: Atoms, source: str) -> np.ndarray:
    """The frame's QM/ML forces (``forces`` array or single-point results)."""
    if FORCES in atoms.arrays:
        return np.asarray(atoms.arrays[FORCES], dtype=float)
    if atoms.calc is not None and FORCES in getattr(atoms.calc, "results", {}):
        return np.asarray(atoms.calc.results[FORCES], dtype=float)
    raise QmmlError(f"{source}: no 'forces' array (targets need QM/ML forces)")


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """Atoms held fixed: ``fix_mask``, else those of FixAtoms constraints (extxyz read
    without the array), else none."""
    if FIX_MASK in atoms.arrays:
        return np.asarray(atoms.arrays[FIX_MASK], dtype=bool)
    mask = np.zeros(len(atoms), dtype=bool)
    if atoms.constraints:
        from ase.constraints import FixAtoms  # see qmml.binding's imports

        for constraint in atoms.constraints:
            if isinstance(constraint, FixAtoms):
                mask[constraint.get_indices()] = True
    return mask


def free_mask(atoms: Atoms) -> np.ndarray:
    """Atoms not held fixed (:func:`fixed_mask`)."""
    return ~fixed_mask(atoms)


def qm_region_mask(atoms: Atoms) -> np.ndarray:
    """Atoms whose forces are QM forces: ``region == "QM"``, or every atom of a frame
    without a ``region`` array (a plain QM calculation has no ML part)."""
    if REGION not in atoms.arrays:
        return np.ones(len(atoms), dtype=bool)
    return np.asarray(atoms.arrays[REGION]).astype(str) == "QM"


def has_region(atoms: Atoms) -> bool:
    return REGION in atoms.arrays


def read_structure(path: str | Path, hint: str = "") -> Atoms:
    """A QM/ML input structure (one frame, no calculator); it must carry ``region``.
    A file of several frames is refused (``hint``: what to do instead, for the message)."""
    from qmml.io import read_frames

    frames = read_frames(path)
    if len(frames) != 1:
        raise QmmlError(f"{path}: {len(frames)} frames, expected one structure"
                        + (f" ({hint})" if hint else ""))
    atoms = frames[0]
    atoms.calc = None
    if not has_region(atoms):
        raise QmmlError(f"{path}: no 'region' array (QM/buffer/MM per atom)")
    return atoms


def read_output_frames(path: str | Path, require_region: bool = False) -> list[Atoms]:
    """All QM/ML frames of a file; with ``require_region`` every frame must carry
    ``region`` (QM/buffer/MM)."""
    from qmml.io import read_frames

    frames = read_frames(path)
    if require_region:
        for k, atoms in enumerate(frames):
            if not has_region(atoms):
                raise QmmlError(f"{path} frame {k}: no 'region' array (QM/buffer/MM)")
    return frames


def read_run_info(path: str | Path) -> dict:
    """The provenance info a QM/ML output records (info of its last frame)."""
    from qmml.io import read_frame

    return read_frame(path).info


def read_info_with(path: str | Path, keys: tuple[str, ...], what: str) -> dict:
    """Info of the first frame, checked to hold ``keys`` (a ``what`` file)."""
    from qmml.io import read_frame

    info = read_frame(path, 0).info
    missing = [k for k in keys if k not in info]
    if missing:
        raise QmmlError(f"{path}: not a {what} file (info lacks {', '.join(missing)})")
    return info
