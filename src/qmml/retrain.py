"""Retraining on QM/ML forces with exact hard constraints (``qmml retrain``).

Targets: extxyz frames with forces (QM/ML images as written by ``ForceQMMM.export_extxyz``
or ``qmml relax``); atoms with a true ``fix_mask`` are not targets; QM-region atoms
(``region == "QM"``) are the ones whose error the report highlights.
Hard rows: per-atom mean descriptors of the hard configurations (energies per atom of Θ0
are kept exactly).  Soft rows: force rows of the soft configurations (Θ0's forces kept
approximately, weight λS).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.descriptors import (DescriptorCache, ForceSet, ForceSums, NormalEquations,
                              descriptor_sums)
from qmml.fitting import solve_constrained
from qmml.frames import forces_of, free_mask, qm_region_mask
from qmml.path_energy import PathRows, add_path_rows, path_rows
from qmml.potential import SNAPPotential

# Weight of the path-energy rows (eV⁻²) against the force rows ((eV/Å)⁻²).
LAMBDA_PATH = 1000.0


@dataclass
class TargetData:
    """Force normal equations of the targets plus the explicit rows of the QM atoms."""

    normal: NormalEquations
    qm_rows: list[np.ndarray] = field(default_factory=list)
    qm_forces: list[np.ndarray] = field(default_factory=list)
    n_atoms: int = 0
    n_frames: int = 0

    def qm_rmse(self, theta: np.ndarray) -> float:
        rows, forces = np.vstack(self.qm_rows), np.concatenate(self.qm_forces)
        return float(np.sqrt(np.mean((rows @ theta - forces) ** 2)))


def target_set(frames: Sequence[tuple[str, Atoms]]) -> ForceSet:
    """Free atoms' force rows with their target forces; QM-region rows kept explicitly."""
    atoms = [a for _, a in frames]
    return ForceSet(atoms, [free_mask(a) for a in atoms],
                    [forces_of(a, s) for s, a in frames],
                    [qm_region_mask(a) for a in atoms], source="targets",
                    sources=[s for s, _ in frames])


def constraint_sums(hard: Sequence[Atoms], soft: Sequence[Atoms], potential: SNAPPotential,
                    workers: int = 1, cache: DescriptorCache | None = None,
                    targets: ForceSet | None = None
                    ) -> tuple[np.ndarray, NormalEquations, ForceSums | None]:
    """(hard rows, soft normal equations, target sums or None), in one pass over the sets.

    The pipeline calls it without targets as soon as the constraint sets exist, so the
    retraining, which asks for the same sets, finds them in ``cache``.
    """
    force_sets = [ForceSet(list(soft), source="soft")] + ([targets] if targets else [])
    sums, (hard_rows,) = descriptor_sums(potential, force_sets, [list(hard)],
                                         energy_sources=["hard set"], workers=workers,
                                         cache=cache)
    return hard_rows, sums[0].normal, (sums[1] if targets else None)


def collect(targets: Sequence[tuple[str, Atoms]], hard: Sequence[Atoms],
            soft: Sequence[Atoms], potential: SNAPPotential, workers: int = 1,
            cache: DescriptorCache | None = None):
    """(TargetData, hard rows, soft normal equations), every configuration of the three sets
    one job for ``workers`` processes (sets found in ``cache`` are read instead).  The
    target masks are checked before any descriptor is computed."""
    fs = target_set(targets)
    n_atoms = sum(int(m.sum()) for m in fs.force_masks)
    if n_atoms == 0:
        raise QmmlError("targets: no target atoms (every atom is fixed, or no frames)")
    if not any((k & m).any() for k, m in zip(fs.keep_masks, fs.force_masks)):
        raise QmmlError("targets: 'region' arrays present but no free atom has region QM")
    hard_rows, soft_normal, tsum = constraint_sums(hard, soft, potential, workers, cache, fs)
    data = TargetData(tsum.normal, tsum.kept_rows, tsum.kept_targets, n_atoms,
                      sum(1 for m in fs.force_masks if m.any()))
    return data, hard_rows, soft_normal


def retrain(potential: SNAPPotential, targets: Sequence[tuple[str, Atoms]],
            hard: Sequence[Atoms], soft: Sequence[Atoms], lambda0: float = 500.0,
            lambda_soft: float = 1.0, quadratic: bool = False, workers: int = 1,
            cache: DescriptorCache | None = None,
            log: Callable[[str], None] | None = None,
            paths: Sequence[tuple[str, Sequence[Atoms]]] = (),
            lambda_path: float = LAMBDA_PATH) -> tuple[SNAPPotential, dict]:
    """Retrain Θ on target forces; returns the new potential and the report dict.

    ``cache``: descriptor sums of sets computed before are read from it (new ones stored).
    ``log``: progress lines (the descriptors take most of the time).
    ``paths``: (source, ordered images) of QM/ML paths whose virtual-work energies are
    targets too, weighted ``lambda_path`` (eV⁻², against the force rows' (eV/Å)⁻²; see
    :mod:`qmml.path_energy`); with ``lambda_path`` 0 they are only reported on.
    """
    start = time.perf_counter()
    pot0 = potential.to_quadratic() if quadratic else potential
    theta0 = pot0.theta
    if not targets:
        raise QmmlError("targets: empty target set")
    targets, foreign_targets = split_by_species(targets, potential)
    paths, foreign_paths = split_by_species(paths, potential)
    foreign = foreign_targets + foreign_paths
    if foreign and log:
        log(f"retrain: {len(foreign)} target frame(s) or path(s) hold species the potential "
            f"({', '.join(potential.elements)}) lacks and are left out: "
            + "; ".join(foreign))
    if not targets:
        raise QmmlError(f"targets: every target frame holds species the potential "
                        f"({', '.join(potential.elements)}) lacks: {'; '.join(foreign_targets)}")
    if not hard:
        raise QmmlError("hard set is empty: retraining without hard constraints would not "
                        "preserve elastic properties")
    t0 = time.perf_counter()
    if log:
        log(f"retrain: descriptors of {len(targets)} target, {len(hard)} hard and "
            f"{len(soft)} soft configurations ({pot0.n_coefficients} coefficients, "
            f"{workers} worker{'s' if workers != 1 else ''})")
    data, hard_rows, soft_ne = collect(targets, hard, soft, pot0, workers, cache)
    path_sets = [path_rows(images, pot0, source, workers, cache) for source, images in paths]
    t_desc = time.perf_counter() - t0
    if log:
        log(f"retrain: descriptors done in {t_desc:.1f} s"
            + (f" (cache: {cache.read} read, {cache.computed} computed)" if cache else "")
            + "; solving the constrained least squares")
    gtg, gtf = add_path_rows(data.normal.matrix(), data.normal.gtf, path_sets, lambda_path)
    soft_ata = soft_ne.matrix() if soft_ne.n_rows else None
    result = solve_constrained(theta0, gtg, gtf, hard=hard_rows,
                               soft_ata=soft_ata, lambda_soft=lambda_soft, lambda0=lambda0)
    theta = result.theta
    delta = theta - theta0
    report = {
        "qm_force_rmse_before": data.qm_rmse(theta0),
        "qm_force_rmse_after": data.qm_rmse(theta),
        "target_force_rmse_before": data.normal.rmse(theta0),
        "target_force_rmse_after": data.normal.rmse(theta),
        "hard_residual_max": result.hard_residual_max,
        "soft_force_change_rmse": soft_ne.rmse(delta) if soft_ne.n_rows else None,
        "hard_rank": result.hard_rank,
        "hard_spectrum": result.diagnostics["hard_spectrum"],
        "n_hard_rows": result.n_hard_rows,
        "n_soft_rows": soft_ne.n_rows,
        "n_coefficients": int(theta.size),
        "n_target_atoms": data.n_atoms,
        "n_target_frames": data.n_frames,
        "n_qm_atoms": int(sum(len(f) for f in data.qm_forces) // 3),
        "lambda0": lambda0,
        "lambda_soft": lambda_soft,
        "quadratic": bool(pot0.quadratic),
        "seconds_descriptors": t_desc,
        "descriptor_cache": {"read": cache.read, "computed": cache.computed} if cache
        else None,
        "seconds_solve": result.seconds,
        "seconds": time.perf_counter() - start,
        "rmse_definition": "root mean square of force-component errors (eV/Å)",
        "lambda_path": lambda_path if path_sets else None,
        "paths": [path_report(p, theta0, theta) for p in path_sets],
        "left_out": foreign,
    }
    return pot0.with_theta(theta), report


def split_by_species(items: Sequence[tuple[str, Atoms | Sequence[Atoms]]],
                     potential: SNAPPotential) -> tuple[list, list[str]]:
    """(the (source, frame or path) items whose atoms are all of the potential's species,
    the sources of the others with their foreign species).  A potential without He cannot
    learn forces or energies that He takes part in: He sits in the QM region and the ML
    evaluation leaves it out, so such frames and paths are not retraining targets."""
    known = set(potential.elements)
    kept, foreign = [], []
    for source, frames in items:
        symbols = set()
        for atoms in [frames] if isinstance(frames, Atoms) else frames:
            symbols.update(atoms.get_chemical_symbols())
        if symbols <= known:
            kept.append((source, frames))
        else:
            foreign.append(f"{source} ({', '.join(sorted(symbols - known))})")
    return kept, foreign


def path_report(rows: PathRows, theta_before: np.ndarray, theta_after: np.ndarray) -> dict:
    """Barrier and energy-profile errors of one path before and after retraining (eV)."""
    reference = rows.reference_profile()

    def rmse(theta):
        return float(np.sqrt(np.mean((rows.profile(theta) - reference) ** 2)))

    # a downhill path (a binding path towards the core) has no barrier to compare
    has_barrier = reference.max() > 0
    return {"source": rows.source, "images": int(reference.size),
            "barrier_qmml_virtual_work": float(reference.max()),
            "barrier_before": float(rows.profile(theta_before).max()),
            "barrier_after": float(rows.profile(theta_after).max()),
            "barrier_relative_error_before": rows.barrier_error(theta_before)
            if has_barrier else None,
            "barrier_relative_error_after": rows.barrier_error(theta_after)
            if has_barrier else None,
            "profile_rmse_before": rmse(theta_before), "profile_rmse_after": rmse(theta_after)}
