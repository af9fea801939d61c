"""Descriptor sums over many configurations: force normal equations and per-atom energy
rows of whole sets, optionally spread over worker processes and read from a cache."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.descriptors.normal import ForceSums, NormalEquations
from qmml.descriptors.snap import _spatial_split, compute_descriptors
from qmml.descriptors.workers import parallel_map, release_free_memory
from qmml.potential import SNAPPotential

if TYPE_CHECKING:
    from qmml.descriptors.cache import DescriptorCache


def energy_rows(structures: Iterable[Atoms], potential: SNAPPotential,
                source: str = "hard set", workers: int = 1,
                cache: "DescriptorCache | None" = None) -> np.ndarray:
    """Per-atom mean descriptor of each configuration: row·Θ = energy per atom.

    ``workers`` > 1 spreads the configurations over that many processes; with ``cache``
    the rows of a set computed before (same frames, same order) are read instead.
    """
    structures = list(structures)
    if not structures:
        raise QmmlError(f"{source}: no configurations")
    return descriptor_sums(potential, energy_sets=[structures], energy_sources=[source],
                           workers=workers, cache=cache)[1][0]


@dataclass
class ForceSet:
    """Configurations whose force rows go into one set of normal equations.

    ``force_masks[f]``: atoms of frame f whose rows enter (None: all).  ``targets[f]``:
    (n_atoms, 3) target forces (None: no GᵀF).  ``keep_masks[f]``: atoms whose rows (and
    targets) are also returned explicitly.
    """

    frames: Sequence[Atoms]
    force_masks: Sequence[np.ndarray | None] | None = None
    targets: Sequence[np.ndarray | None] | None = None
    keep_masks: Sequence[np.ndarray | None] | None = None
    source: str = "configurations"
    sources: Sequence[str] | None = None  # per-frame names for error messages

    def jobs(self) -> list[tuple]:
        n = len(self.frames)
        per_frame = [list(x) if x is not None else [None] * n
                     for x in (self.force_masks, self.targets, self.keep_masks)]
        if any(len(x) != n for x in per_frame):
            raise QmmlError(f"{self.source}: per-frame masks/targets differ in length "
                            f"from the {n} frames")
        names = list(self.sources) if self.sources is not None else \
            [f"{self.source} frame {f}" for f in range(n)]
        if len(names) != n:
            raise QmmlError(f"{self.source}: {len(names)} frame names for {n} frames")
        return [(f, a, *(x[f] for x in per_frame), names[f]) for f, a in enumerate(self.frames)]


def force_normal_equations(frames: Sequence[Atoms], potential: SNAPPotential,
                           force_masks=None, targets=None, keep_masks=None,
                           source: str = "configurations", workers: int = 1) -> ForceSums:
    """Normal equations of the force rows of ``frames`` (see ForceSet for the arguments)."""
    return descriptor_sums(potential, [ForceSet(frames, force_masks, targets, keep_masks,
                                                source)], workers=workers)[0][0]


def descriptor_sums(potential: SNAPPotential, force_sets: Sequence[ForceSet] = (),
                    energy_sets: Sequence[Sequence[Atoms]] = (),
                    energy_sources: Sequence[str] | None = None, workers: int = 1,
                    cache: "DescriptorCache | None" = None
                    ) -> tuple[list[ForceSums], list[np.ndarray]]:
    """Force normal equations of each ForceSet and per-atom energy rows of each energy set.

    Only one configuration's rows are in memory per process at a time.  With ``workers``
    > 1 every configuration of every set is a job for a pool of that many processes (each
    with its own LAMMPS), largest first so the small ones fill the gaps at the end; the
    sums equal the serial ones up to the order of floating-point additions.  With a
    ``cache``, a set whose sums are stored there is read instead of computed, and every
    computed set is stored.
    """
    sources = list(energy_sources) if energy_sources is not None else \
        [f"energy set {k}" for k in range(len(energy_sets))]
    force_jobs = [fs.jobs() for fs in force_sets]  # also checks the per-frame lengths
    force_keys = [cache.key(potential, "force", jobs) if cache else None
                  for jobs in force_jobs]
    energy_keys = [cache.key(potential, "energy", [(a,) for a in frames]) if cache else None
                   for frames in energy_sets]
    sums: list[ForceSums | None] = [cache.load_force_sums(key, fs.source) if cache else None
                                    for key, fs in zip(force_keys, force_sets)]
    rows: list[np.ndarray | None] = [cache.load_rows(key, source) if cache else None
                                     for key, source in zip(energy_keys, sources)]
    jobs = []  # (cost, kind, set index, payload)
    for k, set_jobs in enumerate(force_jobs):
        if sums[k] is None:
            jobs += [(3.0 * len(job[1]), "force", k, ((job[0], 0), *job[1:]))
                     for job in set_jobs]
    for k, frames in enumerate(energy_sets):
        if rows[k] is None:
            jobs += [(0.3 * len(a), "energy", k, (f, a, f"{sources[k]} frame {f}"))
                     for f, a in enumerate(frames)]
    jobs.sort(key=lambda j: -j[0])
    jobs = _balanced(jobs, workers)
    new_sums = {k: ForceSums(NormalEquations(potential.n_coefficients), [], [])
                for k, s in enumerate(sums) if s is None}
    kept: dict[int, dict] = {k: {} for k in new_sums}
    energies: dict[int, dict] = {k: {} for k, r in enumerate(rows) if r is None}
    for part in parallel_map(_chunk_job, potential, _chunks(jobs, workers), workers):
        for k, normal in part["normal"].items():
            new_sums[k].normal.merge(normal)
        for (k, f), kept_rows in part["kept"].items():  # f: (frame, part of frame)
            kept[k][f] = kept_rows
        for (k, f), row in part["energy"].items():
            energies[k][f] = row
    for k, s in new_sums.items():
        for _, group in groupby(sorted(kept[k]), key=lambda f: f[0]):
            parts = [kept[k][f] for f in group]
            # a frame split into parts: its kept rows back in atom order
            order = np.argsort(np.concatenate([atoms for *_, atoms in parts]), kind="stable")
            rows3 = (3 * order[:, None] + np.arange(3)).ravel()
            s.kept_rows.append(np.vstack([rows for rows, *_ in parts])[rows3])
            s.kept_targets.append(np.concatenate([t for _, t, _ in parts])[rows3])
        sums[k] = s
        if cache:
            cache.store_force_sums(force_keys[k], s, force_sets[k].source)
    for k, e in energies.items():
        rows[k] = np.array([e[f] for f in range(len(e))])
        if cache:
            cache.store_rows(energy_keys[k], rows[k], sources[k])
    return sums, rows


def _balanced(jobs: list, workers: int) -> list:
    """Split the force jobs that would leave workers idle at the end.

    Jobs are sorted by cost.  The large force jobs (at least half the largest cost) are
    the bulk of the work; when their count is not a multiple of ``workers``, the last
    ones are split into ``workers`` parts by their selected atoms (halves of the frame
    along its longest extent).  Each part computes complete rows for its own atoms, so
    the parts' normal equations add up to the frame's; the price is the central atoms
    near the cut, which both parts evaluate (~5 % of a 2000-atom image).
    """
    force = [j for j in jobs if j[1] == "force"]
    if workers <= 1 or not force:
        return jobs
    big = [j for j in force if j[0] >= force[0][0] / 2]
    tail = {id(j) for j in big[len(big) - len(big) % workers:]}
    out = []
    for job in jobs:
        out += _split_force_job(job, workers) if id(job) in tail else [job]
    return sorted(out, key=lambda j: -j[0])


def _split_force_job(job: tuple, parts: int) -> list[tuple]:
    cost, kind, k, (f, atoms, mask, target, keep, source) = job
    sel = np.arange(len(atoms)) if mask is None else np.flatnonzero(mask)
    if sel.size < parts:
        return [job]
    out = []
    for p, piece in enumerate(_spatial_split(sel, atoms.positions[sel], parts)):
        sub = np.zeros(len(atoms), dtype=bool)
        sub[np.sort(piece)] = True
        out.append((cost / parts, kind, k, ((f[0], p), atoms, sub, target, keep, source)))
    return out


def _chunks(jobs: list, workers: int) -> list[list]:
    """Group consecutive small jobs so each chunk costs at least ~1/2 of the largest job:
    every chunk returns its own GᵀG (20 MB in the quadratic space) to be sent to and added
    by the main process; half-size chunks still balance the load of the last jobs."""
    if not jobs:
        return []
    floor = jobs[0][0] / 2 if workers > 1 else float("inf")
    chunks, current, cost = [], [], 0.0
    for job in jobs:
        current.append(job)
        cost += job[0]
        if cost >= floor:
            chunks.append(current)
            current, cost = [], 0.0
    if current:
        chunks.append(current)
    return chunks


def _chunk_job(potential: SNAPPotential, chunk: list) -> dict:
    try:
        return _compute_chunk(potential, chunk)
    finally:
        release_free_memory()


def _compute_chunk(potential: SNAPPotential, chunk: list) -> dict:
    out: dict = {"normal": {}, "kept": {}, "energy": {}}
    for _, kind, k, payload in chunk:
        if kind == "energy":
            f, atoms, source = payload
            out["energy"][(k, f)] = compute_descriptors(
                atoms, potential, forces=False, source=source).energy_per_atom
            continue
        f, atoms, mask, target, keep, source = payload
        sel = np.ones(len(atoms), bool) if mask is None else np.asarray(mask, bool)
        if not sel.any():
            continue
        rows = compute_descriptors(atoms, potential, force_mask=sel, source=source,
                                   energy=False).forces
        t = None if target is None else np.asarray(target, float)[sel].ravel()
        normal = out["normal"].setdefault(k, NormalEquations(potential.n_coefficients))
        normal.add(rows, t)
        if keep is not None:
            rows_kept = np.repeat(np.asarray(keep, bool)[sel], 3)
            out["kept"][(k, f)] = (rows[rows_kept], t[rows_kept] if t is not None
                                   else np.zeros(int(rows_kept.sum())),
                                   np.flatnonzero(np.asarray(keep, bool) & sel))
    return out
