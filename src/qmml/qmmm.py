"""Force-mixed QM/ML: ASE ``ForceQMMM`` built from the ``region`` array, relaxation and NEB.

QM atoms get forces from a QM calculation on QM + buffer atoms (through the on-disk QM
cache, so no QM call is ever repeated); every other atom gets ML (SNAP) forces.  The
energy is undefined (ForceQMMM returns 0), so only force-based optimisers make sense:
FIRE, LBFGS (no line search), ODE12r, and PreconLBFGS with ``use_armijo=False``.

Nothing is lost: after every optimiser step a checkpoint (positions + optimiser state) is
written atomically.  A run that is killed and started again with the same inputs resumes:
FIRE and LBFGS continue exactly from the last checkpointed step (their complete state is
restored); ODE12r (whose state lives inside a SciPy-style closure) and PreconLBFGS
(whose preconditioner holds references to the atoms) replay from the start, which costs
ML calls only, because every QM result they need is already in the cache.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.qmmm import ForceQMMM
from ase.constraints import FixAtoms

from qmml import QmmlError
from qmml.io import read_checkpoint, write_pickle
from qmml.qmcache import CachedQMCalculator

OPTIMIZERS = ("FIRE", "LBFGS", "ODE12r", "PreconLBFGS")
# optimisers whose full state we checkpoint and restore exactly
EXACT_RESUME = ("FIRE", "LBFGS")
_NOT_STATE = {"atoms", "logfile", "observers", "comm", "_orig_trajectory", "_master",
              "trajectory", "optimizable", "restart", "_actual_atoms", "max_steps", "fmax"}


# ---- building the QM/ML calculator -------------------------------------------------------
QM_CELL_ROUND_OFF = 3.0  # Å: the QM cluster cell in open directions is a multiple of this


def qm_mask_from_region(atoms: Atoms) -> np.ndarray:
    """Boolean QM mask from ``atoms.arrays['region']`` (strings QM/buffer/MM)."""
    if "region" not in atoms.arrays:
        raise QmmlError("input structure has no 'region' array (QM/buffer/MM per atom); "
                        "mark the QM region first (qmml.regions)")
    region = np.asarray(atoms.arrays["region"]).astype(str)
    bad = sorted(set(region) - {"QM", "buffer", "MM"})
    if bad:
        raise QmmlError(f"'region' array: unknown labels {bad} (expected QM, buffer, MM)")
    mask = region == "QM"
    if not mask.any():
        raise QmmlError("'region' array marks no atom as QM")
    return mask


def make_force_qmmm(atoms: Atoms, qm_calc: Calculator, ml_calc: Calculator,
                    buffer_width: float, vacuum: float = 5.0) -> ForceQMMM:
    """ASE ForceQMMM (zero-mean forces) for ``atoms`` with masks from its ``region`` array.

    If the region array has buffer atoms they are used as given (ASE's
    ``set_masks_from_region``); otherwise the buffer is every atom within ``buffer_width``
    of a QM atom, and the region array is filled in accordingly.  The QM cluster cell is
    fixed here, from the structure given, so a resumed run cuts identical clusters.
    """
    qm_mask = qm_mask_from_region(atoms)
    calc = ForceQMMM(atoms, qm_mask, qm_calc, ml_calc, buffer_width=buffer_width,
                     vacuum=vacuum, zero_mean=True, qm_cell_round_off=QM_CELL_ROUND_OFF)
    region = np.asarray(atoms.arrays["region"]).astype(str)
    if (region == "buffer").any():
        calc.set_masks_from_region(region)
    else:
        calc.initialize_qm_buffer_mask(atoms)
        atoms.arrays["region"] = calc.get_region_from_masks(atoms)
    cluster = calc.get_qm_cluster(atoms)  # fixes qm_radius (and so the cluster cell) now
    # ASE rounds the cluster cell (to qm_cell_round_off) on this first call only and
    # rebuilds it unrounded from qm_radius on every later call, so a structure rebuilt
    # from relaxed positions (an NEB end point, a relaxation's output read back) would get
    # a cell a few 0.01 Å different and miss every cached QM result.  Pinning qm_radius
    # to the rounded cell makes the cell the same for any nearby geometry.
    open_dirs = ~cluster.pbc
    calc.qm_radius = np.array(calc.qm_radius, dtype=float)
    calc.qm_radius[open_dirs] = (cluster.cell.diagonal()[open_dirs] / 2.0
                                 - buffer_width - vacuum)
    return calc


def apply_fix_mask(atoms: Atoms) -> None:
    """FixAtoms from the bool ``fix_mask`` array (if present)."""
    if "fix_mask" in atoms.arrays:
        mask = np.asarray(atoms.arrays["fix_mask"], dtype=bool)
        atoms.set_constraint(FixAtoms(mask=mask) if mask.any() else [])


def make_optimizer(name: str, target, logfile=None):
    """ASE optimiser by name; PreconLBFGS without Armijo line search (no energy in QM/ML)."""
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
        return PreconLBFGS(target, use_armijo=False, logfile=logfile)
    raise QmmlError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


# ---- checkpoints -------------------------------------------------------------------------
def run_fingerprint(images: list[Atoms], *parts) -> str:
    """Identifies a run: starting positions, species and the settings that matter."""
    h = hashlib.sha256()
    for im in images:
        h.update(im.numbers.tobytes())
        h.update(np.ascontiguousarray(im.positions).tobytes())
    h.update(repr(parts).encode())
    return h.hexdigest()[:16]


@dataclass
class RunStats:
    """What a relaxation/NEB did (also written into output provenance)."""

    optimizer: str
    fmax_target: float
    fmax: float = float("nan")
    steps: int = 0
    converged: bool = False
    resumed_from_step: int | None = None
    n_qm_calls: int = 0          # QM evaluations requested this process (real + cached)
    n_qm_real_calls: int = 0     # engine calls actually made this process
    qm_seconds: float = 0.0      # wall time inside the QM engine
    wall_seconds: float = 0.0
    fmax_history: list = field(default_factory=list)

    def start_counting(self, qm: CachedQMCalculator) -> None:
        """From now on, QM calls and time belong to this run."""
        self._since = (qm.n_real_calls, qm.n_cache_hits, qm.qm_seconds, time.perf_counter())

    def count(self, qm: CachedQMCalculator) -> None:
        """Update the QM-call counts and timings since ``start_counting``."""
        real0, hits0, qm_s0, start = self._since
        self.n_qm_real_calls = qm.n_real_calls - real0
        self.n_qm_calls = self.n_qm_real_calls + qm.n_cache_hits - hits0
        self.qm_seconds = qm.qm_seconds - qm_s0
        self.wall_seconds = time.perf_counter() - start


def _optimise(target, positions_of: Callable[[], np.ndarray],
              set_positions: Callable[[np.ndarray], None], fmax_of: Callable[[], float],
              qm: CachedQMCalculator, optimizer: str, fmax: float, steps: int,
              checkpoint: Path | None, fingerprint: str, log: Callable[[str], None] | None
              ) -> RunStats:
    """Shared driver for relax and NEB: checkpoint every step, resume if possible."""
    stats = RunStats(optimizer, fmax)
    opt = make_optimizer(optimizer, target)
    stats.start_counting(qm)

    saved = read_checkpoint(checkpoint, fingerprint, log)
    if saved:
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
                "fmax_history": list(stats.fmax_history)})

    opt.attach(observer)
    try:
        opt.run(fmax=fmax, steps=steps)
    except QmmlError:
        raise
    except Exception as err:  # optimiser breakdowns (e.g. ODE12r step too small)
        raise QmmlError(f"{optimizer} failed: {err}") from None
    stats.steps = opt.nsteps
    stats.fmax = fmax_of()
    stats.converged = stats.fmax <= fmax
    stats.count(qm)
    return stats


def max_force(target) -> float:
    """Largest atomic force of Atoms (constraints applied: fixed atoms do not count) or of
    an NEB (projected forces of its moving images)."""
    f = np.asarray(target.get_forces()).reshape(-1, 3)
    return float(np.sqrt((f ** 2).sum(axis=1)).max())


# ---- relaxation --------------------------------------------------------------------------
def relax(atoms: Atoms, qm: CachedQMCalculator, ml_calc: Calculator, buffer_width: float,
          optimizer: str = "FIRE", fmax: float = 0.01, steps: int = 1000,
          checkpoint: str | Path | None = None, vacuum: float = 5.0,
          log: Callable[[str], None] | None = print, fingerprint_extra=(),
          hard=None, accelerated=None, descriptor_cache=None, seeds=()) -> RunStats:
    """Relax ``atoms`` in place with force-mixed QM/ML; fixed atoms from ``fix_mask``.

    ``qm`` is the cached QM calculator, ``ml_calc`` the ML potential's calculator.
    ``optimizer="accelerated"``: :mod:`qmml.accelerated` (``hard``: its hard configurations,
    ``accelerated``: its ``AcceleratedSettings``, ``descriptor_cache``: where its hard rows
    are looked up, ``seeds``: QM points of an earlier run to start from; ``steps`` then
    bounds outer steps).
    """
    if optimizer == "accelerated":  # surrogate between QM calls (qmml.accelerated)
        from qmml.accelerated import relax_accelerated

        return relax_accelerated(atoms, qm, ml_calc.potential, buffer_width, fmax=fmax,
                                 steps=steps, hard=hard, settings=accelerated,
                                 checkpoint=checkpoint, vacuum=vacuum, log=log,
                                 fingerprint_extra=fingerprint_extra,
                                 descriptor_cache=descriptor_cache, seeds=seeds)
    if optimizer not in OPTIMIZERS:
        raise QmmlError(f"unknown optimizer '{optimizer}' (choose from "
                        f"{', '.join(OPTIMIZERS)}, accelerated)")
    apply_fix_mask(atoms)
    atoms.calc = make_force_qmmm(atoms, qm, ml_calc, buffer_width, vacuum=vacuum)
    fingerprint = run_fingerprint([atoms], optimizer, fmax, buffer_width, vacuum,
                                  qm.cache.settings_hash, *fingerprint_extra)
    return _optimise(atoms, atoms.get_positions, atoms.set_positions,
                     lambda: max_force(atoms), qm, optimizer, fmax, steps,
                     Path(checkpoint) if checkpoint else None, fingerprint, log)


# ---- NEB ---------------------------------------------------------------------------------
def neb(initial: Atoms, final: Atoms, n_images: int, qm: CachedQMCalculator,
        ml_factory: Callable[[], Calculator], buffer_width: float, optimizer: str = "FIRE",
        fmax: float = 0.05, steps: int = 1000, k: float = 0.1,
        checkpoint: str | Path | None = None, vacuum: float = 5.0,
        log: Callable[[str], None] | None = print, fingerprint_extra=(), hard=None,
        accelerated=None, descriptor_cache=None, seeds=()
        ) -> tuple[list[Atoms], RunStats, dict]:
    """NEB of a glide path with one ForceQMMM per image (all sharing the QM cache).

    ``n_images`` counts all images including the two end points.  The QM/buffer masks
    come from the initial image's region array and are the same for every image.
    Spline tangents (no energies needed).  Returns images, stats and the virtual-work
    profile ``{"s", "energy", "barrier"}`` from ``NEB.integrate_forces``.
    """
    from ase.mep import NEB

    if n_images < 3:
        raise QmmlError(f"--images must be >= 3 (end points included), got {n_images}")
    if len(initial) != len(final) or (initial.numbers != final.numbers).any():
        raise QmmlError("NEB: initial and final structures must have the same atoms in the "
                        "same order")
    images = [initial.copy() for _ in range(n_images - 1)] + [final.copy()]
    neb_obj = NEB(images, k=k, method="spline")
    neb_obj.interpolate(method="linear")
    # masks (QM and buffer) come from the initial image and are shared by every image
    apply_fix_mask(images[0])
    images[0].calc = make_force_qmmm(images[0], qm, ml_factory(), buffer_width, vacuum=vacuum)
    region = np.asarray(images[0].arrays["region"]).astype(str)
    for im in images[1:]:
        im.arrays["region"] = region.copy()
    if optimizer == "accelerated":  # surrogate NEB between QM calls (qmml.accelerated)
        from qmml.accelerated import neb_accelerated

        stats, neb_obj = neb_accelerated(
            images, qm, ml_factory().potential, buffer_width, fmax=fmax,
            steps=steps, k=k, hard=hard, settings=accelerated, checkpoint=checkpoint,
            vacuum=vacuum, log=log, fingerprint_extra=fingerprint_extra,
            descriptor_cache=descriptor_cache, seeds=seeds)
    else:
        for im in images[1:]:
            apply_fix_mask(im)
            im.calc = make_force_qmmm(im, qm, ml_factory(), buffer_width, vacuum=vacuum)
        fingerprint = run_fingerprint(images, "neb", optimizer, fmax, k, buffer_width, vacuum,
                                      qm.cache.settings_hash, *fingerprint_extra)
        stats = _optimise(neb_obj, neb_obj.get_positions, neb_obj.set_positions,
                          lambda: max_force(neb_obj), qm, optimizer, fmax, steps,
                          Path(checkpoint) if checkpoint else None, fingerprint, log)
    profile = virtual_work_profile(neb_obj)
    # integrate_forces also evaluated the two end points (cached after the first time)
    stats.n_qm_calls = qm.n_calls
    stats.n_qm_real_calls = qm.n_real_calls
    return images, stats, profile


def virtual_work_profile(neb_obj) -> dict:
    """Virtual-work energy profile of a converged NEB (Swinburne & Kermode 2017).

    ``s``/``energy`` on ASE's spline grid; ``image_energy`` at the images' own positions
    on that (Euclidean, arc-length) coordinate, ``s_images``.
    """
    s, energy, _ = neb_obj.integrate_forces()
    s_images = np.asarray(neb_obj.spline_fit(norm="euclidean").s, dtype=float)
    return {"s": s, "energy": energy, "s_images": s_images,
            "image_energy": np.interp(s_images, s, energy),
            "barrier": float(energy.max() - energy[0])}

