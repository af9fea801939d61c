"""ML-accelerated QM/ML relaxation: a retrained surrogate between QM calls.

QM calls are the whole cost of force-mixed QM/ML, and the ML potential is linear in Θ, so a
potential retrained on the QM forces gathered so far is one small linear solve.

0. before the first QM call, relax with the iteration's potential Θ_i alone (the ML
   minimum, no QM call; ``ml_prerelax``): a built dislocation starts from its elastic
   field, several eV/Å from equilibrium, and the ML potential makes those large moves
   for free, so QM calls start where only the QM−ML difference is left to relax.

The outer loop (one QM call per image per outer step):

1. evaluate the TRUE QM/ML forces at the current geometry x_k (through the QM cache);
   converged when they are below ``fmax`` (the only convergence test ever used);
2. retrain a surrogate Θ_k on the raw QM forces of the QM atoms at EVERY QM-called
   geometry of this relaxation (:class:`_ForceDifferences`): as secants, the force change
   from the anchor x_k to each geometry divided by its distance from x_k, and as the
   absolute forces themselves (weight ``force_weight``, from the first call on); hard
   rows = energy rows of the hard set (exact, residual recorded per surrogate), Tikhonov
   towards the iteration's potential Θ_i (``qmml.fitting.solve_constrained``);
3. surrogate force field = force mixing with the surrogate in place of QM: QM atoms get
   Θ_k forces + a constant per-atom offset δ = F_QM(x_k) − F_Θk(x_k) (the Δ-correction:
   the surrogate reproduces the true QM/ML forces exactly at x_k, so a QM/ML stationary
   point is a surrogate stationary point), all other atoms get Θ_i forces exactly as in the
   real QM/ML calculator, with the same zero-mean correction as ASE ``ForceQMMM``;
   plus a linear term J·d on the QM atoms (d: displacement of the QM cluster's atoms from
   x_k), J the least-norm matrix that makes the surrogate equal the true QM forces at
   EVERY QM-called geometry (a multisecant Broyden update on top of the physical model:
   what the constrained SNAP cannot fit of the secants, J carries);
4. relax the surrogate (cheap: two SNAP evaluations per step) to ``inner_fmax_ratio``·fmax,
   but never further than the trust radius r (max atomic displacement from x_k); if the
   relaxation reaches r, look for the surrogate's fixed point nearest x_k by Newton-Krylov
   and step there if it lies inside r (``fixed_point_step``): near the QM/ML minimum the
   surrogate can have negative curvature along a core mode the secants have not explored
   (Θ_i's own), which a minimiser leaves and Newton does not;
5. call QM at the new point x_{k+1}.  Prediction error e = max |F_sur(x_{k+1}) − F_true|.
   Accept x_{k+1} if its true fmax dropped or e < fmax_true(x_k) (the surrogate predicted
   better than "nothing changes"); otherwise reject (stay at x_k; the new point still
   joins the training data) and shrink r.  Grow r after a good step that hit r.  After
   ``fallback_after`` consecutive rejections, ``fallback_steps`` plain FIRE steps on the
   true QM/ML forces are taken (each one a QM call, all of them training data).

Everything is retrained from the data, nothing is fitted across relaxations: the
surrogates are per-relaxation scaffolding and are never written as a potential.  What is
kept is their training data: every QM-called geometry with its true mixed forces
(:func:`qm_point_frames`, ``qmml relax/neb --qm-frames``), which the pipeline's retraining
reads instead of the final frame alone.

Hard set.  The caller passes the iteration's hard configurations (the pipeline's strain +
vacancy-NEB sets); without them, :func:`default_hard_set` generates a SMALL strain set of
Θ_i in process (3×3×3 cells, 6 modes × 5 strains in ±1 %): it has the same row space for
homogeneous strain as the paper's 102-cell set at a fraction of the cost, so the elastic
constants and lattice parameter of every surrogate equal Θ_i's.  (Surrogates only steer
the relaxation; the hard rows keep their bulk physics sane far from the core.)

Seeds.  ``seeds`` are the QM points of an earlier run of the same structure (the next
iteration's relaxation of the same dislocation, a rerun with a new potential or a tighter
fmax; ``qmml relax/neb --seed-frames``).  The QM forces of their QM atoms do not depend on
the ML potential, so each seed whose QM clusters are all in the cache joins the training
data without a QM call (a seed missing from the cache is skipped, never computed), and
the run starts from the seed with the lowest true fmax instead of the ML minimum.

Resume.  After every outer step the state (all QM-called geometries, the accepted index,
trust radius, counters) is pickled atomically.  A restarted run replays the stored
geometries through the QM cache (zero real QM calls), rebuilds the training rows and
continues.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from qmml import QmmlError
from qmml.io import read_checkpoint, write_pickle
from qmml.descriptors import DescriptorCache, compute_descriptors, energy_rows
from qmml.fitting import solve_constrained
from qmml.potential import SNAPPotential
from qmml.qmcache import CachedQMCalculator, NotCached
from qmml.qmmm import (RunStats, apply_fix_mask, make_force_qmmm, max_force,
                       qm_mask_from_region, run_fingerprint)


INNER_OPTIMIZERS = ("FIRE", "LBFGS")


@dataclass
class AcceleratedSettings:
    """Knobs of the accelerated optimiser (defaults: fewest QM calls measured on stand-in and
    tblite screw and edge cores, benchmarks/README.md)."""

    space: str = "quadratic"         # surrogate descriptor space: linear | quadratic
    lambda0: float = 1e-4            # Tikhonov weight towards Θ_i (per unit GᵀG scale)
    force_weight: float = 0.1        # 1/Å: absolute QM-force rows next to the secants
                                     # (0: secants only, Θ_i until the second QM call)
    trust_radius: float = 0.3        # Å: initial max atomic displacement per outer step
    trust_min: float = 0.01
    trust_max: float = 0.3           # 1 Å let an edge core jump to another minimum
    inner_optimizer: str = "LBFGS"   # INNER_OPTIMIZERS (measured: LBFGS ~3x fewer steps)
    inner_fmax_ratio: float = 0.2    # surrogate relaxed to this fraction of fmax
    inner_steps: int = 3000
    delta_correction: bool = True
    secant_correction: bool = True   # linear residual term: surrogate = truth at every secant
    fallback_after: int = 2          # consecutive rejected steps before plain steps
    fallback_steps: int = 3          # plain FIRE steps on true forces per fallback
    ml_prerelax: bool = True         # relax with Θ_i alone before the first QM call
    fixed_point_step: bool = True    # if the relaxation hits the trust radius: Newton-Krylov
                                     # to the surrogate's nearest fixed point, if inside it

    def check(self) -> None:
        if self.space not in ("linear", "quadratic"):
            raise QmmlError(f"accelerated: space must be 'linear' or 'quadratic', "
                            f"got '{self.space}'")
        if not (0 < self.trust_min <= self.trust_radius <= self.trust_max):
            raise QmmlError("accelerated: need 0 < trust_min <= trust_radius <= trust_max")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            # the surrogate relaxation is stepped one ASE step at a time (trust radius);
            # ODE12r has no single step to take
            raise QmmlError(f"accelerated: inner_optimizer must be one of "
                            f"{', '.join(INNER_OPTIMIZERS)}, got '{self.inner_optimizer}'")
        if self.force_weight < 0:
            raise QmmlError(f"accelerated: force_weight must be >= 0, got {self.force_weight}")
        if self.lambda0 <= 0:
            raise QmmlError("accelerated: lambda0 must be > 0 (the fit is underdetermined "
                            "after the first QM call)")


@dataclass
class AcceleratedStats(RunStats):
    """RunStats plus what the surrogate loop did."""

    outer_steps: int = 0
    rejected_steps: int = 0
    fallback_steps: int = 0
    surrogate_hard_residuals: list = field(default_factory=list)
    surrogate_thetas: list = field(default_factory=list)   # kept for audit, never written
    prediction_errors: list = field(default_factory=list)
    trust_history: list = field(default_factory=list)
    surrogate_steps: int = 0
    seconds_fit: float = 0.0
    # every QM-called geometry (_Evaluation, in call order; a resumed run replays them):
    # the QM data the surrogates were trained on, kept for retraining (qm_point_frames)
    qm_points: list = field(default_factory=list)
    accepted_point: int = 0   # index into qm_points of the geometry the run ended at
    n_seeds: int = 0          # the first n_seeds qm_points are replayed seeds, not new calls

    @property
    def surrogate_hard_residual_max(self) -> float:
        return max(self.surrogate_hard_residuals, default=0.0)


def default_hard_set(potential: SNAPPotential) -> list[Atoms]:
    """Small in-process strain set of Θ_i (see module docstring): 30 cells of 54 atoms."""
    from qmml.constraints import strain_set

    return strain_set(potential, n_cells=3, n_strains=5, max_strain=0.01)


# ---- calculators ---------------------------------------------------------------------
class _QMTap(Calculator):
    """Per-image proxy in front of the shared cached QM calculator: keeps this image's
    raw QM cluster forces (ForceQMMM only returns the mixed, zero-mean-shifted ones)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, qm: CachedQMCalculator) -> None:
        super().__init__()
        self.qm = qm

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        cluster = self.atoms.copy()
        self.results["forces"] = np.array(self.qm.get_forces(cluster))
        self.results["energy"] = float(self.qm.results.get("energy", 0.0))


class SurrogateMixing(Calculator):
    """Force mixing with a surrogate SNAP in place of QM (module docstring, step 3).

    The surrogate's QM-atom forces are computed on a cluster: every atom within
    ``reach`` of a QM atom, cut at the geometry of :meth:`set_potential` (the anchor).
    A force on atom k depends only on atoms within twice the SNAP cutoff of k, so the
    cluster forces are exact while no atom moves further than (reach − 2·cutoff)/2 from
    the anchor; the caller keeps the trust radius below that.  In a large (3D) system
    this makes the surrogate's half of every inner step cost a QM-sized cluster, not
    the whole system.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, qm_mask: np.ndarray, ml_calc: Calculator, potential: SNAPPotential,
                 reach: float, zero_mean: bool = True) -> None:
        super().__init__()
        self.qm_mask = np.asarray(qm_mask, dtype=bool)
        self.ml_calc, self.potential, self.reach = ml_calc, potential, reach
        self.zero_mean = zero_mean
        self.offset = np.zeros((int(self.qm_mask.sum()), 3))
        self.secant = None  # (cluster mask, anchor cluster positions, M, Y): see linear_term
        self._cluster = None  # (atom indices, cluster Atoms with calculator, QM rows)

    def set_potential(self, potential: SNAPPotential) -> None:
        """New surrogate coefficients; the cluster is cut afresh at the next evaluation."""
        self.potential = potential
        self._cluster = None
        self.reset()

    def _cluster_of(self, atoms: Atoms):
        if self._cluster is None:
            from ase.geometry import get_distances

            _, dist = get_distances(atoms.positions[self.qm_mask], atoms.positions,
                                    cell=atoms.cell, pbc=atoms.pbc)
            index = np.flatnonzero(dist.min(axis=0) <= self.reach)
            cluster = Atoms(atoms.numbers[index], atoms.positions[index], cell=atoms.cell,
                            pbc=atoms.pbc)
            cluster.calc = self.potential.calculator()
            self._cluster = (index, cluster, self.qm_mask[index])
        return self._cluster

    def raw_surrogate_qm_forces(self, atoms: Atoms) -> np.ndarray:
        index, cluster, qm_rows = self._cluster_of(atoms)
        cluster.positions = atoms.positions[index]
        return np.array(cluster.get_forces())[qm_rows]

    def linear_term(self, positions: np.ndarray) -> np.ndarray | float:
        """QM-atom force correction J·d, d = displacement of the QM cluster's atoms from
        the anchor, J the least-norm matrix with J·s_g = y_g for every stored secant."""
        if self.secant is None:
            return 0.0
        cluster, anchor, m, y = self.secant
        d = (positions[cluster] - anchor).ravel()
        return ((m @ d) @ y).reshape(-1, 3)

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        forces = np.array(self.ml_calc.get_forces(atoms))
        forces[self.qm_mask] = (self.raw_surrogate_qm_forces(atoms) + self.offset
                                + self.linear_term(atoms.positions))
        if self.zero_mean:  # exactly what ForceQMMM does to the true forces
            forces -= forces.mean(axis=0)
        self.results["forces"] = forces
        self.results["energy"] = 0.0


# ---- the system: one image (relaxation) or the interior images of an NEB ---------------
@dataclass
class _Evaluation:
    positions: np.ndarray          # (n_images, N, 3)
    forces: np.ndarray             # true mixed forces (n_images, N, 3), no constraints
    qm_forces: np.ndarray          # raw QM forces of the QM atoms (n_images, n_qm, 3)
    fmax: float                    # convergence measure (constraints/NEB projection applied)


class _System:
    """True and surrogate copies of the moving images plus their optimiser targets."""

    def __init__(self, true_images: list[Atoms], moving: Sequence[int], qm: CachedQMCalculator,
                 ml_factory: Callable[[], Calculator], potential: SNAPPotential,
                 settings: AcceleratedSettings, buffer_width: float, vacuum: float,
                 neb_kwargs: dict | None) -> None:
        self.images, self.moving, self.qm = true_images, list(moving), qm
        self.potential = potential
        self.qm_mask = qm_mask_from_region(true_images[self.moving[0]])
        self.free = ~np.asarray(true_images[self.moving[0]].arrays.get(
            "fix_mask", np.zeros(len(true_images[0]), bool)), dtype=bool)
        self.taps = {}
        for j, im in enumerate(true_images):
            apply_fix_mask(im)
            if j in self.moving or neb_kwargs is not None:
                tap = _QMTap(qm)
                im.calc = make_force_qmmm(im, tap, ml_factory(), buffer_width, vacuum=vacuum)
                self.taps[j] = tap
        self.space = potential.to_quadratic() if settings.space == "quadratic" else potential
        self.theta_i = self.space.theta
        self.sur_images = []
        for j, im in enumerate(true_images):
            s = im.copy()
            apply_fix_mask(s)
            if j in self.moving:
                s.calc = SurrogateMixing(self.qm_mask, ml_factory(),
                                         self.space.with_theta(self.theta_i),
                                         reach=2 * potential.cutoff + 2 * settings.trust_max
                                         + 0.5)
            else:  # NEB end points: fixed, energy only used for spline bookkeeping
                s.calc = SinglePointCalculator(s, energy=0.0, forces=np.zeros((len(s), 3)))
            self.sur_images.append(s)
        self.neb_kwargs = neb_kwargs
        if neb_kwargs is None:
            self.true_target, self.sur_target = true_images[self.moving[0]], \
                self.sur_images[self.moving[0]]
        else:
            from ase.mep import NEB

            self.true_target = NEB(true_images, **neb_kwargs)
            self.sur_target = NEB(self.sur_images, **neb_kwargs)

    # positions of the moving images, (n_moving, N, 3)
    def positions(self, which: str = "true") -> np.ndarray:
        imgs = self.images if which == "true" else self.sur_images
        return np.array([imgs[j].positions for j in self.moving])

    def set_positions(self, x: np.ndarray, which: str = "true") -> None:
        imgs = self.images if which == "true" else self.sur_images
        for j, p in zip(self.moving, x):
            imgs[j].set_positions(p, apply_constraint=False)

    def evaluate_true(self, x: np.ndarray | None = None) -> _Evaluation:
        if x is not None:
            self.set_positions(x)
        forces, qm_forces = [], []
        sel = None
        for j in self.moving:
            im = self.images[j]
            forces.append(np.array(im.get_forces(apply_constraint=False)))
            fq = im.calc
            sel = fq.qm_selection_mask[fq.qm_buffer_mask]
            qm_forces.append(np.array(self.taps[j].results["forces"])[sel])
        return _Evaluation(self.positions(), np.array(forces), np.array(qm_forces),
                           max_force(self.true_target))

    def descriptor_rows(self, x: np.ndarray) -> list[np.ndarray]:
        rows = []
        for j, p in zip(self.moving, x):
            a = Atoms(self.images[j].numbers, p, cell=self.images[j].cell,
                      pbc=self.images[j].pbc)
            rows.append(compute_descriptors(a, self.space, force_mask=self.qm_mask,
                                            source="QM/ML geometry").forces)
        return rows

    def set_surrogate(self, theta: np.ndarray, positions: np.ndarray,
                      qm_forces: np.ndarray | None = None,
                      secants: "_ForceDifferences | None" = None, anchor_index: int = 0
                      ) -> None:
        """New surrogate coefficients, clusters cut at ``positions``; with the true
        ``qm_forces`` there, offsets δ so the surrogate = truth at that point (none: plain
        Θ); with ``secants``, the linear term that makes it the truth at every geometry."""
        pot = self.space.with_theta(theta)
        self.set_positions(positions, "sur")
        for n, j in enumerate(self.moving):
            calc = self.sur_images[j].calc
            calc.set_potential(pot)
            calc.offset = np.zeros_like(calc.offset)
            if qm_forces is not None:
                calc.offset = qm_forces[n] - calc.raw_surrogate_qm_forces(self.sur_images[j])
            calc.secant = None
            if secants is not None:
                cluster = self.images[j].calc.qm_buffer_mask
                calc.secant = secants.linear_term(anchor_index, n, theta, cluster)
            calc.reset()

    def surrogate_forces(self) -> np.ndarray:
        return np.array([self.sur_images[j].get_forces(apply_constraint=False)
                         for j in self.moving])

    def relax_ml(self, fmax: float, optimizer: str, steps: int, leg: float
                 ) -> tuple[np.ndarray, int]:
        """Relax the moving images with Θ_i alone (no QM call, no offsets): the ML
        minimum, from which the first QM call starts.  In legs of at most ``leg`` Å (the
        surrogate clusters are exact only that far from where they were cut); at most 100
        legs."""
        x, total = self.positions(), 0
        for _ in range(100):
            self.set_surrogate(self.theta_i, x)
            x, n, hit = self.relax_surrogate(x, leg, fmax, optimizer, steps)
            total += n
            if not hit:
                break
        return x, total

    def relax_surrogate(self, start: np.ndarray, trust: float, fmax: float, optimizer: str,
                        steps: int) -> tuple[np.ndarray, int, bool]:
        """Surrogate relaxation from ``start``, stopped at the trust radius.

        Returns (positions, steps taken, hit_trust_radius).
        """
        from qmml.qmmm import make_optimizer

        self.set_positions(start, "sur")
        opt = make_optimizer(optimizer, self.sur_target)
        hit = False
        n = 0
        for _ in opt.irun(fmax=fmax, steps=steps):
            n = opt.nsteps
            x = self.positions("sur")
            d = _max_displacement(x, start)
            if d > trust:  # pull back onto the trust sphere along the surrogate path
                self.set_positions(start + (x - start) * (trust / d), "sur")
                hit = True
                break
        return self.positions("sur"), n, hit

    def nearest_fixed_point(self, start: np.ndarray, trust: float, fmax: float,
                            max_evaluations: int = 100) -> np.ndarray | None:
        """The surrogate's fixed point nearest ``start`` (Newton-Krylov on the free atoms'
        surrogate forces), or None if the solver fails, needs more than ``max_evaluations``
        surrogate force evaluations (converging searches took 33-65, failing ones could
        take minutes) or the point lies beyond ``trust``.

        A minimiser leaves a fixed point at which the surrogate's Jacobian has a negative
        eigenvalue; near the QM/ML minimum the surrogate can have one along a core mode
        that the secants have not explored, where the QM forces are stiff
        (benchmarks/README.md §9), so its relaxation runs to the trust radius from
        0.014–0.017 Å of the minimum.  Newton converges to the fixed point itself."""
        from scipy.optimize import root

        free = self.free
        evaluations = 0

        def displaced(dx: np.ndarray) -> np.ndarray:  # dx: the free atoms' displacements
            x = start.copy()
            x[:, free] += dx.reshape(len(self.moving), -1, 3)
            return x

        def target_forces(dx: np.ndarray) -> np.ndarray:  # what the inner optimiser sees
            nonlocal evaluations
            evaluations += 1
            if evaluations > max_evaluations:
                raise _OutOfBudget
            self.set_positions(displaced(dx), "sur")
            forces = np.asarray(self.sur_target.get_forces())
            return forces.reshape(len(self.moving), -1, 3)[:, free].ravel()

        try:
            sol = root(target_forces, np.zeros(len(self.moving) * int(free.sum()) * 3),
                       method="krylov", options={"fatol": fmax, "maxiter": 10,
                                                 "jac_options": {"method": "lgmres"}})
        except (_OutOfBudget, ValueError, np.linalg.LinAlgError, OverflowError):
            return None
        x = displaced(sol.x)
        if not sol.success or _max_displacement(x, start) > trust:
            return None
        self.set_positions(x, "sur")
        return x


def _max_displacement(x: np.ndarray, start: np.ndarray) -> float:
    """Largest atomic distance between two (images, atoms, 3) position arrays."""
    return float(np.sqrt(((x - start) ** 2).sum(axis=2)).max())


class _OutOfBudget(Exception):
    """The fixed-point search used up its surrogate evaluations."""


_STATE_KEYS = ("rejected_steps", "fallback_steps", "surrogate_hard_residuals",
               "surrogate_thetas", "prediction_errors", "trust_history", "fmax_history",
               "outer_steps", "surrogate_steps", "n_seeds")


class _ForceDifferences:
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
    QM call on (benchmarks/README.md §12).  The Δ-correction still makes it exact at the
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
            positions: np.ndarray) -> None:
        for j, (rows, f) in enumerate(zip(rows_per_image, qm_forces)):
            f = np.asarray(f, float).ravel()
            self.rows[j].append(rows)
            self.forces[j].append(f)
            self.absolute_gtg += rows.T @ rows
            self.absolute_gtf += rows.T @ f
        self.positions.append(np.asarray(positions, float))

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


# ---- checkpoint -----------------------------------------------------------------------
def _save(path: Path | None, state: dict) -> None:
    if path is not None:
        write_pickle(path, state)


# ---- the outer loop -------------------------------------------------------------------
def _run(system: _System, hard: Sequence[Atoms] | None, fmax: float, max_qm_steps: int,
         settings: AcceleratedSettings, checkpoint: Path | None, fingerprint: str,
         log: Callable[[str], None] | None,
         descriptor_cache: DescriptorCache | None = None,
         seeds: Sequence[np.ndarray] = ()) -> AcceleratedStats:
    settings.check()
    qm = system.qm
    stats = AcceleratedStats("accelerated", fmax)
    stats.start_counting(qm)

    t0 = time.perf_counter()
    hard_configs = list(hard) if hard else default_hard_set(system.potential)
    # the pipeline's constraint_descriptors job caches these very rows (same frames, same
    # order, same descriptor space) for the retraining: read them instead of recomputing
    n_read = len(descriptor_cache.read) if descriptor_cache is not None else 0
    hard_rows = energy_rows(hard_configs, system.space, cache=descriptor_cache)
    if descriptor_cache is not None and log:
        how = "read from" if len(descriptor_cache.read) > n_read else "computed into"
        log(f"accelerated: {len(hard_rows)} hard rows {how} the descriptor cache "
            f"{descriptor_cache.folder}")
    k = system.theta_i.size
    data = _ForceDifferences(len(system.moving), k)
    stats.seconds_fit += time.perf_counter() - t0

    evals: list[_Evaluation] = []   # every QM-called geometry, in order

    def record(ev: _Evaluation) -> None:
        """A QM-called geometry: kept, and its QM forces join the surrogate's data."""
        evals.append(ev)
        t = time.perf_counter()
        data.add(system.descriptor_rows(ev.positions), ev.qm_forces, ev.positions)
        stats.seconds_fit += time.perf_counter() - t

    current = 0
    trust = settings.trust_radius
    rejects = 0
    last_error = np.inf

    pending = None  # surrogate step computed but its QM call not yet recorded
    saved = read_checkpoint(checkpoint, fingerprint, log)
    if saved:
        for x in saved["points"]:  # replay through the QM cache: no real QM call
            ev = system.evaluate_true(x)
            record(ev)
        current, trust, rejects = saved["current"], saved["trust"], saved["rejects"]
        last_error, pending = saved["last_error"], saved["pending"]
        for key in _STATE_KEYS:
            setattr(stats, key, saved["stats"][key])
        stats.resumed_from_step = stats.outer_steps
        if log:
            log(f"accelerated: resumed from {checkpoint} at outer step {stats.outer_steps} "
                f"({len(evals)} QM geometries replayed from the cache)")
    else:
        for x in seeds:
            try:
                with qm.cached_only():
                    ev = system.evaluate_true(x)
            except NotCached:
                continue
            record(ev)
        stats.n_seeds = len(evals)
        if evals:
            current = int(np.argmin([ev.fmax for ev in evals]))
            if log:
                skipped = len(seeds) - len(evals)
                log(f"accelerated: {len(evals)} of {len(seeds)} seed QM points replayed "
                    f"from the cache{f' ({skipped} not cached, skipped)' if skipped else ''}"
                    f"; starting from seed {current}")
        else:
            if seeds and log:
                log(f"accelerated: none of the {len(seeds)} seed QM points is cached")
            if settings.ml_prerelax:
                x, n = system.relax_ml(settings.inner_fmax_ratio * fmax,
                                       settings.inner_optimizer, settings.inner_steps,
                                       settings.trust_max)
                stats.surrogate_steps += n
                system.set_positions(x)
                if log:
                    log(f"accelerated: relaxed with the ML potential alone ({n} steps, no QM)")
            ev = system.evaluate_true()
            record(ev)
        stats.fmax_history.append(evals[current].fmax)
        if log:
            log(f"accelerated: start    QM calls {qm.n_calls:4d}  true fmax "
                f"{evals[current].fmax:.5f}")

    def save() -> None:
        _save(checkpoint, {"fingerprint": fingerprint,
                           "points": [ev.positions for ev in evals], "current": current,
                           "trust": trust, "rejects": rejects, "last_error": last_error,
                           "pending": pending,
                           "stats": {key: getattr(stats, key) for key in _STATE_KEYS}})

    save()
    while evals[current].fmax > fmax and stats.outer_steps < max_qm_steps:
        anchor = evals[current]
        # ---- fallback: plain FIRE steps on the true forces -----------------------------
        if rejects >= settings.fallback_after:
            from ase.optimize import FIRE

            system.set_positions(anchor.positions)
            opt = FIRE(system.true_target, logfile=None)
            for _ in opt.irun(fmax=fmax, steps=settings.fallback_steps):
                ev = system.evaluate_true()
                if opt.nsteps == 0 and np.array_equal(ev.positions, anchor.positions):
                    continue  # the starting point, already known
                record(ev)
                stats.fallback_steps += 1
            current = len(evals) - 1
            rejects = 0
            stats.outer_steps += 1
            stats.fmax_history.append(evals[current].fmax)
            if log:
                log(f"accelerated: fallback FIRE steps -> fmax {evals[current].fmax:.5f}")
            save()
            continue
        if pending is None:
            # ---- retrain the surrogate on every QM geometry so far ----------------------
            t = time.perf_counter()
            gtg, gtf = data.normal_equations(current, settings.force_weight)
            theta, residual = system.theta_i, 0.0
            if gtg.any():  # force rows, or at least one secant (one geometry has none)
                # λ0 relative to the data's own scale: one setting suits any descriptor space
                scale = max(float(np.trace(gtg)) / k, 1e-300)
                fit = solve_constrained(system.theta_i, gtg, gtf, hard=hard_rows,
                                        lambda0=settings.lambda0 * scale)
                theta, residual = fit.theta, fit.hard_residual_max
            stats.seconds_fit += time.perf_counter() - t
            stats.surrogate_hard_residuals.append(residual)
            stats.surrogate_thetas.append(theta)
            system.set_surrogate(theta, anchor.positions,
                                 anchor.qm_forces if settings.delta_correction else None,
                                 data if settings.secant_correction else None, current)
            # ---- relax the surrogate inside the trust radius -----------------------------
            x_new, n_inner, hit = system.relax_surrogate(
                anchor.positions, trust, settings.inner_fmax_ratio * fmax,
                settings.inner_optimizer, settings.inner_steps)
            stats.surrogate_steps += n_inner
            if hit and settings.fixed_point_step:
                fixed_point = system.nearest_fixed_point(
                    anchor.positions, trust, settings.inner_fmax_ratio * fmax)
                if fixed_point is not None:
                    x_new, hit = fixed_point, False
                else:
                    system.set_positions(x_new, "sur")
            # checkpoint the step BEFORE its QM call: a run killed during the call resumes
            # with exactly this geometry (a cache hit if the call had completed)
            pending = {"positions": x_new, "predicted": system.surrogate_forces(),
                       "steps": n_inner, "hit": hit}
            save()
        x_new, predicted = pending["positions"], pending["predicted"]
        n_inner, hit = pending["steps"], pending["hit"]
        residual = stats.surrogate_hard_residuals[-1]
        ev = system.evaluate_true(x_new)
        pending = None
        record(ev)
        free = system.free
        error = float(np.sqrt(((predicted - ev.forces)[:, free] ** 2).sum(axis=2)).max())
        stats.prediction_errors.append(error)
        step = _max_displacement(ev.positions, anchor.positions)
        accept = ev.fmax < anchor.fmax or error < anchor.fmax
        if accept:
            current = len(evals) - 1
            rejects = 0
            if hit and error < 0.5 * anchor.fmax:
                trust = min(2.0 * trust, settings.trust_max)
        else:
            rejects += 1
            stats.rejected_steps += 1
            trust = max(0.25 * trust, settings.trust_min)
        last_error = error
        stats.outer_steps += 1
        stats.trust_history.append(trust)
        stats.fmax_history.append(evals[current].fmax)
        if log:
            log(f"accelerated: outer {stats.outer_steps:3d}  QM calls {qm.n_calls:4d}  "
                f"true fmax {ev.fmax:.5f}  prediction error {error:.5f}  "
                f"{'accepted' if accept else 'REJECTED'}  surrogate steps {n_inner:4d}"
                f"{' (trust)' if hit else ''}  step {step:.3f} A  trust {trust:.3f} A  "
                f"hard residual {residual:.1e}")
        save()

    stats.qm_points, stats.accepted_point = evals, current
    best = evals[current]
    system.set_positions(best.positions)
    system.evaluate_true()  # leave the true calculators at the accepted point (no QM call)
    stats.steps = stats.outer_steps
    stats.fmax = best.fmax
    stats.converged = best.fmax <= fmax
    stats.count(qm)
    return stats


# ---- public entry points -------------------------------------------------------------
def relax_accelerated(atoms: Atoms, qm: CachedQMCalculator, potential: SNAPPotential,
                      buffer_width: float, fmax: float = 0.01, steps: int = 200,
                      hard: Sequence[Atoms] | None = None,
                      settings: AcceleratedSettings | None = None,
                      checkpoint: str | Path | None = None, vacuum: float = 5.0,
                      log: Callable[[str], None] | None = print,
                      fingerprint_extra=(),
                      descriptor_cache: DescriptorCache | None = None,
                      seeds: Sequence[np.ndarray] = ()) -> AcceleratedStats:
    """Relax ``atoms`` in place with the accelerated QM/ML optimiser (module docstring).

    ``potential`` is the iteration's Θ_i (ML forces outside QM, Tikhonov centre, descriptor
    space); ``steps`` bounds the outer steps; ``hard`` the hard configurations (default:
    :func:`default_hard_set`).  On return ``atoms.calc`` is the true ForceQMMM at the
    accepted geometry.  ``descriptor_cache``: where the hard rows are looked up first.
    ``seeds``: earlier QM points of this structure, (1, N, 3) positions each
    (:func:`seed_points`).
    """
    settings = settings or AcceleratedSettings()
    settings.check()
    system = _System([atoms], [0], qm, potential.calculator, potential, settings,
                     buffer_width, vacuum, None)
    fingerprint = run_fingerprint([atoms], "accelerated", fmax, buffer_width, vacuum,
                                  qm.cache.settings_hash, repr(settings),
                                  _hard_id(hard), *_seeds_id(seeds), *fingerprint_extra)
    return _run(system, hard, fmax, steps, settings,
                Path(checkpoint) if checkpoint else None, fingerprint, log, descriptor_cache,
                seeds)


def neb_accelerated(images: list[Atoms], qm: CachedQMCalculator, potential: SNAPPotential,
                    buffer_width: float, fmax: float = 0.05, steps: int = 200, k: float = 0.1,
                    hard: Sequence[Atoms] | None = None,
                    settings: AcceleratedSettings | None = None,
                    checkpoint: str | Path | None = None, vacuum: float = 5.0,
                    log: Callable[[str], None] | None = print, fingerprint_extra=(),
                    descriptor_cache: DescriptorCache | None = None,
                    seeds: Sequence[np.ndarray] = ()
                    ) -> tuple[AcceleratedStats, "object"]:
    """Accelerated NEB: the surrogate NEB is converged, then QM on all interior images.

    ``images`` (end points included, already interpolated, region arrays set) are moved in
    place.  Returns the stats and the true ASE NEB object (for ``integrate_forces``).
    ``seeds``: earlier QM points of this path, (interior images, N, 3) positions each.
    """
    settings = settings or AcceleratedSettings()
    settings.check()
    system = _System(images, range(1, len(images) - 1), qm, potential.calculator, potential,
                     settings, buffer_width, vacuum, {"k": k, "method": "spline"})
    fingerprint = run_fingerprint(images, "neb-accelerated", fmax, k, buffer_width, vacuum,
                                  qm.cache.settings_hash, repr(settings), _hard_id(hard),
                                  *_seeds_id(seeds), *fingerprint_extra)
    stats = _run(system, hard, fmax, steps, settings,
                 Path(checkpoint) if checkpoint else None, fingerprint, log, descriptor_cache,
                 seeds)
    return stats, system.true_target


def qm_point_frames(images: Sequence[Atoms], moving: Sequence[int], stats: AcceleratedStats,
                    info: dict) -> list[Atoms]:
    """Every QM-called geometry of an accelerated run as QM/ML frames: the moving images
    (``moving``: indices into ``images``, which give numbers, cell, region, fix_mask) at each
    QM call with their true mixed forces, rejected probes included, since each is QM data
    as good as the accepted ones, and replayed seeds too (their QM data are what this run's
    surrogates stand on).  Info: ``info`` plus ``qm_point`` (call order), ``qm_point_fmax``
    (true fmax there), ``qm_point_image`` (index into ``images``), ``qm_point_final`` and
    ``qm_point_seed`` (replayed from an earlier run, no QM call made here)."""
    from qmml.frames import output_frame

    frames = []
    for g, ev in enumerate(stats.qm_points):
        for n, j in enumerate(moving):
            atoms = images[j].copy()
            atoms.positions = ev.positions[n]
            frames.append(output_frame(atoms, dict(
                info, qm_point=g, qm_point_fmax=float(ev.fmax), qm_point_image=int(j),
                qm_point_final=g == stats.accepted_point, qm_point_seed=g < stats.n_seeds),
                forces=ev.forces[n]))
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


def _seeds_id(seeds: Sequence[np.ndarray]) -> tuple[str, ...]:
    """Part of the run fingerprint (nothing without seeds: unseeded checkpoints stay valid)."""
    return ("seeds", _digest(seeds)) if len(seeds) else ()


def _hard_id(hard: Sequence[Atoms] | None) -> str:
    if not hard:
        return "default-strain-set"
    return _digest(x for a in hard for x in (a.positions, a.cell.array))
