"""Constrained linear least squares for Θ (method.md, "Retraining", eq. 3 of the preprint).

Minimise   ||GΘ − F||² + λS ||A_S(Θ − Θ0)||² + λ0 ||Θ − Θref||²
subject to A_H Θ = b   (exactly; b = A_H Θ0 when the hard rows only preserve properties).

Hard rows may be rank deficient (the paper's 115 rows have rank 37): they are reduced to an
orthonormal basis of their row space by an SVD, with the usual numerical rank (singular
values above ε·max(m, n)·σ_max, as ``numpy.linalg.matrix_rank``).  Θ = Θp + N y with Θp the minimum-change
particular solution and N an orthonormal basis of the null space of A_H, so every Θ this
returns satisfies the hard rows to machine precision.  This is the projector form of
method.md (Θ = Θ0 + Q_H x) written in the null-space basis, which is smaller and better
conditioned; ``kkt_solve`` is the independent check.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_factor, cho_solve, LinAlgError

from qmml import QmmlError


@dataclass
class FitResult:
    theta: np.ndarray
    hard_rank: int
    hard_residual_max: float
    n_hard_rows: int
    seconds: float
    diagnostics: dict = field(default_factory=dict)


RANK_GAP_WARNING = 10.0  # a cut between singular values closer than this is ambiguous


def rank_cut(shape: tuple[int, int]) -> float:
    """Relative singular-value cut of the hard rows: ε·max(m, n), the convention of
    ``numpy.linalg.matrix_rank`` and ``scipy.linalg.orth``."""
    return max(shape) * np.finfo(float).eps


def hard_row_space(hard: np.ndarray, rtol: float | None = None):
    """SVD of the hard rows: (U_r, s_r, V_r, V_null, s) with the numerical rank r and all
    singular values s.

    Singular values at or below ``rtol``·s_max count as zero; the default is
    :func:`rank_cut`.
    """
    u, s, vt = np.linalg.svd(hard, full_matrices=True)
    rank = numerical_rank(s, rank_cut(hard.shape) if rtol is None else rtol)
    return u[:, :rank], s[:rank], vt[:rank].T, vt[rank:].T, s


@dataclass(frozen=True)
class HardRows:
    """Hard rows with their SVD (:func:`hard_row_space`), decomposed once for every fit
    that keeps them exact: a loop that refits with the same rows passes this instead of
    the array, and pays for the SVD (k³ in the number of coefficients) once."""

    rows: np.ndarray
    rtol: float
    space: tuple  # hard_row_space(rows, rtol)

    @classmethod
    def of(cls, rows: np.ndarray, rtol: float | None = None) -> "HardRows":
        rows = np.atleast_2d(np.asarray(rows, dtype=float))
        cut = rank_cut(rows.shape) if rtol is None else rtol
        return cls(rows, cut, hard_row_space(rows, cut))


def numerical_rank(s: np.ndarray, rtol: float) -> int:
    """Number of singular values (descending) above ``rtol``·s_max."""
    return int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0


def rank_spectrum(s: np.ndarray, rtol: float, width: int = 3) -> dict:
    """The singular values around the rank cut, relative to the largest, and the ratio
    across the cut (last kept / first dropped; None when nothing is dropped).

    ``candidate_ranks`` names the cut's rank and, when that ratio is below
    ``RANK_GAP_WARNING``, the rank at the widest gap within ``width`` values of the cut:
    the rank is then a judgement call, and both are reported.
    """
    s = np.asarray(s, dtype=float)
    rank = numerical_rank(s, rtol)
    rel = s / s[0] if s.size and s[0] > 0 else s
    lo, hi = max(rank - width, 0), min(rank + width, rel.size)
    gap = float(rel[rank - 1] / rel[rank]) if 0 < rank < rel.size and rel[rank] > 0 \
        else None
    candidates = [rank]
    if gap is not None and gap < RANK_GAP_WARNING:
        ratios = {j: rel[j - 1] / rel[j] if rel[j] > 0 else np.inf
                  for j in range(max(lo, 1), hi) if j != rank}
        if ratios:
            candidates.append(int(max(ratios, key=ratios.get)))
    return {"cut_relative": float(rtol), "rank": rank,
            "singular_values_relative": {str(j + 1): float(rel[j]) for j in range(lo, hi)},
            "ratio_across_cut": gap, "candidate_ranks": candidates}


def solve_constrained(theta0: np.ndarray, gtg: np.ndarray | None = None,
                      gtf: np.ndarray | None = None, *,
                      hard: "np.ndarray | HardRows | None" = None,
                      hard_rhs: np.ndarray | None = None, soft_ata: np.ndarray | None = None,
                      lambda_soft: float = 1.0, lambda0: float = 500.0,
                      rtol: float | None = None, feasibility_tol: float = 1e-8) -> FitResult:
    """Θ minimising the loss above with hard rows exact; see the module docstring.

    ``gtg``/``gtf``: normal-equation sums of the force rows (None: no force targets).
    ``soft_ata``: A_SᵀA_S.  The Tikhonov centre is Θ0.  ``hard``: the rows, or
    :class:`HardRows` (already decomposed; ``rtol`` is then its own).
    """
    start = time.perf_counter()
    theta0 = np.asarray(theta0, dtype=float)
    k = theta0.size
    gtg = np.zeros((k, k)) if gtg is None else gtg
    gtf = np.zeros(k) if gtf is None else gtf
    if gtg.shape != (k, k) or gtf.shape != (k,):
        raise QmmlError(f"force normal equations have shape {gtg.shape}, expected {(k, k)}")
    if lambda0 < 0 or lambda_soft < 0:
        raise QmmlError("lambda0 and lambda-soft must be non-negative")

    # particular solution of the hard rows, smallest change from Θ0
    theta_p = theta0.copy()
    null = np.eye(k)
    rank = 0
    n_hard = 0
    spectrum = None
    decomposed = hard if isinstance(hard, HardRows) else None
    if decomposed is not None:
        hard = decomposed.rows
    if hard is not None and len(hard):
        hard = np.atleast_2d(np.asarray(hard, dtype=float))
        n_hard = hard.shape[0]
        if hard.shape[1] != k:
            raise QmmlError(f"hard rows have {hard.shape[1]} columns, Θ has {k}")
        rhs = hard @ theta0 if hard_rhs is None else np.asarray(hard_rhs, dtype=float)
        decomposed = decomposed or HardRows.of(hard, rtol)
        cut = decomposed.rtol
        u, s, v, null, s_all = decomposed.space
        rank = s.size
        spectrum = rank_spectrum(s_all, cut)
        if len(spectrum["candidate_ranks"]) > 1:
            warnings.warn(f"hard rows: rank {rank} by the cut ε·max(m, n)·σ_max, but the "
                          f"singular values across the cut differ by only "
                          f"{spectrum['ratio_across_cut']:.3g}x; rank "
                          f"{spectrum['candidate_ranks'][1]} is also plausible", stacklevel=2)
        if rank == k:
            raise QmmlError(f"hard constraints have full rank {k}: no freedom left to fit")
        theta_p = theta0 + v @ ((u.T @ (rhs - hard @ theta0)) / s)
        miss = np.abs(hard @ theta_p - rhs)
        scale = max(1.0, float(np.abs(rhs).max(initial=0.0)))
        if miss.max(initial=0.0) > feasibility_tol * scale:
            i = int(np.argmax(miss))
            raise QmmlError(f"hard constraints are infeasible: row {i} misses its target by "
                            f"{miss[i]:.3g} (inconsistent rows)")

    h = np.array(gtg, dtype=float)
    grad = gtf - h @ theta_p
    if soft_ata is not None:
        h = h + lambda_soft * soft_ata
        grad = grad - lambda_soft * soft_ata @ (theta_p - theta0)
    h[np.diag_indices(k)] += lambda0
    grad = grad - lambda0 * (theta_p - theta0)
    reduced = null.T @ h @ null
    rhs_red = null.T @ grad
    try:
        y = cho_solve(cho_factor(reduced), rhs_red)
    except LinAlgError:
        y = np.linalg.lstsq(reduced, rhs_red, rcond=None)[0]
    theta = theta_p + null @ y
    residual = 0.0
    if n_hard:
        residual = float(np.abs(hard @ theta - rhs).max())
    return FitResult(theta, rank, residual, n_hard, time.perf_counter() - start,
                     {"null_space_dim": null.shape[1], "hard_spectrum": spectrum})


def kkt_solve(theta0: np.ndarray, gtg: np.ndarray, gtf: np.ndarray, hard: np.ndarray,
              hard_rhs: np.ndarray | None = None, soft_ata: np.ndarray | None = None,
              lambda_soft: float = 1.0, lambda0: float = 500.0, rtol: float = 1e-11) -> np.ndarray:
    """The same problem by its KKT system (Lagrange multipliers); for cross-checks only.

    Rank-deficient hard rows are first reduced to a linearly independent subset by a
    pivoted QR (not the SVD the solver uses), which makes the KKT matrix non-singular.
    """
    from scipy.linalg import qr

    k = theta0.size
    h = gtg + lambda0 * np.eye(k)
    g = gtf + lambda0 * theta0
    if soft_ata is not None:
        h = h + lambda_soft * soft_ata
        g = g + lambda_soft * soft_ata @ theta0
    rhs = hard @ theta0 if hard_rhs is None else np.asarray(hard_rhs, dtype=float)
    _, r, piv = qr(hard.T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    keep = piv[: int(np.sum(diag > rtol * diag[0]))]
    a, b = hard[keep], rhs[keep]
    m = a.shape[0]
    kkt = np.block([[h, a.T], [a, np.zeros((m, m))]])
    return np.linalg.solve(kkt, np.concatenate([g, b]))[:k]
