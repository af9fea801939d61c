"""What one outer step of the accelerated optimiser produces and judges: a QM-called
geometry (:class:`Evaluation`), a surrogate relaxation's end (:class:`InnerRelaxation`,
:class:`SurrogateStep`) and its stall test, and a fixed-point search."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from qmml.forcemixing import largest_norm


class InnerRelaxation(NamedTuple):
    """Where a surrogate relaxation ended, its steps, and why it stopped there if not
    converged: at the trust radius (``hit``) or stalled (``stalled``)."""

    positions: np.ndarray
    steps: int
    hit: bool
    stalled: bool = False


class StallWatch:
    """The lowest largest force along a relaxation's path (the start's included), where
    it was, and whether the relaxation has stalled: no new low for ``steps`` steps once
    it has got below the start's force (before that its forces may rise for a while,
    as an unstable surrogate's do; the trust radius ends such a relaxation)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.lowest, self.at = steps, np.inf, 0
        self.positions: np.ndarray | None = None

    def stalled(self, n: int, force: float, positions: np.ndarray) -> bool:
        """Step ``n`` (0: the start) with its largest force and positions."""
        if force < self.lowest:
            self.lowest, self.at, self.positions = force, n, positions
            return False
        return self.at > 0 and n - self.at >= self.steps


@dataclass
class SurrogateStep:
    """A relaxation of the surrogate from the anchor: where it ended, the surrogate forces
    there (the prediction the QM call is judged by), its steps, and whether it stopped at
    the trust radius."""

    positions: np.ndarray          # (n_images, N, 3)
    predicted: np.ndarray          # surrogate mixed forces there (n_images, N, 3)
    steps: int
    hit: bool
    kept: int = 0                  # NEB images left at their QM point (no QM call)
    fixed_point: str = ""          # the step's fixed-point search (FixedPointSearch.outcome)
                                   # or why there was none: "not searched"
                                   # (FIXED_POINT_MIN_STEPS), "not searched (band
                                   # stalled)"


@dataclass
class FixedPointSearch:
    """A Newton-Krylov search for the surrogate's fixed point: where it is (None if not
    found), the largest surrogate force at the start and after each Newton iteration, and
    the surrogate force evaluations it took."""

    positions: np.ndarray | None
    residuals: list[float]
    evaluations: int

    @property
    def outcome(self) -> str:
        found = "found" if self.positions is not None else "not found"
        return f"{found}, {self.evaluations} evaluations"


@dataclass
class Evaluation:
    positions: np.ndarray          # (n_images, N, 3)
    forces: np.ndarray             # true mixed forces (n_images, N, 3), no constraints
    qm_forces: np.ndarray          # raw QM forces of the QM atoms (n_images, n_qm, 3)
    fmax: float                    # convergence measure (constraints/NEB projection applied)
    image_fmax: np.ndarray         # that measure per moving image


def max_displacement(x: np.ndarray, start: np.ndarray) -> float:
    """Largest atomic distance between two (images, atoms, 3) position arrays."""
    return largest_norm(x - start)
