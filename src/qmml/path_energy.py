"""Energies along an ordered QM/ML path as linear training rows.

Force mixing gives forces, not energies.  Along an ordered path (NEB images, end points
included) the virtual work of the mixed forces,

    E(s) − E(0) = −∫_0^s F(s')·dx/ds' ds'      (free atoms),

is the energy change of the QM/ML system.  The integral is taken as ASE's
``NEB.integrate_forces`` does (Swinburne & Kermode 2017): cubic splines of the positions
and of the forces through the images against the normalised Euclidean arc length, their
product integrated on a fine grid; on a qmml NEB output this reproduces its
``neb_energy_virtual_work`` at the images.  A trapezoid rule on the images alone
underestimates a glide barrier by ~20 % with 5 images (sinusoidal profile).  A linear potential's energy change between two
images of the same atoms is (Σ_i D(x_k)_i − Σ_i D(x_0)_i)·Θ, so every image after the
first gives one linear row.  Retraining with these rows makes the potential's energy
profile along the path follow the QM/ML one, which force rows constrain only indirectly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

from qmml import QmmlError
from qmml.frames import forces_of, free_mask


@dataclass
class PathRows:
    """The energy rows of one path: ``rows @ Θ`` should equal ``targets`` (eV)."""

    source: str
    rows: np.ndarray      # (n_images − 1, K): descriptor-sum change from image 0
    targets: np.ndarray   # (n_images − 1,): virtual-work energy change from image 0

    def profile(self, theta: np.ndarray) -> np.ndarray:
        """The potential's energy along the path, image 0 at zero."""
        return np.concatenate([[0.0], self.rows @ theta])

    def reference_profile(self) -> np.ndarray:
        return np.concatenate([[0.0], self.targets])

    def barrier_error(self, theta: np.ndarray) -> float:
        """(max of the potential's profile − max of the QM/ML one) / the QM/ML barrier."""
        reference = self.reference_profile().max()
        if reference <= 0:
            raise QmmlError(f"{self.source}: the QM/ML path has no barrier "
                            f"(virtual-work maximum {reference:.3g} eV at the first image)")
        return float((self.profile(theta).max() - reference) / reference)


def ordered_images(frames: Sequence[Atoms], source: str) -> list[Atoms]:
    """The path's images in order (by info ``neb_image`` when every frame has it), checked to
    be the same atoms with forces."""
    frames = list(frames)
    if len(frames) < 2:
        raise QmmlError(f"{source}: a path needs at least 2 images, got {len(frames)}")
    if all("neb_image" in a.info for a in frames):
        frames = sorted(frames, key=lambda a: int(a.info["neb_image"]))
    numbers = frames[0].numbers
    for k, atoms in enumerate(frames):
        if len(atoms) != len(numbers) or (atoms.numbers != numbers).any():
            raise QmmlError(f"{source}: image {k} has other atoms than image 0 "
                            "(a path is one set of atoms moving)")
        forces_of(atoms, f"{source} image {k}")
    return frames


SPLINE_POINTS = 1000  # integration grid of the splines (as ASE's integrate_forces)


def virtual_work_energies(images: Sequence[Atoms]) -> np.ndarray:
    """E_k − E_0 of the module docstring for every image (the first is 0), eV."""
    from scipy.integrate import cumulative_trapezoid
    from scipy.interpolate import CubicSpline

    free = free_mask(images[0])
    # positions unwrapped along the path (minimum-image steps), free atoms only
    x = [images[0].positions[free]]
    for a, b in zip(images[:-1], images[1:]):
        step, _ = find_mic(b.positions - a.positions, a.cell, a.pbc)
        x.append(x[-1] + step[free])
    x = np.array([p.ravel() for p in x])
    forces = np.array([forces_of(a, "path")[free].ravel() for a in images])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
    if arc[-1] <= 0 or (np.diff(arc) <= 0).any():
        raise QmmlError("path: two consecutive images at the same positions")
    s = arc / arc[-1]
    grid = np.linspace(0.0, 1.0, SPLINE_POINTS * (len(images) - 1) + 1)
    work = (CubicSpline(s, forces)(grid) * CubicSpline(s, x).derivative()(grid)).sum(axis=1)
    energy = -cumulative_trapezoid(work, grid, initial=0.0)
    return np.interp(s, grid, energy)


def is_binding_path(frames: Sequence[Atoms]) -> bool:
    """A ``qmml binding`` output: a straight path with its segment's E_b in the info."""
    return all("path_image" in a.info for a in frames) and "E_b_qmml" in frames[0].info


def path_rows(frames: Sequence[Atoms], potential, source: str = "path",
              workers: int = 1, cache=None) -> PathRows:
    """The energy rows of an ordered QM/ML path in ``potential``'s descriptor space.

    A binding path (:func:`is_binding_path`) gives only its end-to-end row, with the
    binding code's own quadrature as target (E_near − E_far = −E_b of the segment): its
    images lie on a straight line between two relaxed states, unrelaxed, and the
    virtual work along it peaks at tens of eV, far from any configuration the potential
    should be fitted to."""
    from qmml.descriptors import energy_rows

    if is_binding_path(frames):
        frames = sorted(frames, key=lambda a: int(a.info["path_image"]))
        ends = ordered_images([frames[0], frames[-1]], source)
        sums = energy_rows(ends, potential, source=source, workers=workers,
                           cache=cache) * len(ends[0])
        return PathRows(source, sums[1:] - sums[0],
                        np.array([-float(frames[0].info["E_b_qmml"])]))
    images = ordered_images(frames, source)
    sums = energy_rows(images, potential, source=source, workers=workers,
                       cache=cache) * len(images[0])  # per-atom means -> sums
    return PathRows(source, sums[1:] - sums[0], virtual_work_energies(images)[1:])


def add_path_rows(gtg: np.ndarray, gtf: np.ndarray, paths: Sequence[PathRows],
                  weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Normal equations with ``weight``·Σ_paths ‖RΘ − E‖² added (new arrays)."""
    gtg, gtf = np.array(gtg, dtype=float), np.array(gtf, dtype=float)
    for p in paths:
        gtg += weight * p.rows.T @ p.rows
        gtf += weight * p.rows.T @ p.targets
    return gtg, gtf
