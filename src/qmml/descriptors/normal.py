"""Normal equations GᵀG, GᵀF, FᵀF of force rows, accumulated one configuration at a time."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.blas import dsyrk


@dataclass
class NormalEquations:
    """Accumulates GᵀG, GᵀF and FᵀF over force rows, one configuration at a time."""

    n_coefficients: int
    gtg: np.ndarray = field(init=False)
    gtf: np.ndarray = field(init=False)
    ftf: float = 0.0
    n_rows: int = 0

    def __post_init__(self) -> None:
        k = self.n_coefficients
        self.gtg = np.zeros((k, k), order="F")
        self.gtf = np.zeros(k)

    def add(self, rows: np.ndarray, targets: np.ndarray | None = None) -> None:
        if rows.shape[0] == 0:
            return
        # symmetric rank-k update, upper triangle only (half the flops of rows.T @ rows)
        # rows.T of C-ordered rows is Fortran-ordered: BLAS reads it in place (no copy)
        self.gtg = dsyrk(1.0, rows.T, beta=1.0, c=self.gtg, trans=0, lower=0,
                         overwrite_c=1)
        if targets is not None:
            t = np.asarray(targets, dtype=float).ravel()
            self.gtf += rows.T @ t
            self.ftf += float(t @ t)
        self.n_rows += rows.shape[0]

    def merge(self, other: "NormalEquations") -> None:
        """Add another accumulator's sums.  Both hold the upper triangle of GᵀG and zeros
        below it (dsyrk never writes there), so a plain sum needs no 20 MB np.triu copy."""
        self.gtg += other.gtg
        self.gtf += other.gtf
        self.ftf += other.ftf
        self.n_rows += other.n_rows

    def matrix(self) -> np.ndarray:
        """The full symmetric GᵀG."""
        upper = np.triu(self.gtg)
        return upper + np.triu(upper, 1).T

    def residual_sq(self, theta: np.ndarray) -> float:
        """||GΘ − F||² from the accumulated sums."""
        g = self.matrix()
        return float(theta @ g @ theta - 2 * theta @ self.gtf + self.ftf)

    def rmse(self, theta: np.ndarray) -> float:
        """Root mean square of the force-component errors GΘ − F (no targets: of GΘ)."""
        return float(np.sqrt(max(self.residual_sq(theta), 0.0) / self.n_rows))


@dataclass
class ForceSums:
    """GᵀG, GᵀF sums of a ForceSet plus the rows asked to be kept (frame order)."""

    normal: NormalEquations
    kept_rows: list[np.ndarray]
    kept_targets: list[np.ndarray]
