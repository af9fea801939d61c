"""The outer loop of the accelerated optimiser (:mod:`qmml.accelerated`), its checkpointed
state, and the entry points: :func:`relax_accelerated`, :func:`neb_accelerated` and
:class:`AcceleratedOptimizer` (the ``accelerated`` entry of :mod:`qmml.optimizers`)."""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from qmml.accelerated.points import hard_id, seeds_id
from qmml.accelerated.settings import AcceleratedSettings, AcceleratedStats
from qmml.accelerated.surrogate import (ForceDifferences, SurrogateFailure, default_hard_set,
                                        fit_surrogate, hard_rows)
from qmml.accelerated.records import Evaluation, SurrogateStep, max_displacement
from qmml.accelerated.system import MixedSystem
from qmml.ase_optimizers import QMMLOptimizer
from qmml.descriptors import DescriptorCache
from qmml.forcemixing import largest_norm, neb_moving_images, run_fingerprint
from qmml.interrupt import checkpoint_on_stop
from qmml.io import read_checkpoint, write_pickle
from qmml.potential import SNAPPotential
from qmml.qmcache import CachedQMCalculator, NotCached

Log = Callable[[str], None] | None


# Å: a seed atom farther than this from its place in the structure is another atom's (any
# two lattice sites of W are ≥ 2.74 Å apart; relaxations move atoms far less)
SEED_REACH = 2.0


@dataclass
class LoopState:
    """Everything the outer loop carries from one step to the next.  Checkpointed whole
    after every step, as the plain dict of its fields (``dataclasses.asdict``); the fields
    that :class:`AcceleratedStats` also has are what the run reports."""

    points: list = field(default_factory=list)  # positions of every QM-called geometry
    current: int = 0              # index into points of the accepted geometry
    trust: float = 0.3            # trust radius, Å
    rejects: int = 0              # consecutive rejected steps
    pending: SurrogateStep | None = None  # computed, its QM call not yet recorded
    n_seeds: int = 0              # the first n_seeds points are replayed seeds
    probes: list = field(default_factory=list)  # (moving-image index, positions): NEB
                                  # probes, QM-called single images (absolute rows only)
    single_images: list = field(default_factory=list)  # (moving-image index, positions,
                                  # true mixed forces) of every image QM-called alone (NEB
                                  # probes, the start check): QM data for --qm-frames
    outer_steps: int = 0
    rejected_steps: int = 0
    surrogate_failures: int = 0
    fallback_steps: int = 0
    surrogate_steps: int = 0
    fmax_history: list = field(default_factory=list)
    trust_history: list = field(default_factory=list)
    prediction_errors: list = field(default_factory=list)
    surrogate_hard_residuals: list = field(default_factory=list)
    surrogate_thetas: list = field(default_factory=list)

    def as_checkpoint(self, fingerprint: str) -> dict:
        return {"fingerprint": fingerprint, **asdict(self)}

    @classmethod
    def from_checkpoint(cls, saved: dict, shape: tuple) -> "LoopState | None":
        """The state in a checkpoint dict, or None if it holds none whose points have
        ``shape`` (a foreign checkpoint).  Also reads the layout that kept the reported
        counters under ``stats`` (and an unused ``last_error``)."""
        saved = dict(saved)
        saved.pop("fingerprint", None)
        saved.pop("last_error", None)
        saved.pop("qm_counts", None)  # the run's QM-call counts (RunStats.resume_counts)
        saved.update(saved.pop("stats", None) or {})
        try:
            state = cls(**saved)
            if isinstance(state.pending, dict):
                state.pending = SurrogateStep(**state.pending)
        except TypeError:
            return None
        if not (0 <= state.current < len(state.points)) or \
                any(np.shape(x) != shape for x in state.points):
            return None
        return state


class _OuterLoop:
    """One accelerated run: the system, the surrogate's training data, the state."""

    def __init__(self, system: MixedSystem, settings: AcceleratedSettings, fmax: float,
                 hard: Sequence[Atoms] | None, descriptor_cache: DescriptorCache | None,
                 checkpoint: Path | None, fingerprint: str, log: Log) -> None:
        self.system, self.settings, self.fmax, self.log = system, settings, fmax, log
        self.checkpoint, self.fingerprint = checkpoint, fingerprint
        self.qm = system.qm
        self.stats = AcceleratedStats("accelerated", fmax)
        self.stats.start_counting(self.qm)
        t0 = time.perf_counter()
        configs = list(hard) if hard else default_hard_set(system.potential)
        self.hard_rows = hard_rows(configs, system.space, descriptor_cache, log)
        self.data = ForceDifferences(len(system.moving), system.theta_i.size)
        self.stats.seconds_fit += time.perf_counter() - t0
        self.evals: list[Evaluation] = []  # every QM-called geometry, in call order
        self.state = LoopState(trust=settings.trust_radius)

    def _log(self, message: str) -> None:
        if self.log:
            self.log(message)

    def record(self, ev: Evaluation) -> None:
        """A QM-called geometry: kept, and its QM forces join the surrogate's data."""
        t = time.perf_counter()
        earlier = [self.data.earlier(n, x) for n, x in enumerate(ev.positions)]
        known = [None if g is None else self.data.rows[n][g] for n, g in enumerate(earlier)]
        self.data.add(self.system.descriptor_rows(ev.positions, known), ev.qm_forces,
                      ev.positions, repeated=[g is not None for g in earlier])
        self.evals.append(ev)
        self.stats.seconds_fit += time.perf_counter() - t

    def save(self) -> None:
        if self.checkpoint is not None:
            self.state.points = [ev.positions for ev in self.evals]
            self.stats.count(self.qm)
            write_pickle(self.checkpoint, dict(self.state.as_checkpoint(self.fingerprint),
                                               qm_counts=self.stats.checkpoint_counts()))

    # ---- start: from a checkpoint, from seeds, or from the ML minimum ------------------
    def start(self, seeds: Sequence[np.ndarray]) -> None:
        if not self.resume():
            self.start_from_seeds(seeds) or self.start_fresh()
            self.state.fmax_history.append(self.anchor.fmax)
            self._log(f"accelerated: start    QM calls {self.qm.n_calls:4d}  true fmax "
                      f"{self.anchor.fmax:.5f}")
        self.save()

    def resume(self) -> bool:
        saved = read_checkpoint(self.checkpoint, self.fingerprint, self.log)
        if not saved:
            return False
        shape = (len(self.system.moving),) + self.system.images[0].positions.shape
        state = LoopState.from_checkpoint(saved, shape)
        if state is None:
            self._log(f"{self.checkpoint}: not a checkpoint of the accelerated optimiser, "
                      f"starting afresh")
            return False
        self.stats.resume_counts(saved, replayed=True)
        for n, x in state.probes:  # replay through the QM cache: no real QM call
            self.data.add_absolute(*self.system.evaluate_image(n, x))
        for x in state.points:
            self.record(self.system.evaluate_true(x))
        self.state = state
        self.stats.resumed_from_step = state.outer_steps
        self._log(f"accelerated: resumed from {self.checkpoint} at outer step "
                  f"{state.outer_steps} ({len(self.evals)} QM geometries replayed from the "
                  f"cache)")
        return True

    def start_from_seeds(self, seeds: Sequence[np.ndarray]) -> bool:
        """Replay the cached seeds (never compute one); start from the best of them.  A
        seed with an atom farther than SEED_REACH from its place in the structure is a
        QM point of another atom order (a structure built with another of several
        symmetric defect sites), not of this structure: its positions would carry this
        structure's fixed atoms and regions to other atoms, so it is skipped."""
        start, foreign, uncached = self.system.positions(), 0, 0
        for x in seeds:
            if np.linalg.norm(np.asarray(x) - start, axis=-1).max() > SEED_REACH:
                foreign += 1
                continue
            try:
                with self.qm.cached_only():
                    ev = self.system.evaluate_true(x)
            except NotCached:
                uncached += 1
                continue
            self.record(ev)
        self.state.n_seeds = len(self.evals)
        if foreign:
            self._log(f"accelerated: {foreign} of {len(seeds)} seed QM points have atoms "
                      f"more than {SEED_REACH} A from this structure's (another atom "
                      f"order): skipped")
        if not self.evals:
            if uncached:
                self._log(f"accelerated: none of the {uncached} seed QM points is cached")
            return False
        self.state.current = int(np.argmin([ev.fmax for ev in self.evals]))
        self._log(f"accelerated: {len(self.evals)} of {len(seeds)} seed QM points replayed "
                  f"from the cache{f' ({uncached} not cached, skipped)' if uncached else ''}"
                  f"; starting from seed {self.state.current}")
        return True

    def start_fresh(self) -> None:
        """The first QM call: at the ML minimum (``ml_prerelax``) or where the atoms are;
        an NEB where it is if its middle image is converged already."""
        settings = self.settings
        if settings.neb_start_check and self.system.neb_kwargs is not None \
                and self.given_band_is_converged_in_the_middle():
            self.record(self.system.evaluate_true())
            return
        if settings.ml_prerelax:
            t = time.perf_counter()
            try:
                x, n = self.system.relax_ml(settings.inner_fmax_ratio * self.fmax,
                                            settings.inner_optimizer, settings.inner_steps,
                                            settings.inner_stall_steps)
            except SurrogateFailure as failure:
                self._log(f"accelerated: relaxation with the ML potential alone failed "
                          f"({failure}); first QM call at the starting geometry")
            else:
                self.state.surrogate_steps += n
                self.stats.seconds_surrogate += time.perf_counter() - t
                self.system.set_positions(x)
                self._log(f"accelerated: relaxed with the ML potential alone ({n} steps, "
                          f"no QM)")
        if settings.neb_probe and len(self.system.moving) >= 4:
            # every other image: the others lie between two probed ones.  Measured: with
            # 5 moving images 3 probes save 2 calls; with 3 moving images the band's two
            # QM evaluations are needed anyway and probes add calls
            self.probe(range(0, len(self.system.moving), 2))
        self.record(self.system.evaluate_true())

    def given_band_is_converged_in_the_middle(self) -> bool:
        """NEB: one QM call on the middle moving image of the band as given (e.g. the
        interpolated path).  Where its NEB force is below fmax the given band is nearly
        converged already, and starting from Θ_i's own band would first walk away from it
        (a tblite edge glide path: 26 QM calls from Θ0's band, 5 from the given one,
        docs/performance.md).  Where it is not, the call is only this test: its forces
        do not join the surrogate's data, which describes the band near the anchor; they
        are kept for retraining (:meth:`keep_single_image`)."""
        n = len(self.system.moving) // 2
        force = self.system.image_neb_force(n)
        converged = force <= self.fmax
        if not converged:  # else the whole band's QM point holds this image
            self.keep_single_image(n)
        self._log(f"accelerated: the given band's middle image {self.system.moving[n]}: "
                  f"true NEB force {force:.5f} "
                  f"{'<=' if converged else '>'} fmax {self.fmax}: starting from "
                  f"{'the given band' if converged else 'the ML band'}")
        return converged

    def probe(self, images: Sequence[int]) -> None:
        """NEB: QM calls on the moving images ``images`` only; a surrogate fitted to their
        QM forces (absolute rows; Δ-correction on those images alone, the only ones known)
        relaxes the whole band before its first QM call, probed images kept at their QM
        point where the band allows (the band's first evaluation then repeats no call for
        them).  The probes stay in the training data."""
        settings, x = self.settings, self.system.positions()
        t = time.perf_counter()
        probed = {}
        for n in images:
            rows, probed[n] = self.system.evaluate_image(n, x[n])
            self.data.add_absolute(rows, probed[n])
            self.state.probes.append((n, x[n].copy()))
            self.keep_single_image(n)
        theta, _ = fit_surrogate(self.system.theta_i, self.data, 0, settings.force_weight,
                                 self.hard_rows, settings.lambda0)
        self.stats.seconds_fit += time.perf_counter() - t
        t = time.perf_counter()
        try:
            step = self.system.probe_step(theta, x, probed, settings, self.fmax)
        except SurrogateFailure as failure:
            self._log(f"accelerated: probe surrogate failed ({failure}); first QM call on "
                      f"the band where it is")
            step = SurrogateStep(x, np.zeros_like(x), 0, False)
        self.stats.seconds_surrogate += time.perf_counter() - t
        self.state.surrogate_steps += step.steps
        self.stats.kept_images += step.kept
        if step.hit:
            # a surrogate of a few single images that runs to the trust radius is
            # unstable, not informed (a tblite screw band: 0.3 A in 5 steps, true fmax
            # 17.7 eV/A there); the band stays where the probes were, whose calls the
            # band's evaluation then repeats from the cache
            how = (f"their surrogate reached the trust radius in {step.steps} steps: "
                   f"band left where probed")
            step = SurrogateStep(x, np.zeros_like(x), step.steps, True)
        else:
            how = (f"band relaxed on their surrogate ({step.steps} steps, moved "
                   f"{max_displacement(step.positions, x):.3f} A, {step.kept} probed "
                   f"images kept)")
        self.system.set_positions(step.positions)
        self._log(f"accelerated: probe QM calls on images "
                  f"{[self.system.moving[n] for n in images]}, {how}")

    def keep_single_image(self, n: int) -> None:
        """Moving image n, just QM-called alone, with its true forces: retraining data
        (``--qm-frames``) though not a QM point of the band."""
        image = self.system.images[self.system.moving[n]]
        self.state.single_images.append(
            (n, image.positions.copy(), np.array(image.get_forces(apply_constraint=False))))

    # ---- the outer steps ---------------------------------------------------------------
    @property
    def anchor(self) -> Evaluation:
        return self.evals[self.state.current]

    def run(self, max_steps: int) -> AcceleratedStats:
        state = self.state
        while self.anchor.fmax > self.fmax and state.outer_steps < max_steps:
            if state.rejects >= self.settings.fallback_after:
                self.fallback()
            elif state.pending is not None or self.propose():
                self.judge()
            self.save()
        return self.finish()

    def fallback(self) -> None:
        """Plain FIRE steps on the true forces, each a QM call, all of them training data."""
        from ase.optimize import FIRE

        state, anchor = self.state, self.anchor
        self.system.set_positions(anchor.positions)
        opt = FIRE(self.system.true_target, logfile=None)
        for _ in opt.irun(fmax=self.fmax, steps=self.settings.fallback_steps):
            ev = self.system.evaluate_true()
            if opt.nsteps == 0 and np.array_equal(ev.positions, anchor.positions):
                continue  # the starting point, already known
            self.record(ev)
            state.fallback_steps += 1
        state.current = len(self.evals) - 1
        state.rejects = 0
        state.outer_steps += 1
        state.fmax_history.append(self.anchor.fmax)
        self._log(f"accelerated: fallback FIRE steps -> fmax {self.anchor.fmax:.5f}")

    def propose(self) -> bool:
        """Retrain the surrogate on every QM geometry so far and relax it inside the trust
        radius: the next QM point (``state.pending``), checkpointed BEFORE its QM call, so
        that a run killed during the call resumes with exactly this geometry (a cache hit
        if the call had completed).  False if the surrogate failed: a rejected step."""
        state, settings, system = self.state, self.settings, self.system
        t = time.perf_counter()
        theta, residual = fit_surrogate(system.theta_i, self.data, state.current,
                                        settings.force_weight, self.hard_rows,
                                        settings.lambda0)
        self.stats.seconds_fit += time.perf_counter() - t
        state.surrogate_hard_residuals.append(residual)
        state.surrogate_thetas.append(theta)
        t = time.perf_counter()
        try:
            step = system.surrogate_step(theta, self.anchor, state.current, self.data,
                                         settings, state.trust, self.fmax)
            if settings.keep_ratio > 0:
                step = system.keep_images(step, self.anchor.positions,
                                          settings.keep_ratio * self.fmax)
        except SurrogateFailure as failure:
            self.stats.seconds_surrogate += time.perf_counter() - t
            self.reject(failure=True)
            self._log(f"accelerated: outer {state.outer_steps:3d}  surrogate step failed "
                      f"({failure}): rejected without a QM call, trust {state.trust:.3f} A")
            return False
        self.stats.seconds_surrogate += time.perf_counter() - t
        state.surrogate_steps += step.steps
        self.stats.kept_images += step.kept
        state.pending = step
        self.save()
        return True

    def judge(self) -> None:
        """QM call at the pending point; accept it or reject it (module docstring, step 5)."""
        state, settings = self.state, self.settings
        step, anchor = state.pending, self.anchor
        ev = self.system.evaluate_true(step.positions)
        state.pending = None
        self.record(ev)
        free = self.system.free
        error = largest_norm((step.predicted - ev.forces)[:, free])
        state.prediction_errors.append(error)
        predicted_fmax = largest_norm(self.system.target_forces(step.positions, step.predicted))
        accept = ev.fmax < anchor.fmax or error < anchor.fmax
        if accept:
            state.current = len(self.evals) - 1
            state.rejects = 0
            if step.hit and error < 0.5 * anchor.fmax:
                state.trust = min(2.0 * state.trust, settings.trust_max)
            state.outer_steps += 1
            state.trust_history.append(state.trust)
            state.fmax_history.append(self.anchor.fmax)
        else:
            self.reject()
        self._log(f"accelerated: outer {state.outer_steps:3d}  QM calls {self.qm.n_calls:4d}  "
                  f"true fmax {ev.fmax:.5f}  predicted {predicted_fmax:.5f}  "
                  f"prediction error {error:.5f}  "
                  f"{'accepted' if accept else 'REJECTED'}  surrogate steps {step.steps:4d}"
                  f"{' (trust)' if step.hit else ''}"
                  f"{f' (fixed point {step.fixed_point})' if step.fixed_point else ''}"
                  f"{f'  {step.kept} images kept' if step.kept else ''}  step "
                  f"{max_displacement(ev.positions, anchor.positions):.3f} A  trust "
                  f"{state.trust:.3f} A  hard residual "
                  f"{state.surrogate_hard_residuals[-1]:.1e}")

    def reject(self, failure: bool = False) -> None:
        """Stay at the anchor and shrink the trust radius (one outer step)."""
        state = self.state
        state.rejects += 1
        state.rejected_steps += 1
        state.surrogate_failures += failure
        state.trust = max(0.25 * state.trust, self.settings.trust_min)
        state.outer_steps += 1
        state.trust_history.append(state.trust)
        state.fmax_history.append(self.anchor.fmax)

    def finish(self) -> AcceleratedStats:
        """The stats of the run, the true calculators left at the accepted point."""
        stats, state = self.stats, self.state
        for f in fields(LoopState):
            if hasattr(stats, f.name):
                setattr(stats, f.name, getattr(state, f.name))
        stats.qm_points, stats.accepted_point = self.evals, state.current
        best = self.anchor
        self.system.set_positions(best.positions)
        self.system.evaluate_true()  # no QM call: the accepted point is cached
        stats.steps = stats.outer_steps
        stats.fmax = best.fmax
        stats.converged = best.fmax <= self.fmax
        stats.count(self.qm)
        return stats


def _run(system: MixedSystem, hard: Sequence[Atoms] | None, fmax: float, max_steps: int,
         settings: AcceleratedSettings, checkpoint: Path | None, fingerprint: str, log: Log,
         descriptor_cache: DescriptorCache | None = None,
         seeds: Sequence[np.ndarray] = ()) -> AcceleratedStats:
    settings.check()
    loop = _OuterLoop(system, settings, fmax, hard, descriptor_cache, checkpoint, fingerprint,
                      log)
    with checkpoint_on_stop(checkpoint, fingerprint, loop.stats, loop.qm):
        loop.start(seeds)
        return loop.run(max_steps)


# ---- public entry points -------------------------------------------------------------
def relax_accelerated(atoms: Atoms, qm: CachedQMCalculator, potential: SNAPPotential,
                      buffer_width: float, fmax: float = 0.01, steps: int = 200,
                      hard: Sequence[Atoms] | None = None,
                      settings: AcceleratedSettings | None = None,
                      checkpoint: str | Path | None = None, vacuum: float = 5.0,
                      log: Log = print, fingerprint_extra=(),
                      descriptor_cache: DescriptorCache | None = None,
                      seeds: Sequence[np.ndarray] = (),
                      ml_factory: Callable[[], Calculator] | None = None
                      ) -> AcceleratedStats:
    """Relax ``atoms`` in place with the accelerated QM/ML optimiser (package docstring).

    ``potential`` is the iteration's Θ_i (ML forces outside QM, Tikhonov centre, descriptor
    space); ``steps`` bounds the outer steps; ``hard`` the hard configurations (default:
    :func:`~qmml.accelerated.surrogate.default_hard_set`).  On return ``atoms.calc`` is the
    true ForceQMMM at the accepted geometry.  ``descriptor_cache``: where the hard rows are
    looked up first.  ``seeds``: earlier QM points of this structure, (1, N, 3) positions
    each (:func:`~qmml.accelerated.points.seed_points`).  ``ml_factory``: new Θ_i
    calculators for the whole system (default ``potential.calculator``; e.g. on MPI ranks).
    """
    settings = settings or AcceleratedSettings()
    settings.check()
    system = MixedSystem([atoms], [0], qm, ml_factory or potential.calculator, potential,
                         settings, buffer_width, vacuum, None)
    fingerprint = run_fingerprint([atoms], "accelerated", fmax, buffer_width, vacuum,
                                  qm.cache.settings_hash, repr(settings),
                                  hard_id(hard), *seeds_id(seeds), *fingerprint_extra)
    return _run(system, hard, fmax, steps, settings,
                Path(checkpoint) if checkpoint else None, fingerprint, log, descriptor_cache,
                seeds)


def neb_accelerated(images: list[Atoms], qm: CachedQMCalculator, potential: SNAPPotential,
                    buffer_width: float, fmax: float = 0.05, steps: int = 200, k: float = 0.1,
                    hard: Sequence[Atoms] | None = None,
                    settings: AcceleratedSettings | None = None,
                    checkpoint: str | Path | None = None, vacuum: float = 5.0,
                    log: Log = print, fingerprint_extra=(),
                    descriptor_cache: DescriptorCache | None = None,
                    seeds: Sequence[np.ndarray] = (), climb: bool = False,
                    ml_factory: Callable[[], Calculator] | None = None
                    ) -> tuple[AcceleratedStats, "object"]:
    """Accelerated NEB: the surrogate NEB is converged, then QM on all moving images
    (:func:`~qmml.forcemixing.neb_moving_images`).

    ``images`` (end points included, already interpolated, region arrays set) are moved in
    place.  Returns the stats and the true ASE NEB object (for ``integrate_forces``).
    ``seeds``: earlier QM points of this path, (moving images, N, 3) positions each.
    ``climb``: climbing image at the virtual-work maximum, in the surrogate band and the
    true one (:mod:`qmml.nebband`).  ``ml_factory`` as in :func:`relax_accelerated`.
    """
    settings = settings or AcceleratedSettings()
    settings.check()
    system = MixedSystem(images, neb_moving_images(len(images)), qm,
                         ml_factory or potential.calculator, potential, settings,
                         buffer_width, vacuum, {"k": k, "climb": climb})
    fingerprint = run_fingerprint(images, "neb-accelerated", fmax, k, buffer_width, vacuum,
                                  qm.cache.settings_hash, repr(settings), hard_id(hard),
                                  *seeds_id(seeds), *fingerprint_extra,
                                  *(("climb",) if climb else ()))
    stats = _run(system, hard, fmax, steps, settings,
                 Path(checkpoint) if checkpoint else None, fingerprint, log, descriptor_cache,
                 seeds)
    return stats, system.true_target


class AcceleratedOptimizer(QMMLOptimizer):
    """The accelerated optimiser behind the :class:`QMMLOptimizer` interface: ``hard``,
    ``settings``, ``descriptor_cache`` and ``seeds`` as in :func:`relax_accelerated`;
    ``steps`` bounds the outer steps."""

    name = "accelerated"

    def __init__(self, hard: Sequence[Atoms] | None = None,
                 settings: AcceleratedSettings | None = None,
                 descriptor_cache: DescriptorCache | None = None,
                 seeds: Sequence[np.ndarray] = ()) -> None:
        self.hard, self.settings = hard, settings
        self.descriptor_cache, self.seeds = descriptor_cache, seeds

    def _options(self) -> dict:
        return {"hard": self.hard, "settings": self.settings,
                "descriptor_cache": self.descriptor_cache, "seeds": self.seeds}

    def relax(self, atoms: Atoms, qm: CachedQMCalculator, ml_calc: Calculator,
              buffer_width: float, *, fmax: float, steps: int, checkpoint: Path | None,
              vacuum: float, log: Log, fingerprint_extra=()) -> AcceleratedStats:
        # more Θ_i calculators of the caller's kind (its MPI ranks, if any); its ZBL, if
        # any, is not part of Θ_i
        factory = functools.partial(ml_calc.potential.calculator, ranks=ml_calc.ranks)
        return relax_accelerated(atoms, qm, ml_calc.potential, buffer_width, fmax=fmax,
                                 steps=steps, checkpoint=checkpoint, vacuum=vacuum, log=log,
                                 fingerprint_extra=fingerprint_extra, ml_factory=factory,
                                 **self._options())

    def neb(self, images: list[Atoms], qm: CachedQMCalculator,
            ml_factory: Callable[[], Calculator], buffer_width: float, *, fmax: float,
            steps: int, k: float, checkpoint: Path | None, vacuum: float, log: Log,
            fingerprint_extra=(), climb: bool = False):
        return neb_accelerated(images, qm, ml_factory().potential, buffer_width, fmax=fmax,
                               steps=steps, k=k, checkpoint=checkpoint, vacuum=vacuum,
                               log=log, fingerprint_extra=fingerprint_extra, climb=climb,
                               ml_factory=ml_factory, **self._options())
