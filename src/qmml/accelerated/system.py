"""The mixed system of the accelerated optimiser: true (QM/ML) and surrogate copies of the
moving images, one image for a relaxation or the interior images of an NEB."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from qmml import QmmlError
from qmml.accelerated.records import (Evaluation, FixedPointSearch, InnerRelaxation,
                                      StallWatch, SurrogateStep, max_displacement)
from qmml.accelerated.settings import AcceleratedSettings
from qmml.accelerated.surrogate import ForceDifferences, SurrogateFailure, SurrogateMixing
from qmml.ase_optimizers import make_optimizer
from qmml.descriptors import compute_descriptors
from qmml.forcemixing import (apply_fix_mask, largest_norm, make_force_qmmm, max_force,
                               qm_mask_from_region)
from qmml.frames import free_mask
from qmml.potential import SNAPPotential
from qmml.qmcache import CachedQMCalculator


# No fixed-point search after a surrogate relaxation that reached the trust radius in fewer
# steps: its forces stayed large all the way, so no fixed point lies near the anchor (a
# minimiser leaves a saddle slowly).  Measured: the 5 searches after 2-7 steps on the
# demo's tblite glide NEB all failed (replayed from its QM cache it takes 84 s without
# them, 134 s with them); searches that found a point followed 13-44 steps (tests, the
# tblite 9 Å edge, the demo's vacancy one hop from the core).
# A failing search leaves the step as it was, so skipping one changes no QM point
FIXED_POINT_MIN_STEPS = 8


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


def qm_force_rows(atoms: Atoms, space: SNAPPotential, qm_mask: np.ndarray) -> np.ndarray:
    """Force rows (3 per QM atom, in atom order) of the potential's descriptor space.

    Species the potential lacks (He in W) are invisible to it, as in its LAMMPS pair style
    (type NULL): the rows are those of the structure without them, and their own rows are
    zero (the surrogate cannot change the force on them; the Δ-correction still makes it
    exact at the anchor)."""
    known = np.isin(atoms.get_chemical_symbols(), space.elements)
    if known.all():
        return compute_descriptors(atoms, space, force_mask=qm_mask,
                                   source="QM/ML geometry").forces
    rows = np.zeros((int(qm_mask.sum()), 3, space.n_coefficients))
    sub = compute_descriptors(atoms[known], space, force_mask=qm_mask[known],
                              source="QM/ML geometry").forces
    rows[known[np.flatnonzero(qm_mask)]] = sub.reshape(-1, 3, space.n_coefficients)
    return rows.reshape(-1, space.n_coefficients)


class MixedSystem:
    """True and surrogate copies of the moving images plus their optimiser targets."""

    def __init__(self, true_images: list[Atoms], moving: Sequence[int], qm: CachedQMCalculator,
                 ml_factory: Callable[[], Calculator], potential: SNAPPotential,
                 settings: AcceleratedSettings, buffer_width: float, vacuum: float,
                 neb_kwargs: dict | None) -> None:
        self.images, self.moving, self.qm = true_images, list(moving), qm
        self.frozen: set[int] = set()  # moving images the surrogate relaxation holds still
        self.potential, self.ml_factory = potential, ml_factory
        self.qm_mask = qm_mask_from_region(true_images[self.moving[0]])
        self.free = free_mask(true_images[self.moving[0]])
        self.taps = {}
        for j, im in enumerate(true_images):
            apply_fix_mask(im)
            if j in self.moving or neb_kwargs is not None:
                tap = _QMTap(qm)
                im.calc = make_force_qmmm(im, tap, ml_factory(), buffer_width, vacuum=vacuum)
                self.taps[j] = tap
        self.space = potential.to_quadratic() if settings.space == "quadratic" else potential
        self.theta_i = self.space.theta
        reach = 2 * potential.cutoff + 2 * settings.trust_max + 0.5
        if settings.active_width is None:  # the default, used only where it pays
            width, limit = buffer_width + 2 * potential.cutoff, reach
        else:
            width, limit = max(buffer_width, settings.active_width), 0.0
        self.active = active_region(true_images[self.moving[0]], self.qm_mask, self.free,
                                    width, limit)
        self.sur_images = []
        for j, im in enumerate(true_images):
            s = im.copy()
            apply_fix_mask(s)
            if j in self.moving:
                s.calc = SurrogateMixing(self.qm_mask, ml_factory(),
                                         self.space.with_theta(self.theta_i),
                                         reach=reach, active=self.active,
                                         ml_cluster_calc=None if self.active is None
                                         else ml_factory())
            else:  # NEB end points: fixed; their true forces (cached QM calls) only
                # enter the climbing image's virtual-work energies
                forces = np.zeros((len(s), 3))
                if neb_kwargs and neb_kwargs.get("climb"):
                    forces = np.array(im.get_forces(apply_constraint=False))
                s.calc = SinglePointCalculator(s, energy=0.0, forces=forces)
            self.sur_images.append(s)
        self.neb_kwargs = neb_kwargs
        if neb_kwargs is None:
            self.true_target, self.sur_target = true_images[self.moving[0]], \
                self.sur_images[self.moving[0]]
        else:
            from qmml.nebband import make_neb

            self.true_target = make_neb(true_images, **neb_kwargs)
            self.sur_target = make_neb(self.sur_images, **neb_kwargs)

    @property
    def far(self) -> np.ndarray:
        """Free atoms outside the active region (none without one)."""
        return self.free & ~self.active if self.active is not None \
            else np.zeros_like(self.free)

    def set_phase(self, phase: str) -> None:
        """Which atoms the surrogate images move (SurrogateMixing.phase): the others are
        fixed for their optimiser."""
        if self.active is None:
            fixed = ~self.free
        else:
            fixed = {"whole": ~self.free, "active": ~self.free | ~self.active,
                     "far": ~self.free | self.active}[phase]
        for n, j in enumerate(self.moving):
            image = self.sur_images[j]
            mask = np.ones_like(fixed) if n in self.frozen else fixed
            image.set_constraint(FixAtoms(mask=mask) if mask.any() else [])
            if self.active is not None:
                image.calc.set_phase(phase)

    # positions of the moving images, (n_moving, N, 3)
    def positions(self, which: str = "true") -> np.ndarray:
        imgs = self.images if which == "true" else self.sur_images
        return np.array([imgs[j].positions for j in self.moving])

    def set_positions(self, x: np.ndarray, which: str = "true") -> None:
        imgs = self.images if which == "true" else self.sur_images
        for j, p in zip(self.moving, x):
            imgs[j].set_positions(p, apply_constraint=False)

    def evaluate_true(self, x: np.ndarray | None = None) -> Evaluation:
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
        target = np.asarray(self.true_target.get_forces()).reshape(len(self.moving), -1, 3)
        image_fmax = np.array([largest_norm(f) for f in target])
        return Evaluation(self.positions(), np.array(forces), np.array(qm_forces),
                          float(image_fmax.max()), image_fmax)

    def target_forces(self, x: np.ndarray, forces: np.ndarray, climb: bool = True
                      ) -> np.ndarray:
        """What the optimiser moves by (constraints applied; a band's NEB forces) if the
        moving images were at ``x`` with raw forces ``forces``, (n_moving, N, 3): no
        force call.  The end points' true forces (cached QM calls) enter only a
        climbing image's virtual-work energies, and only then are read; ``climb`` False
        leaves a climbing band's climbing image out."""
        climb = climb and bool(self.neb_kwargs and self.neb_kwargs.get("climb"))
        copies = []
        for j, im in enumerate(self.images):
            copy = im.copy()
            if j in self.moving:
                n = self.moving.index(j)
                copy.set_positions(x[n], apply_constraint=False)
                f = forces[n]
            elif climb:
                f = im.get_forces(apply_constraint=False)
            else:
                f = np.zeros((len(im), 3))
            copy.calc = SinglePointCalculator(copy, energy=0.0, forces=np.array(f))
            copies.append(copy)
        if self.neb_kwargs is None:
            target = copies[self.moving[0]]
        else:
            from qmml.nebband import make_neb

            target = make_neb(copies, **{**self.neb_kwargs, "climb": climb})
        return np.asarray(target.get_forces()).reshape(len(self.moving), -1, 3)

    def image_neb_force(self, n: int) -> float:
        """Largest NEB force on moving image n at the true images' positions, from its own
        true forces alone (one QM call): without a climbing image, an image's NEB force
        is its force perpendicular to the spline tangent plus the springs along it, both
        set by the band's positions, so the other images need no forces (zero here)."""
        forces = np.zeros((len(self.moving),) + self.images[0].positions.shape)
        forces[n] = self.images[self.moving[n]].get_forces(apply_constraint=False)
        return largest_norm(self.target_forces(self.positions(), forces, climb=False)[n])

    def descriptor_rows(self, x: np.ndarray, known: Sequence[np.ndarray | None] = ()
                        ) -> list[np.ndarray]:
        """QM-atom force rows of every moving image at ``x``; ``known[n]``, if given and
        not None, are image n's rows already (its geometry was QM-called before)."""
        rows = []
        for n, (j, p) in enumerate(zip(self.moving, x)):
            if n < len(known) and known[n] is not None:
                rows.append(known[n])
                continue
            a = Atoms(self.images[j].numbers, p, cell=self.images[j].cell,
                      pbc=self.images[j].pbc)
            rows.append(qm_force_rows(a, self.space, self.qm_mask))
        return rows

    def set_surrogate(self, theta: np.ndarray, positions: np.ndarray,
                      qm_forces: np.ndarray | None = None,
                      secants: ForceDifferences | None = None, anchor_index: int = 0
                      ) -> None:
        """New surrogate coefficients, clusters cut at ``positions``; with the true
        ``qm_forces`` there, offsets δ so the surrogate = truth at that point (none: plain
        Θ); with ``secants``, the linear term that makes it the truth at every geometry."""
        pot = self.space.with_theta(theta)
        plain = qm_forces is None and secants is None and np.array_equal(theta, self.theta_i)
        self.set_positions(positions, "sur")
        self.set_phase("whole" if plain else "active")
        for n, j in enumerate(self.moving):
            calc = self.sur_images[j].calc
            calc.set_potential(pot, plain)
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

    def renew_surrogates(self) -> None:
        """Fresh LAMMPS instances behind every surrogate image (see SurrogateMixing.renew)."""
        for j in self.moving:
            self.sur_images[j].calc.renew(self.ml_factory)

    @contextmanager
    def _failures(self, passing: tuple = ()) -> Iterator[None]:
        """Any error of a surrogate evaluation becomes a SurrogateFailure (one line) and
        leaves fresh LAMMPS instances behind; errors of the program or its input, and those
        in ``passing``, are raised as they are."""
        try:
            yield
        except (QmmlError, TypeError, AttributeError, NameError) + passing:
            raise
        except Exception as err:
            self.renew_surrogates()
            if isinstance(err, SurrogateFailure):
                raise
            lines = str(err).strip().splitlines() or [type(err).__name__]
            raise SurrogateFailure(lines[0]) from err

    def evaluate_image(self, n: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Moving image n alone at ``x`` (its positions): a QM call through the cache;
        its QM-atom force rows and raw QM forces."""
        j = self.moving[n]
        self.images[j].set_positions(x, apply_constraint=False)
        self.images[j].get_forces(apply_constraint=False)
        fq = self.images[j].calc
        qm_forces = np.array(self.taps[j].results["forces"])[
            fq.qm_selection_mask[fq.qm_buffer_mask]]
        atoms = Atoms(self.images[j].numbers, x, cell=self.images[j].cell,
                      pbc=self.images[j].pbc)
        return qm_force_rows(atoms, self.space, self.qm_mask), qm_forces

    def relax_ml(self, fmax: float, optimizer: str, steps: int, stall_steps: int = 0
                 ) -> tuple[np.ndarray, int]:
        """Relax the moving images with Θ_i alone (no QM call, no offsets): the ML
        minimum, from which the first QM call starts.  Θ_i's forces are the ML
        potential's on the whole system, with no cluster cut at a starting point, so
        nothing bounds how far the images move: one relaxation, whose optimiser keeps its
        history to the end, or which stops after ``stall_steps`` steps without a new low
        (:meth:`relax_surrogate`): LBFGS on a 13-image band of 6420 atoms got to
        0.02 eV/Å in 42 steps, then wandered and diverged (docs/design.md).
        SurrogateFailure if an evaluation fails."""
        with self._failures():
            start = self.positions()
            self.set_surrogate(self.theta_i, start)
            x, n, _, _ = self.relax_surrogate(start, np.inf, fmax, optimizer, steps,
                                              stall_steps=stall_steps)
        return x, n

    def surrogate_step(self, theta: np.ndarray, anchor: Evaluation, anchor_index: int,
                       data: ForceDifferences, settings: AcceleratedSettings, trust: float,
                       fmax: float) -> SurrogateStep:
        """Surrogate Θ_k (with Δ-correction and linear term as ``settings`` say) set up at
        the anchor and relaxed inside the trust radius (module docstring, steps 3-4).
        SurrogateFailure if an evaluation fails: no QM call is then due.

        NEB: the images already converged at the anchor (true NEB force at most
        ``freeze_ratio``·fmax, while others are not) stay where they are, so they cost no
        QM call; their true forces there are known, and the band is relaxed around them.
        If the band's move takes a frozen image's NEB force (exact: only its tangent and
        springs change) above fmax, the step is taken again with every image free."""
        frozen = set()
        if self.neb_kwargs is not None and settings.freeze_ratio > 0 \
                and anchor.fmax > fmax:
            frozen = set(np.flatnonzero(anchor.image_fmax <= settings.freeze_ratio * fmax))
        try:
            if frozen:
                self.frozen = frozen
                step = self._surrogate_step(theta, anchor, anchor_index, data, settings,
                                            trust, fmax)
                self.frozen = set()
                with self._failures():
                    self.set_phase("active")
                    self.set_positions(step.positions, "sur")
                    neb = np.asarray(self.sur_target.get_forces()).reshape(
                        len(self.moving), -1, 3)
                if max(largest_norm(neb[n]) for n in frozen) <= fmax:
                    return replace(step, kept=len(frozen))
            return self._surrogate_step(theta, anchor, anchor_index, data, settings, trust,
                                        fmax)
        finally:
            self.frozen = set()

    def _surrogate_step(self, theta: np.ndarray, anchor: Evaluation, anchor_index: int,
                        data: ForceDifferences, settings: AcceleratedSettings, trust: float,
                        fmax: float) -> SurrogateStep:
        with self._failures():
            self.set_surrogate(theta, anchor.positions,
                               anchor.qm_forces if settings.delta_correction else None,
                               data if settings.secant_correction else None, anchor_index)
            inner_fmax = settings.inner_fmax_ratio * fmax
            x, n, hit, stalled = self.relax_surrogate(
                anchor.positions, trust, inner_fmax, settings.inner_optimizer,
                settings.inner_steps, stall_steps=settings.inner_stall_steps)
            searched = ""
            if settings.fixed_point_step and (hit or stalled):
                if hit and n < FIXED_POINT_MIN_STEPS:
                    searched = "not searched"  # reached the trust radius in a few steps
                elif stalled and self.neb_kwargs is not None:
                    # a stalled band: Newton found no fixed point on any measured 13-image
                    # band, from the anchor or from the lowest point (docs/design.md)
                    searched = "not searched (band stalled)"
                else:
                    # the minimiser found no fixed point: Newton may (a saddle of the
                    # surrogate next to the anchor)
                    search = self.nearest_fixed_point(anchor.positions, trust, inner_fmax)
                    searched = search.outcome
                    if search.positions is not None:
                        x, hit = search.positions, False
                    else:
                        self.set_positions(x, "sur")
            predicted = self.surrogate_forces()
            if self.active is not None:
                if largest_norm(anchor.forces[:, self.far]) > fmax:
                    x, m, hit, predicted = self.relax_with_far_field(
                        x, hit, anchor.positions, trust, inner_fmax, settings)
                    n += m
                else:  # the far atoms stay; their forces change only at the boundary
                    predicted[:, self.far] = anchor.forces[:, self.far]
            return SurrogateStep(x, predicted, n, hit, fixed_point=searched)

    def relax_with_far_field(self, x: np.ndarray, hit: bool, anchor: np.ndarray,
                             trust: float, fmax: float, settings: AcceleratedSettings,
                             rounds: int = 10) -> tuple[np.ndarray, int, bool, np.ndarray]:
        """Alternate ML-only relaxations of the far field with surrogate relaxations of
        the active region (still inside the trust radius around ``anchor``) until both
        are below ``fmax``: the two regions meet atom to atom, so one pass leaves the
        active region's edge out of balance.  Ends after the far field's relaxation that
        follows an active relaxation that stalled: on the paper-size edge band each later
        round stalled again at the same force, 75 s a round (docs/design.md).  Returns
        (positions, steps, hit the trust radius, predicted forces)."""
        steps, stalled = 0, False
        for _ in range(rounds):
            x, n = self.relax_far(x, fmax, settings.inner_optimizer, settings.inner_steps)
            steps += n
            far_forces = self.surrogate_forces()
            self.set_phase("active")
            self.set_positions(x, "sur")
            predicted = self.surrogate_forces()
            predicted[:, self.far] = far_forces[:, self.far]
            if hit or stalled or largest_norm(predicted[:, self.free & self.active]) <= fmax:
                break
            x, n, hit, stalled = self.relax_surrogate(x, trust, fmax, settings.inner_optimizer,
                                                      settings.inner_steps, centre=anchor,
                                                      stall_steps=settings.inner_stall_steps)
            steps += n
        return x, steps, hit, predicted

    def relax_far(self, x: np.ndarray, fmax: float, optimizer: str, steps: int
                  ) -> tuple[np.ndarray, int]:
        """The far atoms relaxed with Θ_i, the active region held at ``x``: their true
        forces are exactly these ML forces, and no QM force depends on them (the active
        region holds the QM cluster), so this costs no QM call.  Returns (positions,
        steps)."""
        self.set_phase("far")
        self.set_positions(x, "sur")
        opt = make_optimizer(optimizer, self.sur_target)
        opt.run(fmax=fmax, steps=steps)
        return self.positions("sur"), opt.nsteps

    def probe_step(self, theta: np.ndarray, x: np.ndarray, probed: dict[int, np.ndarray],
                   settings: AcceleratedSettings, fmax: float) -> SurrogateStep:
        """NEB band ``x`` of which only the moving images in ``probed`` are QM-called
        (image index: its raw QM forces): the surrogate Θ (offsets δ on those images alone,
        where the truth is known) relaxed inside ``settings.trust_max``; probed images put
        back at their QM point where the band allows (:meth:`keep_images`).
        SurrogateFailure if an evaluation fails."""
        with self._failures():
            self.set_surrogate(theta, x)
            for n, qm_forces in probed.items():
                image = self.sur_images[self.moving[n]]
                image.calc.offset = qm_forces - image.calc.raw_surrogate_qm_forces(image)
                image.calc.reset()
            y, steps, hit, _ = self.relax_surrogate(x, settings.trust_max,
                                                 settings.inner_fmax_ratio * fmax,
                                                 settings.inner_optimizer,
                                                 settings.inner_steps,
                                                 stall_steps=settings.inner_stall_steps)
            step = SurrogateStep(y, self.surrogate_forces(), steps, hit)
            if settings.keep_ratio > 0:
                step = self.keep_images(step, x, settings.keep_ratio * fmax,
                                        only=list(probed))
            return step

    def keep_images(self, step: SurrogateStep, anchor: np.ndarray, limit: float,
                    only: Sequence[int] | None = None) -> SurrogateStep:
        """NEB: put images back at ``anchor`` (their QM point, so no QM call is due for
        them), the least-moved first, as long as the surrogate band stays below ``limit``
        (eV/Å) with them there.  An image whose surrogate move barely changes the band's
        forces costs a QM call for nothing; its true forces there are already known.
        ``only``: the images that may be put back (default: all)."""
        if len(self.moving) < 2 or step.hit:
            return step
        x, kept = step.positions.copy(), 0
        moved = [max_displacement(x[n:n + 1], anchor[n:n + 1])
                 for n in range(len(self.moving))]
        with self._failures():
            for n in np.argsort(moved):
                if moved[n] == 0.0 or (only is not None and n not in only):
                    continue
                trial = x.copy()
                trial[n] = anchor[n]
                self.set_positions(trial, "sur")
                if max_force(self.sur_target) <= limit:
                    x, kept = trial, kept + 1
            self.set_positions(x, "sur")
            return SurrogateStep(x, self.surrogate_forces(), step.steps, step.hit,
                                 step.kept + kept, step.fixed_point)

    def relax_surrogate(self, start: np.ndarray, trust: float, fmax: float, optimizer: str,
                        steps: int, centre: np.ndarray | None = None,
                        stall_steps: int = 0) -> InnerRelaxation:
        """Surrogate relaxation from ``start``, stopped at the trust radius around
        ``centre`` (default: ``start``), or, with ``stall_steps`` > 0, once its largest
        force has not reached a new low for that many steps, the start's force included:
        it then ends at the lowest-force point of its path.  A surrogate band can wander
        at a few hundredths of an eV/Å without converging or reaching the trust radius
        (non-conservative mixed forces; measured on a 13-image screw band,
        docs/design.md), and each of its steps costs a surrogate evaluation of every
        image.  A relaxation that has not got below the start's force goes on: an
        unstable surrogate, whose forces grow from the anchor, meets the trust radius
        and the fixed-point search.
        """
        centre = start if centre is None else centre
        self.set_positions(start, "sur")
        opt = make_optimizer(optimizer, self.sur_target)
        hit = False
        n = 0
        watch = StallWatch(stall_steps)
        for _ in opt.irun(fmax=fmax, steps=steps):
            n = opt.nsteps
            x = self.positions("sur")
            d = max_displacement(x, centre)
            if d > trust:  # pull back onto the trust sphere along the surrogate path
                self.set_positions(centre + (x - centre) * (trust / d), "sur")
                hit = True
                break
            if stall_steps > 0 and watch.stalled(n, max_force(self.sur_target), x):
                self.set_positions(watch.positions, "sur")
                return InnerRelaxation(watch.positions, n, False, True)
        return InnerRelaxation(self.positions("sur"), n, hit)

    def nearest_fixed_point(self, start: np.ndarray, trust: float, fmax: float,
                            max_evaluations: int = 65, stall_ratio: float = 0.5
                            ) -> FixedPointSearch:
        """The surrogate's fixed point nearest ``start`` (Newton-Krylov on the free atoms'
        surrogate forces); not found (positions None) if the solver fails, needs more
        than ``max_evaluations`` surrogate force evaluations (converging searches took
        33-65, failing ones could take minutes), stalls (a Newton iteration leaves the
        largest force above ``stall_ratio`` times the one before it, at ``start`` for the
        first: converging searches cut it 10-230 times in their first iteration, failing
        ones 4.5 times at most, docs/design.md) or the point lies beyond ``trust``.

        A minimiser leaves a fixed point at which the surrogate's Jacobian has a negative
        eigenvalue; near the QM/ML minimum the surrogate can have one along a core mode
        that the secants have not explored, where the QM forces are stiff
        (docs/design.md), so its relaxation runs to the trust radius from
        0.014–0.017 Å of the minimum.  Newton converges to the fixed point itself.

        Newton's trial points can lie far from ``start`` (atoms flying apart, LAMMPS losing
        them): a failed evaluation ends the search (not found), with fresh LAMMPS
        instances."""
        from scipy.optimize import root

        free = self.free if self.active is None else self.free & self.active
        evaluations = 0

        def displaced(dx: np.ndarray) -> np.ndarray:  # dx: the free atoms' displacements
            x = start.copy()
            x[:, free] += dx.reshape(len(self.moving), -1, 3)
            x[list(self.frozen)] = start[list(self.frozen)]
            return x

        def target_forces(dx: np.ndarray) -> np.ndarray:  # what the inner optimiser sees
            nonlocal evaluations
            evaluations += 1
            if evaluations > max_evaluations:
                raise _OutOfBudget
            self.set_positions(displaced(dx), "sur")
            forces = np.asarray(self.sur_target.get_forces())
            forces = forces.reshape(len(self.moving), -1, 3)[:, free].ravel()
            if evaluations == 1:  # the solver's first evaluation is at ``start``
                residuals.append(float(np.abs(forces).max()))
            return forces

        residuals = []

        def stop_if_stalled(dx: np.ndarray, forces: np.ndarray) -> None:
            residuals.append(float(np.abs(forces).max()))
            if residuals[-1] > stall_ratio * residuals[-2]:
                raise _OutOfBudget

        solver_failures = (_OutOfBudget, ValueError, np.linalg.LinAlgError, OverflowError)
        try:
            with self._failures(passing=solver_failures):
                sol = root(target_forces, np.zeros(len(self.moving) * int(free.sum()) * 3),
                           method="krylov", callback=stop_if_stalled,
                           options={"fatol": fmax, "maxiter": 10,
                                    "jac_options": {"method": "lgmres"}})
        except solver_failures + (SurrogateFailure,):
            return FixedPointSearch(None, residuals, min(evaluations, max_evaluations))
        x = displaced(sol.x)
        if not sol.success or max_displacement(x, start) > trust:
            return FixedPointSearch(None, residuals, evaluations)
        self.set_positions(x, "sur")
        return FixedPointSearch(x, residuals, evaluations)


def active_region(atoms: Atoms, qm_mask: np.ndarray, free: np.ndarray, width: float,
                  reach: float = 0.0) -> np.ndarray | None:
    """Free atoms within ``width`` of a QM atom: what the surrogate relaxation moves (the
    rest follows in ML-only relaxations of the far field).  None when that is every free
    atom, or, with ``reach`` > 0, when their ML cluster (everything within ``reach`` of
    them) would hold more than half the atoms: it would cost about as much as the whole
    system, and the far field's relaxations come on top."""
    from ase.geometry import get_distances

    _, dist = get_distances(atoms.positions[qm_mask], atoms.positions, cell=atoms.cell,
                            pbc=atoms.pbc)
    dist = dist.min(axis=0)
    active = free & (dist <= width)
    if np.array_equal(active, free) or \
            (reach > 0 and (dist <= width + reach).sum() > 0.5 * len(atoms)):
        return None
    return active


class _OutOfBudget(Exception):
    """The fixed-point search used up its surrogate evaluations or stalled."""
