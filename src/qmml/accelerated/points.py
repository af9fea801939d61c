"""The QM points of an accelerated run: out as frames (for retraining, ``--qm-frames``), back
in as seeds of a later run (``--seed-frames``), and their part of the run fingerprint."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.accelerated.settings import AcceleratedStats
from qmml.frames import output_frame


def qm_point_frames(images: Sequence[Atoms], moving: Sequence[int], stats: AcceleratedStats,
                    info: dict) -> list[Atoms]:
    """Every QM-called geometry of an accelerated run as QM/ML frames: the moving images
    (``moving``: indices into ``images``, which give numbers, cell, region, fix_mask) at each
    QM call with their true mixed forces, rejected probes included, since each is QM data
    as good as the accepted ones, and replayed seeds too (their QM data are what this run's
    surrogates stand on).  Info: ``info`` plus ``qm_point`` (call order), ``qm_point_fmax``
    (true fmax there), ``qm_point_image`` (index into ``images``), ``qm_point_final`` and
    ``qm_point_seed`` (replayed from an earlier run, no QM call made here).  NEB images
    QM-called alone (probes, the start check) follow, with ``qm_single_image`` (their call
    order) in place of ``qm_point``: retraining data, but no band a later run could start
    from."""
    frames = []
    for g, ev in enumerate(stats.qm_points):
        for n, j in enumerate(moving):
            atoms = images[j].copy()
            atoms.positions = ev.positions[n]
            frames.append(output_frame(atoms, dict(
                info, qm_point=g, qm_point_fmax=float(ev.fmax), qm_point_image=int(j),
                qm_point_final=g == stats.accepted_point, qm_point_seed=g < stats.n_seeds),
                forces=ev.forces[n]))
    for k, (n, positions, forces) in enumerate(stats.single_images):
        atoms = images[moving[n]].copy()
        atoms.positions = positions
        frames.append(output_frame(atoms, dict(info, qm_single_image=k,
                                               qm_point_image=int(moving[n])), forces=forces))
    return frames


def seed_points(frames: Sequence[Atoms], images: Sequence[Atoms], moving: Sequence[int],
                source: str) -> list[np.ndarray]:
    """The QM points of an earlier run's :func:`qm_point_frames` (read from ``source``) as
    seeds for a run of ``images`` with moving images ``moving``: one (len(moving), N, 3)
    array per QM point, in call order.  QmmlError naming ``source`` if its frames do not
    belong to these images."""
    moving = list(moving)
    points: dict[int, dict[int, np.ndarray]] = {}
    for n, a in enumerate(frames):
        if "qm_single_image" in a.info:  # an NEB image QM-called alone: no band point
            continue
        if "qm_point" not in a.info or "qm_point_image" not in a.info:
            raise QmmlError(f"{source}: frame {n} has no qm_point/qm_point_image info "
                            f"(not a --qm-frames file of an accelerated run)")
        j = int(a.info["qm_point_image"])
        if j not in moving:
            raise QmmlError(f"{source}: frame {n} is image {j}, but the moving images here "
                            f"are {moving[0]}..{moving[-1]}")
        if len(a) != len(images[j]) or (a.numbers != images[j].numbers).any():
            raise QmmlError(f"{source}: frame {n} has {len(a)} atoms of other species or "
                            f"order than the structure's {len(images[j])}")
        points.setdefault(int(a.info["qm_point"]), {})[j] = a.positions
    seeds = []
    for g in sorted(points):
        if sorted(points[g]) != list(moving):
            raise QmmlError(f"{source}: QM point {g} lacks images "
                            f"{sorted(set(moving) - set(points[g]))}")
        seeds.append(np.array([points[g][j] for j in moving]))
    return seeds


def _digest(arrays) -> str:
    """Short hash of a sequence of float arrays (part of a run fingerprint)."""
    import hashlib

    h = hashlib.sha256()
    for x in arrays:
        h.update(np.ascontiguousarray(x, dtype=float).tobytes())
    return h.hexdigest()[:16]


def seeds_id(seeds: Sequence[np.ndarray]) -> tuple[str, ...]:
    """Part of the run fingerprint (nothing without seeds: unseeded checkpoints stay valid)."""
    return ("seeds", _digest(seeds)) if len(seeds) else ()


def hard_id(hard: Sequence[Atoms] | None) -> str:
    if not hard:
        return "default-strain-set"
    return _digest(x for a in hard for x in (a.positions, a.cell.array))
