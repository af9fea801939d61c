"""Elastic fitting of Θ0 (method.md, "Elastic fitting") and cubic elastic constants.

Energy is linear in Θ, so the stress of a homogeneously strained perfect crystal and its
strain derivatives are linear functionals of Θ.  Zero pressure at the target a0 and
C11, C12, C44 equal to targets are four hard rows for ``qmml.fitting.solve_constrained``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator
from scipy.optimize import brentq

from qmml import QmmlError
from qmml.descriptors import compute_descriptors, force_normal_equations
from qmml.fitting import FitResult, solve_constrained
from qmml.potential import SNAPPotential

STRAIN_STEP = 1e-4  # central differences: O(h²) ≈ 1e-8 relative error, far below 0.5 GPa
# start of the zero-pressure search of a bcc W-like potential; the root (xtol 1e-10 Å)
# depends on the bracket at that level, so every measurement uses the same start
A0_GUESS = 3.165


def bcc_cell(a0: float, n: int = 3, symbol: str = "W") -> Atoms:
    return bulk(symbol, "bcc", a=a0, cubic=True) * (n, n, n)


def strained(atoms: Atoms, voigt_strain: Sequence[float]) -> Atoms:
    """Copy of ``atoms`` deformed by F = I + ε (ε symmetric, Voigt xx yy zz yz xz xy with
    engineering shears γ = 2ε_ij)."""
    e = np.asarray(voigt_strain, dtype=float)
    eps = np.array([[e[0], e[5] / 2, e[4] / 2], [e[5] / 2, e[1], e[3] / 2],
                    [e[4] / 2, e[3] / 2, e[2]]])
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps).T, scale_atoms=True)
    return out


def _unit(i: int, h: float) -> np.ndarray:
    v = np.zeros(6)
    v[i] = h
    return v


def zero_pressure_a0(calc: Calculator, guess: float, symbol: str = "W", n: int = 1,
                     xtol: float = 1e-10) -> float:
    """Zero-pressure lattice constant of a cubic bcc crystal (Å): the energy minimum vs a.

    A root of the pressure of an n×n×n cell; the bracket is widened until p > 0 at the
    small side and p < 0 at the large side, so the root is a minimum, not a maximum.
    """
    def pressure(a: float) -> float:
        atoms = bcc_cell(a, n, symbol)
        atoms.calc = calc
        return float(-atoms.get_stress()[:3].mean())

    lo, hi = guess * 0.97, guess * 1.03
    p_lo, p_hi = pressure(lo), pressure(hi)
    for _ in range(20):
        if p_lo > 0 > p_hi:
            break
        if p_lo <= 0:
            lo *= 0.97
            p_lo = pressure(lo)
        if p_hi >= 0:
            hi *= 1.03
            p_hi = pressure(hi)
    else:
        raise QmmlError(f"no zero-pressure bcc lattice constant between {lo:.3f} and "
                        f"{hi:.3f} Å (p = {p_lo:.3g}, {p_hi:.3g} eV/Å³)")
    return float(brentq(pressure, lo, hi, xtol=xtol, rtol=1e-15))


def measure_cubic_elastic(calculator: Callable[[], Calculator] | Calculator, a0_guess: float,
                          symbol: str = "W", n: int = 3, h: float = STRAIN_STEP) -> dict:
    """a0 (zero pressure) and C11, C12, C44 (GPa) of a cubic bcc crystal by finite
    differences of the calculator's stress: independent of the fitting code."""
    calc = calculator() if callable(calculator) and not isinstance(calculator, Calculator) \
        else calculator

    def stress(atoms: Atoms) -> np.ndarray:
        atoms.calc = calc
        return atoms.get_stress()

    a0 = zero_pressure_a0(calc, a0_guess, symbol, n)
    ref = bcc_cell(a0, n, symbol)
    d_xx = (stress(strained(ref, _unit(0, h))) - stress(strained(ref, _unit(0, -h)))) / (2 * h)
    d_yz = (stress(strained(ref, _unit(3, h))) - stress(strained(ref, _unit(3, -h)))) / (2 * h)
    return {"a0": a0, "C11": d_xx[0] / units.GPa, "C12": d_xx[1] / units.GPa,
            "C44": d_yz[3] / units.GPa}


def elastic_rows(potential: SNAPPotential, a0: float, n: int = 3,
                 h: float = STRAIN_STEP) -> np.ndarray:
    """Rows R with R·Θ = [pressure·(−1)… i.e. mean diagonal stress, C11, C12, C44] at a0,
    stresses in eV/Å³ (ASE convention), for the potential's descriptor space."""
    symbol = potential.elements[0]
    ref = bcc_cell(a0, n, symbol)

    def rows(atoms: Atoms) -> np.ndarray:
        return compute_descriptors(atoms, potential, forces=False, stress=True).stress

    s0 = rows(ref)
    d_xx = (rows(strained(ref, _unit(0, h))) - rows(strained(ref, _unit(0, -h)))) / (2 * h)
    d_yz = (rows(strained(ref, _unit(3, h))) - rows(strained(ref, _unit(3, -h)))) / (2 * h)
    return np.array([s0[:3].mean(axis=0), d_xx[0], d_xx[1], d_yz[3]])


def fit_elastic(potential: SNAPPotential, a0: float, C11: float, C12: float, C44: float,
                soft_configs: Sequence[Atoms] = (), lambda0: float = 1.0,
                lambda_soft: float = 1.0) -> tuple[SNAPPotential, FitResult]:
    """Θ0 with zero stress at a0 and exactly the given C11, C12, C44 (GPa), changing the
    starting Θ as little as possible (Tikhonov) and keeping MD forces (soft rows)."""
    for name, value in (("a0", a0), ("C11", C11), ("C12", C12), ("C44", C44)):
        if not np.isfinite(value) or value <= 0:
            raise QmmlError(f"elastic target {name} must be a positive number, got {value}")
    if C11 <= C12:
        raise QmmlError(f"elastic targets C11={C11} <= C12={C12}: not a stable cubic crystal")
    theta0 = potential.theta
    hard = elastic_rows(potential, a0)
    rhs = np.array([0.0, C11, C12, C44]) * units.GPa
    soft = force_normal_equations(list(soft_configs), potential, source="soft").normal
    result = solve_constrained(theta0, hard=hard, hard_rhs=rhs,
                               soft_ata=soft.matrix() if soft.n_rows else None,
                               lambda_soft=lambda_soft, lambda0=lambda0)
    if soft.n_rows:
        result.diagnostics["soft_force_change_rmse"] = soft.rmse(result.theta - theta0)
    result.diagnostics["theta_change_norm"] = float(np.linalg.norm(result.theta - theta0))
    return potential.with_theta(result.theta), result
