"""The constrained solver: exact hard rows, agreement with an independent KKT solve."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from qmml import QmmlError
from qmml.descriptors import NormalEquations, compute_descriptors, energy_rows
from qmml.elastic import strained
from qmml.fitting import kkt_solve, solve_constrained


def _strain_configs(a0: float, n: int = 2):
    base = bulk("W", "bcc", a0, cubic=True) * (n, n, n)
    configs = []
    for mode in range(6):
        for eps in np.linspace(-0.01, 0.01, 5):
            e = np.zeros(6)
            e[mode] = eps
            configs.append(strained(base, e))
    vac = base.copy()
    del vac[0]
    return configs + [vac]


@pytest.fixture(scope="module")
def problem(milady):
    rng = np.random.default_rng(7)
    pot = milady.to_quadratic()
    theta0 = pot.theta
    hard = energy_rows(_strain_configs(3.18551), pot)
    ne = NormalEquations(theta0.size)
    soft = NormalEquations(theta0.size)
    for i in range(2):
        atoms = bulk("W", "bcc", 3.18551, cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=i)
        g = compute_descriptors(atoms, pot).forces
        ne.add(g, g @ theta0 + rng.normal(0, 0.2, g.shape[0]))  # perturbed "QM" forces
        atoms.rattle(0.05, seed=10 + i)
        soft.add(compute_descriptors(atoms, pot).forces)
    return pot, theta0, hard, ne, soft


def test_hard_rows_exact_and_equal_to_kkt(problem):
    pot, theta0, hard, ne, soft = problem
    res = solve_constrained(theta0, ne.matrix(), ne.gtf, hard=hard, soft_ata=soft.matrix(),
                            lambda_soft=1.0, lambda0=1.0)
    assert 0 < res.hard_rank < hard.shape[0]  # strain rows are rank deficient, as in the paper
    per_atom_change = np.abs(hard @ (res.theta - theta0))
    assert per_atom_change.max() <= 1e-9
    assert res.hard_residual_max <= 1e-9
    kkt = kkt_solve(theta0, ne.matrix(), ne.gtf, hard, soft_ata=soft.matrix(),
                    lambda_soft=1.0, lambda0=1.0)
    assert np.abs(kkt - theta0).max() > 1e-6  # the fit really moved Θ
    np.testing.assert_allclose(res.theta, kkt, rtol=0, atol=1e-6 * np.abs(kkt).max())
    # the fit improves the target residual over Θ0
    assert ne.residual_sq(res.theta) < ne.residual_sq(theta0)


def test_projector_formula_of_method_md(problem):
    """Θ = Θ0 + Q_H x with [Q(GᵀG+λS AᵀA)Q + λ0 I] x = Q Gᵀ(F − GΘ0) gives the same Θ."""
    pot, theta0, hard, ne, soft = problem
    lam0 = 0.5
    gtg, gtf, ata = ne.matrix(), ne.gtf, soft.matrix()
    u = np.linalg.svd(hard, full_matrices=False)[2]
    res = solve_constrained(theta0, gtg, gtf, hard=hard, soft_ata=ata, lambda0=lam0)
    basis = u[: res.hard_rank].T
    q = np.eye(theta0.size) - basis @ basis.T
    x = np.linalg.solve(q @ (gtg + ata) @ q + lam0 * np.eye(theta0.size),
                        q @ (gtf - gtg @ theta0))
    np.testing.assert_allclose(theta0 + q @ x, res.theta, atol=1e-7 * np.abs(res.theta).max())


def test_infeasible_and_full_rank_hard_sets(problem):
    pot, theta0, hard, ne, soft = problem
    doubled = np.vstack([hard[:1], hard[:1]])
    with pytest.raises(QmmlError, match="infeasible"):
        solve_constrained(theta0, hard=doubled, hard_rhs=np.array([0.0, 1.0]))
    with pytest.raises(QmmlError, match="full rank"):
        solve_constrained(theta0[:5], hard=np.eye(5))


def _rows_with_singular_values(s: np.ndarray, n_rows: int, n_cols: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(n_rows, n_rows)))[0]
    v = np.linalg.qr(rng.normal(size=(n_cols, n_cols)))[0]
    full = np.zeros(n_rows)
    full[: s.size] = s
    return (u * full) @ v[:n_rows]


def test_rank_by_the_standard_numerical_convention():
    """Singular values a few ε·max(m, n) above the cut count, as in numpy's matrix_rank."""
    m, n = 40, 200
    cut = max(m, n) * np.finfo(float).eps
    s = np.concatenate([np.logspace(0, -8, 30), [5 * cut, 4 * cut, 3 * cut]])
    rows = _rows_with_singular_values(s, m, n)
    theta0 = np.linspace(-1, 1, n)
    res = solve_constrained(theta0, hard=rows, lambda0=1.0)
    assert res.hard_rank == 33 == np.linalg.matrix_rank(rows)
    spectrum = res.diagnostics["hard_spectrum"]
    assert spectrum["rank"] == 33 and spectrum["candidate_ranks"] == [33]
    assert spectrum["cut_relative"] == pytest.approx(cut)
    assert spectrum["singular_values_relative"]["33"] == pytest.approx(3 * cut, rel=1e-2)
    assert spectrum["ratio_across_cut"] > 100  # the rest is round-off, far below the cut


def test_an_ambiguous_cut_warns_with_both_ranks():
    m, n = 40, 200
    cut = max(m, n) * np.finfo(float).eps
    s = np.concatenate([np.logspace(0, -8, 30), [2 * cut, 0.5 * cut]])
    rows = _rows_with_singular_values(s, m, n)
    with pytest.warns(UserWarning, match=r"rank 31 .* 4(\.\d+)?x; rank 30 is also plausible"):
        res = solve_constrained(np.zeros(n), hard=rows, lambda0=1.0)
    assert res.hard_rank == 31
    assert res.diagnostics["hard_spectrum"]["candidate_ranks"] == [31, 30]
    assert res.hard_residual_max <= 1e-12
