"""The surrogate: force mixing with a retrained SNAP in place of QM (:class:`SurrogateMixing`),
its training data (:class:`ForceDifferences`), its fit and its hard set."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from qmml.descriptors import DescriptorCache, energy_rows
from qmml.fitting import HardRows, solve_constrained
from qmml.potential import SNAPPotential


def default_hard_set(potential: SNAPPotential) -> list[Atoms]:
    """Small in-process strain set of Θ_i (see module docstring): 30 cells of 54 atoms."""
    from qmml.constraints import strain_set

    return strain_set(potential, n_cells=3, n_strains=5, max_strain=0.01)


def hard_rows(configs: Sequence[Atoms], space: SNAPPotential,
              descriptor_cache: DescriptorCache | None = None,
              log: Callable[[str], None] | None = None) -> HardRows:
    """Energy rows of the hard configurations in the surrogate's descriptor space ``space``,
    decomposed once for all the run's fits.

    The pipeline's constraint_descriptors job caches these very rows (same frames, same
    order, same descriptor space) for the retraining: with ``descriptor_cache`` they are
    read instead of recomputed."""
    n_read = len(descriptor_cache.read) if descriptor_cache is not None else 0
    rows = energy_rows(configs, space, cache=descriptor_cache)
    if descriptor_cache is not None and log:
        how = "read from" if len(descriptor_cache.read) > n_read else "computed into"
        log(f"accelerated: {len(rows)} hard rows {how} the descriptor cache "
            f"{descriptor_cache.folder}")
    return HardRows.of(rows)


def fit_surrogate(theta_i: np.ndarray, data: "ForceDifferences", anchor: int,
                  force_weight: float, hard: HardRows, lambda0: float
                  ) -> tuple[np.ndarray, float]:
    """Surrogate coefficients Θ_k fitted to every QM geometry in ``data`` (secants from
    geometry ``anchor`` plus absolute forces), the ``hard`` rows kept exact, Tikhonov
    towards Θ_i; and the largest hard-row residual.  Θ_i itself while there are no data
    (one geometry, no force rows)."""
    gtg, gtf = data.normal_equations(anchor, force_weight)
    if not gtg.any():
        return theta_i, 0.0
    # λ0 relative to the data's own scale: one setting suits any descriptor space
    scale = max(float(np.trace(gtg)) / theta_i.size, 1e-300)
    fit = solve_constrained(theta_i, gtg, gtf, hard=hard, lambda0=lambda0 * scale)
    return fit.theta, fit.hard_residual_max


class SurrogateFailure(Exception):
    """A surrogate evaluation failed (a LAMMPS error, non-finite forces or positions): the
    step is rejected, the run goes on."""


class SurrogateMixing(Calculator):
    """Force mixing with a surrogate SNAP in place of QM (module docstring, step 3).

    The surrogate's QM-atom forces are computed on a cluster: every atom within
    ``reach`` of a QM atom, cut at the geometry of :meth:`set_potential` (the anchor).
    A force on atom k depends only on atoms within twice the SNAP cutoff of k, so the
    cluster forces are exact while no atom moves further than (reach − 2·cutoff)/2 from
    the anchor; the caller keeps the trust radius below that.

    ``phase`` says which atoms the evaluation is for (the others get zero force, and the
    caller fixes them):

    - ``"whole"``: every atom; the ML forces of the whole system (``ml_calc``);
    - ``"active"``: the atoms of ``active`` only; their ML forces from a second cluster
      (the active atoms and everything within ``reach`` of them, ``ml_cluster_calc``), so
      that in a large system an inner step costs the region around the QM atoms, not the
      whole system;
    - ``"far"``: the atoms outside ``active``, with plain ML forces of the whole system
      (their true forces are those; no QM atom moves).

    ``plain`` (Θ_i itself, no offsets, no linear term): the QM atoms get the ML forces
    too, with no cluster evaluation.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, qm_mask: np.ndarray, ml_calc: Calculator, potential: SNAPPotential,
                 reach: float, zero_mean: bool = True, active: np.ndarray | None = None,
                 ml_cluster_calc: Calculator | None = None) -> None:
        super().__init__()
        self.qm_mask = np.asarray(qm_mask, dtype=bool)
        self.ml_calc, self.potential, self.reach = ml_calc, potential, reach
        self.zero_mean = zero_mean
        self.active = None if active is None else np.asarray(active, dtype=bool)
        self.ml_cluster_calc = ml_cluster_calc
        self.phase = "whole"
        self.plain = False
        self.offset = np.zeros((int(self.qm_mask.sum()), 3))
        self.secant = None  # (cluster mask, anchor cluster positions, M, Y): see linear_term
        self._cluster = None  # (atom indices, cluster Atoms with calculator, QM rows)
        self._ml_cluster = None  # (atom indices, cluster Atoms, rows of the active atoms)

    def set_potential(self, potential: SNAPPotential, plain: bool = False) -> None:
        """New surrogate coefficients; the clusters are cut afresh at the next evaluation."""
        self.potential, self.plain = potential, plain
        self._cluster = self._ml_cluster = None
        self.reset()

    def set_phase(self, phase: str) -> None:
        if phase != "whole" and self.active is None:
            raise ValueError(f"surrogate phase '{phase}' needs an active region")
        self.phase = phase
        self.reset()

    def _cut(self, atoms: Atoms, centre: np.ndarray, calc: Calculator):
        """Every atom within ``reach`` of a ``centre`` atom, as (indices, cluster Atoms with
        ``calc``, rows of the centre atoms in the cluster).  Distances are taken from the
        QM atoms only (few), not from every centre atom: the atoms within ``reach`` plus
        the centre's largest distance from them hold every atom within ``reach`` of the
        centre."""
        from ase.geometry import get_distances

        _, dist = get_distances(atoms.positions[self.qm_mask], atoms.positions,
                                cell=atoms.cell, pbc=atoms.pbc)
        dist = dist.min(axis=0)
        index = np.flatnonzero(dist <= self.reach + dist[centre].max())
        cluster = Atoms(atoms.numbers[index], atoms.positions[index], cell=atoms.cell,
                        pbc=atoms.pbc)
        cluster.calc = calc
        return index, cluster, centre[index]

    def _cluster_of(self, atoms: Atoms):
        if self._cluster is None:
            self._cluster = self._cut(atoms, self.qm_mask, self.potential.calculator())
        return self._cluster

    def raw_surrogate_qm_forces(self, atoms: Atoms) -> np.ndarray:
        index, cluster, qm_rows = self._cluster_of(atoms)
        cluster.positions = atoms.positions[index]
        return np.array(cluster.get_forces())[qm_rows]

    def _active_ml_forces(self, atoms: Atoms) -> np.ndarray:
        """ML forces on the active atoms (zero elsewhere), from their cluster."""
        if self._ml_cluster is None:
            self._ml_cluster = self._cut(atoms, self.active, self.ml_cluster_calc)
        index, cluster, rows = self._ml_cluster
        cluster.positions = atoms.positions[index]
        forces = np.zeros((len(atoms), 3))
        forces[index[rows]] = np.array(cluster.get_forces())[rows]
        return forces

    def linear_term(self, positions: np.ndarray) -> np.ndarray | float:
        """QM-atom force correction J·d, d = displacement of the QM cluster's atoms from
        the anchor, J the least-norm matrix with J·s_g = y_g for every stored secant."""
        if self.secant is None:
            return 0.0
        cluster, anchor, m, y = self.secant
        d = (positions[cluster] - anchor).ravel()
        return ((m @ d) @ y).reshape(-1, 3)

    def renew(self, ml_factory: Callable[[], Calculator]) -> None:
        """Fresh LAMMPS instances (a LAMMPS error such as lost atoms leaves an instance
        unusable) from ``ml_factory`` (Θ_i) and for the surrogate's cluster; coefficients,
        offsets and linear term are kept."""
        self.ml_calc = ml_factory()
        if self.ml_cluster_calc is not None:
            self.ml_cluster_calc = ml_factory()
        if self._cluster is not None:
            self._cluster[1].calc = self.potential.calculator()
        self._ml_cluster = None
        self.reset()

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if not np.isfinite(atoms.positions).all():
            raise SurrogateFailure("non-finite positions")
        if self.phase == "active":
            forces = self._active_ml_forces(atoms)
        else:
            forces = np.array(self.ml_calc.get_forces(atoms))
        if self.phase == "far":
            forces[self.active] = 0.0
        elif not self.plain:
            forces[self.qm_mask] = (self.raw_surrogate_qm_forces(atoms) + self.offset
                                    + self.linear_term(atoms.positions))
        if not np.isfinite(forces).all():  # before an optimiser steps on them
            raise SurrogateFailure("non-finite surrogate forces")
        if self.zero_mean and self.phase != "far":
            # what ForceQMMM does to the true forces (in the active phase the far atoms
            # count as force-free: their share of the mean is negligible)
            forces -= forces.mean(axis=0)
        self.results["forces"] = forces
        self.results["energy"] = 0.0


class ForceDifferences:
    """Training data of the surrogate: QM-atom force rows at every QM-called geometry.

    Secants: force CHANGES relative to the anchor (the geometry the next step starts
    from), each divided by how far that geometry is from the anchor, as in a quasi-Newton
    method but satisfied by a physical (constrained SNAP) model; a geometry far from the
    anchor says little about the local curvature that decides the next step, so its secant
    weighs less.  Absolute forces: the QM forces themselves at every geometry, weighted
    ``force_weight`` (1/Å, so that a force error of 1 eV/Å counts as a secant error of
    1 eV/Å² at weight 1).  Secants alone leave Θ_i's curvature in every direction no step
    has explored, and Θ_i is softer than the QM engine along the core modes, so the first
    steps overshoot; fitted to the QM forces of the QM atoms' own environments, as the
    pipeline's retraining is, the surrogate carries the QM curvature there from the first
    QM call on (docs/design.md).  The Δ-correction still makes it exact at the
    anchor.
    """

    def __init__(self, n_images: int, n_coefficients: int) -> None:
        self.rows: list[list[np.ndarray]] = [[] for _ in range(n_images)]
        self.forces: list[list[np.ndarray]] = [[] for _ in range(n_images)]
        self.positions: list[np.ndarray] = []
        self.k = n_coefficients
        # GᵀG, GᵀF of the absolute-force rows: independent of the anchor, so summed once
        # per geometry here instead of at every outer step
        self.absolute_gtg = np.zeros((n_coefficients, n_coefficients))
        self.absolute_gtf = np.zeros(n_coefficients)

    def add(self, rows_per_image: list[np.ndarray], qm_forces: np.ndarray,
            positions: np.ndarray, repeated: Sequence[bool] = ()) -> None:
        """One QM-called geometry.  ``repeated[j]``: image j sits where an earlier
        geometry had it (an NEB image kept at its QM point): its absolute rows are in the
        sums already and are not counted twice."""
        for j, (rows, f) in enumerate(zip(rows_per_image, qm_forces)):
            f = np.asarray(f, float).ravel()
            self.rows[j].append(rows)
            self.forces[j].append(f)
            if not (j < len(repeated) and repeated[j]):
                self.absolute_gtg += rows.T @ rows
                self.absolute_gtf += rows.T @ f
        self.positions.append(np.asarray(positions, float))

    def add_absolute(self, rows: np.ndarray, qm_forces: np.ndarray) -> None:
        """QM forces of one image at a geometry that is not a point of the run (an NEB
        probe): absolute-force rows only, no secant."""
        f = np.asarray(qm_forces, float).ravel()
        self.absolute_gtg += rows.T @ rows
        self.absolute_gtf += rows.T @ f

    def earlier(self, image: int, positions: np.ndarray) -> int | None:
        """Index of a stored geometry with ``image`` exactly at ``positions``, or None."""
        for g, x in enumerate(self.positions):
            if np.array_equal(x[image], positions):
                return g
        return None

    def secants(self, anchor: int):
        """(image, displacement from the anchor, its norm, row change, force change) of every
        stored geometry that differs from the anchor, geometry by geometry."""
        for g, x in enumerate(self.positions):
            for j in range(len(self.rows)):
                displacement = x[j] - self.positions[anchor][j]
                step = float(np.linalg.norm(displacement))
                if step < 1e-8:  # the anchor itself (or a repeat of it)
                    continue
                yield (j, displacement, step, self.rows[j][g] - self.rows[j][anchor],
                       self.forces[j][g] - self.forces[j][anchor])

    def linear_term(self, anchor: int, image: int, theta: np.ndarray, cluster: np.ndarray
                    ) -> tuple | None:
        """Least-norm linear map J of cluster displacements s_g (from the anchor) onto the
        QM-atom force changes y_g that the surrogate Θ misses (a multisecant Broyden
        update on top of the physical model): J = Y^T (S S^T)^+ S, stored as
        (cluster, anchor cluster positions, (S S^T)^+ S, Y).  None without a secant."""
        s, y = [], []
        for j, displacement, _, d_rows, d_forces in self.secants(anchor):
            if j == image:
                s.append(displacement[cluster].ravel())
                y.append(d_forces - d_rows @ theta)
        if not s:
            return None
        s, y = np.array(s), np.array(y)
        m = np.linalg.pinv(s @ s.T, rcond=1e-10, hermitian=True) @ s
        return cluster, self.positions[anchor][image][cluster].copy(), m, y

    def normal_equations(self, anchor: int, force_weight: float
                         ) -> tuple[np.ndarray, np.ndarray]:
        """GᵀG, GᵀF of the secants from ``anchor`` plus the absolute-force rows."""
        gtg, gtf = np.zeros((self.k, self.k)), np.zeros(self.k)
        for _, _, step, d_rows, d_forces in self.secants(anchor):
            d = d_rows / step
            gtg += d.T @ d
            gtf += d.T @ (d_forces / step)
        w2 = force_weight ** 2
        return gtg + w2 * self.absolute_gtg, gtf + w2 * self.absolute_gtf
