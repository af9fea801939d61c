"""Force-mixed QM/ML relaxation and NEB with any registered optimiser
(:mod:`qmml.optimizers`): ASE ``ForceQMMM`` built from the ``region`` array
(:mod:`qmml.forcemixing`), QM forces through the on-disk QM cache.

The building blocks are importable from here too (``make_force_qmmm``,
``RunStats``, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from qmml import QmmlError
from qmml.ase_optimizers import EXACT_RESUME, OPTIMIZERS, QMMLOptimizer, make_optimizer
from qmml.forcemixing import (QM_CELL_ROUND_OFF, RunStats, apply_fix_mask, make_force_qmmm,
                              max_force, neb_moving_images,
                              qm_mask_from_region, run_fingerprint)
from qmml.optimizers import get_optimizer
from qmml.qmcache import CachedQMCalculator

__all__ = ["EXACT_RESUME", "OPTIMIZERS", "QM_CELL_ROUND_OFF", "RunStats", "apply_fix_mask",
           "make_force_qmmm", "make_optimizer", "max_force", "neb", "neb_moving_images",
           "qm_mask_from_region", "relax", "run_fingerprint",
           "virtual_work_profile"]


def _optimizer(optimizer: str | QMMLOptimizer, **options) -> QMMLOptimizer:
    return optimizer if isinstance(optimizer, QMMLOptimizer) else \
        get_optimizer(optimizer, **options)


# ---- relaxation --------------------------------------------------------------------------
def relax(atoms: Atoms, qm: CachedQMCalculator, ml_calc: Calculator, buffer_width: float,
          optimizer: str | QMMLOptimizer = "FIRE", fmax: float = 0.01, steps: int = 1000,
          checkpoint: str | Path | None = None, vacuum: float = 5.0,
          log: Callable[[str], None] | None = print, fingerprint_extra=(),
          hard=None, accelerated=None, descriptor_cache=None, seeds=()) -> RunStats:
    """Relax ``atoms`` in place with force-mixed QM/ML; fixed atoms from ``fix_mask``.

    ``qm`` is the cached QM calculator, ``ml_calc`` the ML potential's calculator.
    ``optimizer``: a name in :data:`qmml.optimizers.REGISTRY` or a :class:`QMMLOptimizer`.
    ``"accelerated"``: :mod:`qmml.accelerated` (``hard``: its hard configurations,
    ``accelerated``: its ``AcceleratedSettings``, ``descriptor_cache``: where its hard rows
    are looked up, ``seeds``: QM points of an earlier run to start from; ``steps`` then
    bounds outer steps).
    """
    opt = _optimizer(optimizer, hard=hard, settings=accelerated,
                     descriptor_cache=descriptor_cache, seeds=seeds)
    return opt.relax(atoms, qm, ml_calc, buffer_width, fmax=fmax, steps=steps,
                     checkpoint=Path(checkpoint) if checkpoint else None, vacuum=vacuum,
                     log=log, fingerprint_extra=fingerprint_extra)


# ---- NEB ---------------------------------------------------------------------------------
def neb(initial: Atoms, final: Atoms, n_images: int, qm: CachedQMCalculator,
        ml_factory: Callable[[], Calculator], buffer_width: float,
        optimizer: str | QMMLOptimizer = "FIRE", fmax: float = 0.05, steps: int = 1000,
        k: float = 0.1, checkpoint: str | Path | None = None, vacuum: float = 5.0,
        log: Callable[[str], None] | None = print, fingerprint_extra=(), hard=None,
        accelerated=None, descriptor_cache=None, seeds=(), climb: bool = False
        ) -> tuple[list[Atoms], RunStats, dict]:
    """NEB of a glide path with one ForceQMMM per image (all sharing the QM cache).

    ``n_images`` counts all images including the two end points; the optimiser moves
    :func:`~qmml.forcemixing.neb_moving_images`.  The QM/buffer masks come from the
    initial image's region array and are the same for every image.  Spline tangents (no
    energies needed).  Returns images, stats and the virtual-work profile ``{"s",
    "energy", "barrier"}`` from ``NEB.integrate_forces``.  ``optimizer`` and the
    accelerated options as in :func:`relax`.
    """
    from ase.mep import NEB

    if n_images < 3:
        raise QmmlError(f"--images must be >= 3 (end points included), got {n_images}")
    if len(initial) != len(final) or (initial.numbers != final.numbers).any():
        raise QmmlError("NEB: initial and final structures must have the same atoms in the "
                        "same order")
    opt = _optimizer(optimizer, hard=hard, settings=accelerated,
                     descriptor_cache=descriptor_cache, seeds=seeds)
    images = [initial.copy() for _ in range(n_images - 1)] + [final.copy()]
    NEB(images, k=k, method="spline").interpolate(method="linear")
    # masks (QM and buffer) come from the initial image and are shared by every image
    make_force_qmmm(images[0], qm, ml_factory(), buffer_width, vacuum=vacuum)
    region = np.asarray(images[0].arrays["region"]).astype(str)
    for im in images[1:]:
        im.arrays["region"] = region.copy()
    stats, neb_obj = opt.neb(images, qm, ml_factory, buffer_width, fmax=fmax, steps=steps,
                             k=k, checkpoint=Path(checkpoint) if checkpoint else None,
                             vacuum=vacuum, log=log, fingerprint_extra=fingerprint_extra,
                             climb=climb)
    profile = virtual_work_profile(neb_obj)
    # integrate_forces also evaluated the two end points (cached after the first time)
    stats.count(qm)
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

