"""QM/ML optimisers by name: the plain ASE ones (:mod:`qmml.ase_optimizers`) and the
accelerated one (:mod:`qmml.accelerated`), all behind :class:`QMMLOptimizer`."""
from __future__ import annotations

from typing import Callable

from qmml import QmmlError
from qmml.accelerated import AcceleratedOptimizer
from qmml.ase_optimizers import OPTIMIZERS as ASE_OPTIMIZERS
from qmml.ase_optimizers import ASEOptimizer, QMMLOptimizer


def _ase(name: str) -> Callable[..., QMMLOptimizer]:
    # the options (hard set, surrogate settings, descriptor cache, seeds) are the
    # accelerated optimiser's; a plain ASE optimiser has none
    return lambda **options: ASEOptimizer(name)


REGISTRY: dict[str, Callable[..., QMMLOptimizer]] = {
    **{name: _ase(name) for name in ASE_OPTIMIZERS},
    "accelerated": AcceleratedOptimizer,
}


def get_optimizer(name: str, **options) -> QMMLOptimizer:
    """The optimiser registered as ``name``, made with ``options`` (``hard``, ``settings``,
    ``descriptor_cache``, ``seeds``: see :class:`~qmml.accelerated.AcceleratedOptimizer`)."""
    if name not in REGISTRY:
        raise QmmlError(f"unknown optimizer '{name}' (choose from {', '.join(REGISTRY)})")
    return REGISTRY[name](**options)
