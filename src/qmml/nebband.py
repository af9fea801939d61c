"""The NEB band of a force-mixed path: spline tangents, and a climbing image chosen by the
virtual work of the forces, since force mixing has no energy (ASE ``NEB`` would take
the highest of all-zero energies, i.e. the last moving image)."""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize.precon import Precon, PreconImages


def virtual_work_energies(images: list[Atoms], forces: np.ndarray) -> np.ndarray:
    """Energy of every image relative to the first: minus the work of the real forces
    along the band, trapezoid rule image to image (fixed atoms do not move, so their
    forces do no work)."""
    energies = np.zeros(len(images))
    for i in range(1, len(images)):
        step = images[i].positions - images[i - 1].positions
        energies[i] = energies[i - 1] - 0.5 * float(np.vdot(forces[i - 1] + forces[i], step))
    return energies


class _SplineOncePerBand(PreconImages):
    """ASE's per-image preconditioners, with the band's spline fitted once per set of
    positions.  ASE's ``spline`` property recomputes every image's reaction coordinate,
    with ``find_mic`` over all atoms, on each of its four reads per image and band
    evaluation: 0.81 s against 0.058 s on a 13-image band of 6396 atoms per image
    (``benchmarks/bench_core.py neb-band``)."""

    @property
    def spline(self):
        positions = np.concatenate([image.positions for image in self.images])
        if self._spline is None or not np.array_equal(positions, self._fitted_at):
            self._spline = self.spline_fit()
            self._fitted_at = positions
        return self._spline


class ForceNEB(NEB):
    """ASE ``NEB`` (spline method) whose image energies are the virtual-work energies of the
    band's real forces, so that with ``climb`` the climbing image is the highest image of
    the virtual-work profile (the saddle) and feels the full force with its tangential
    component inverted."""

    def __init__(self, images: list[Atoms], k: float = 0.1, climb: bool = False,
                 precon=None) -> None:
        super().__init__(images, k=k, climb=climb, method="spline", precon=precon)

    def get_forces(self):
        # ASE's own test for "preconditioners not built yet": build ours first, so that
        # NEB.get_forces keeps them instead of making plain PreconImages
        if self.precon is None or isinstance(self.precon, (str, Precon, list)):
            self.precon = _SplineOncePerBand(self.precon, self.images)
        if self.climb:
            real = np.array([im.get_forces(apply_constraint=False) for im in self.images])
            for im, e in zip(self.images, virtual_work_energies(self.images, real)):
                # read back by NEB.get_forces through get_potential_energy (no new call:
                # the positions did not change)
                im.calc.results["energy"] = float(e)
        forces = super().get_forces().reshape(self.nimages - 2, self.natoms, 3)
        for f, image in zip(forces, self.images[1:-1]):
            # a fixed atom cannot move: the spring force along the tangent must not
            # count on it (atoms fixed for a partial relaxation differ between images)
            for c in image.constraints:
                if isinstance(c, FixAtoms):
                    f[c.index] = 0.0
        return forces.reshape(-1, 3)


def make_neb(images: list[Atoms], k: float = 0.1, climb: bool = False, precon=None) -> NEB:
    """The band every QM/ML NEB optimiser moves (spline tangents; ``climb``: climbing
    image at the virtual-work maximum; ``precon``: ASE's per-image preconditioner of the
    image forces, e.g. ``"Exp"``)."""
    return ForceNEB(images, k=k, climb=climb, precon=precon)
