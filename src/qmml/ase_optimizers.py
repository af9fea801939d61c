"""The QM/ML optimiser interface (:class:`QMMLOptimizer`) and the plain ASE optimisers behind
it: FIRE, LBFGS (no line search), ODE12r, and PreconLBFGS with ``use_armijo=False`` (ForceQMMM
has no energy, so only force-based optimisers make sense).

Nothing is lost: after every optimiser step a checkpoint (positions + optimiser state) is
written atomically.  A run that is killed and started again with the same inputs resumes:
FIRE and LBFGS continue exactly from the last checkpointed step (their complete state is
restored); ODE12r (whose state lives inside a SciPy-style closure) and PreconLBFGS
(whose preconditioner holds references to the atoms) replay from the start, which costs
ML calls only, because every QM result they need is already in the cache.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from qmml import QmmlError
from qmml.forcemixing import (RunStats, apply_fix_mask, make_force_qmmm, max_force,
                              run_fingerprint)
from qmml.interrupt import checkpoint_on_stop
from qmml.io import read_checkpoint, write_pickle
from qmml.qmcache import CachedQMCalculator

OPTIMIZERS = ("FIRE", "LBFGS", "ODE12r", "PreconLBFGS")
# optimisers whose full state we checkpoint and restore exactly
EXACT_RESUME = ("FIRE", "LBFGS")
_NOT_STATE = {"atoms", "logfile", "observers", "comm", "_orig_trajectory", "_master",
              "trajectory", "optimizable", "restart", "_actual_atoms", "max_steps", "fmax"}


class QMMLOptimizer(ABC):
    """A force-mixed QM/ML optimiser: relaxes one structure, or the moving images
    (:func:`~qmml.forcemixing.neb_moving_images`) of an NEB.  Both methods resume from
    ``checkpoint`` when it belongs to the same run, and take their QM forces through the
    QM cache ``qm``."""

    name: str

    @abstractmethod
    def relax(self, atoms: Atoms, qm: CachedQMCalculator, ml_calc: Calculator,
              buffer_width: float, *, fmax: float, steps: int, checkpoint: Path | None,
              vacuum: float, log: Callable[[str], None] | None, fingerprint_extra=()
              ) -> RunStats:
        """Relax ``atoms`` in place (fixed atoms from ``fix_mask``); on return
        ``atoms.calc`` is the true ForceQMMM."""

    @abstractmethod
    def neb(self, images: list[Atoms], qm: CachedQMCalculator,
            ml_factory: Callable[[], Calculator], buffer_width: float, *, fmax: float,
            steps: int, k: float, checkpoint: Path | None, vacuum: float,
            log: Callable[[str], None] | None, fingerprint_extra=(), climb: bool = False
            ) -> tuple[RunStats, object]:
        """Converge the NEB of ``images`` (end points included, interpolated, region arrays
        set) in place; returns the stats and the ASE NEB object on the true forces.
        ``climb``: climbing image at the virtual-work maximum (:mod:`qmml.nebband`)."""


class ASEOptimizer(QMMLOptimizer):
    """A plain ASE optimiser (``OPTIMIZERS``) stepping on the true QM/ML forces."""

    def __init__(self, name: str) -> None:
        if name not in OPTIMIZERS:
            raise QmmlError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")
        self.name = name

    def relax(self, atoms, qm, ml_calc, buffer_width, *, fmax, steps, checkpoint, vacuum, log,
              fingerprint_extra=()) -> RunStats:
        apply_fix_mask(atoms)
        atoms.calc = make_force_qmmm(atoms, qm, ml_calc, buffer_width, vacuum=vacuum)
        fingerprint = run_fingerprint([atoms], self.name, fmax, buffer_width, vacuum,
                                      qm.cache.settings_hash, *fingerprint_extra)
        return _optimise(atoms, atoms.get_positions, atoms.set_positions,
                         lambda: max_force(atoms), qm, self.name, fmax, steps, checkpoint,
                         fingerprint, log)

    def neb(self, images, qm, ml_factory, buffer_width, *, fmax, steps, k, checkpoint,
            vacuum, log, fingerprint_extra=(), climb=False):
        from qmml.nebband import make_neb

        for im in images:
            apply_fix_mask(im)
            im.calc = make_force_qmmm(im, qm, ml_factory(), buffer_width, vacuum=vacuum)
        # PreconLBFGS on a band: ASE's Exp preconditioner per image inside the NEB, LBFGS
        # steps on those forces with ASE's Wolfe line search (use_armijo=False: force
        # calls on every image per trial step).  The forces it steps on are
        # preconditioned, far smaller than the true ones (1.4 eV/Å on a middle image seen
        # as below 0.1); convergence is judged on the true NEB forces of the same images,
        # as for every other optimiser
        neb_obj = make_neb(images, k=k, climb=climb)
        stepped = make_neb(images, k=k, climb=climb, precon="Exp") \
            if self.name == "PreconLBFGS" else neb_obj
        fingerprint = run_fingerprint(images, "neb", self.name, fmax, k, buffer_width, vacuum,
                                      qm.cache.settings_hash, *fingerprint_extra,
                                      *(("climb",) if climb else ()))
        stats = _optimise(stepped, neb_obj.get_positions, neb_obj.set_positions,
                          lambda: max_force(neb_obj), qm, self.name, fmax, steps, checkpoint,
                          fingerprint, log, precon=None, own_residual=stepped is neb_obj)
        return stats, neb_obj


def make_optimizer(name: str, target, logfile=None, precon="auto"):
    """ASE optimiser by name; PreconLBFGS without Armijo line search (no energy in QM/ML),
    preconditioned by ``precon`` (ASE's choice by default; None on an NEB band, which
    carries its own preconditioner)."""
    if name == "FIRE":
        from ase.optimize import FIRE
        return FIRE(target, logfile=logfile)
    if name == "LBFGS":
        from ase.optimize import LBFGS
        return LBFGS(target, logfile=logfile)
    if name == "ODE12r":
        from ase.optimize import ODE12r
        return ODE12r(target, logfile=logfile)
    if name == "PreconLBFGS":
        from ase.optimize.precon import PreconLBFGS
        return PreconLBFGS(target, use_armijo=False, logfile=logfile, precon=precon)
    raise QmmlError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


def _optimise(target, positions_of: Callable[[], np.ndarray],
              set_positions: Callable[[np.ndarray], None], fmax_of: Callable[[], float],
              qm: CachedQMCalculator, optimizer: str, fmax: float, steps: int,
              checkpoint: Path | None, fingerprint: str, log: Callable[[str], None] | None,
              precon="auto", own_residual: bool = True) -> RunStats:
    """Shared driver for relax and NEB: checkpoint every step, resume if possible.
    ``own_residual`` False: the optimiser's forces are not the true ones (a preconditioned
    band), so it stops when ``fmax_of()`` (the true forces) is at most ``fmax`` instead of
    on its own residual."""
    stats = RunStats(optimizer, fmax)
    opt = make_optimizer(optimizer, target, precon=precon)
    stats.start_counting(qm)

    saved = read_checkpoint(checkpoint, fingerprint, log)
    if saved:
        stats.resume_counts(saved, replayed=optimizer not in EXACT_RESUME)
        stats.fmax_history = list(saved["fmax_history"])
        if optimizer in EXACT_RESUME:
            set_positions(saved["positions"])
            vars(opt).update(saved["state"])
            stats.resumed_from_step = int(saved["state"]["nsteps"])
        else:  # replay from the start; QM answers come from the cache
            stats.resumed_from_step = 0
            stats.fmax_history = []
        if log:
            log(f"resuming from {checkpoint} at step {stats.resumed_from_step}")

    def observer() -> None:
        f = fmax_of()
        if len(stats.fmax_history) <= opt.nsteps:
            stats.fmax_history.append(f)
        stats.count(qm)
        real = stats.n_qm_real_calls
        per_call = stats.qm_seconds / real if real else 0.0
        if log:
            log(f"step {opt.nsteps:4d}  QM call {qm.n_calls:5d} (real {real})  "
                f"fmax {f:.5f} eV/A  {per_call:.2f} s/QM call")
        if checkpoint is not None:
            state = {k: v for k, v in vars(opt).items() if k not in _NOT_STATE}
            write_pickle(checkpoint, {
                "fingerprint": fingerprint, "positions": positions_of().copy(),
                "state": state if optimizer in EXACT_RESUME else {"nsteps": opt.nsteps},
                "fmax_history": list(stats.fmax_history),
                "qm_counts": stats.checkpoint_counts()})
        if not own_residual and f <= fmax:
            raise _TrulyConverged

    opt.attach(observer)
    try:
        with checkpoint_on_stop(checkpoint, fingerprint, stats, qm):
            opt.run(fmax=fmax if own_residual else 0.0, steps=steps)
    except _TrulyConverged:
        pass
    except QmmlError:
        raise
    except Exception as err:  # optimiser breakdowns (e.g. ODE12r step too small)
        raise QmmlError(f"{optimizer} failed: {err}") from None
    stats.steps = opt.nsteps
    stats.fmax = fmax_of()
    stats.converged = stats.fmax <= fmax
    stats.count(qm)
    return stats


class _TrulyConverged(Exception):
    """The true forces are below fmax (ends a run whose optimiser sees other forces)."""
