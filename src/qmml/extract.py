"""Force extraction: gather an iteration's QM/ML frames into one retraining target file.

Each frame keeps its mixed QM/ML ``forces``, ``region`` and ``fix_mask``; NEB end images
are dropped when the relaxed end states are already included (no double weight).  The
summary records how far the iteration's own potential is from the QM/ML forces on the
QM atoms: the error retraining is meant to remove.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.forcemixing import neb_moving_images
from qmml.potential import SNAPPotential
from qmml.frames import forces_of, free_mask, qm_region_mask, read_output_frames


def gather_frames(paths: Sequence[str | Path]) -> list[Atoms]:
    frames = []
    for path in paths:
        group = read_output_frames(path)
        if len(group) > 2 and "neb_image" in group[0].info:
            # end states come from their own relaxations
            group = [group[i] for i in neb_moving_images(len(group))]
        for i, atoms in enumerate(group):
            forces = forces_of(atoms, f"{path} frame {i}")
            atoms.calc = None
            atoms.arrays["forces"] = forces
            atoms.info["source_file"] = str(path)
            frames.append(atoms)
    if not frames:
        raise QmmlError("extract-forces: no QM/ML frames given")
    return frames


def split_heldout(frames: Sequence[Atoms], fraction: float
                  ) -> tuple[list[Atoms], list[Atoms]]:
    """(training frames, held-out frames): frame k (0-based, in gathering order) is held
    out when ⌊(k+1)·f⌋ > ⌊k·f⌋, i.e. every 1/f-th frame, the same frames on every run;
    ⌊n·f⌋ of n frames, never all of them (f < 1)."""
    if not 0.0 <= fraction < 1.0:
        raise QmmlError(f"heldout_fraction: {fraction} must be in [0, 1)")
    held = [int(np.floor((k + 1) * fraction)) > int(np.floor(k * fraction))
            for k in range(len(frames))]
    return ([a for a, h in zip(frames, held) if not h],
            [a for a, h in zip(frames, held) if h])


def qm_atom_forces(frames: Sequence[Atoms], potential: SNAPPotential,
                   source: str = "targets") -> tuple[np.ndarray, np.ndarray]:
    """(QM/ML forces, ML forces of ``potential``) on the free QM atoms of every frame,
    concatenated in frame order (eV/Å).  A frame without a ``region`` array counts every
    free atom as QM, as ``qmml retrain`` does."""
    calc = potential.calculator()
    ref, ml = [], []
    for k, atoms in enumerate(frames):
        qm = qm_region_mask(atoms) & free_mask(atoms)
        probe = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        probe.calc = calc
        ref.append(forces_of(atoms, f"{source} frame {k}")[qm])
        ml.append(probe.get_forces()[qm])
    ref_all, ml_all = np.concatenate(ref), np.concatenate(ml)
    if not len(ref_all):
        raise QmmlError(f"{source}: no free atom has region QM")
    return ref_all, ml_all


def qm_force_errors(frames: Sequence[Atoms], potential: SNAPPotential) -> dict:
    """RMSE (force components, eV/Å) of the potential vs the QM/ML forces on QM atoms."""
    ref, ml = qm_atom_forces(frames, potential)
    d = ml - ref
    return {"qm_force_rmse": float(np.sqrt(np.mean(d ** 2))),
            "qm_force_max_error": float(np.abs(d).max()),
            "qm_force_rms": float(np.sqrt(np.mean(ref ** 2))),
            "n_qm_atoms": int(len(d)), "n_frames": len(frames)}
