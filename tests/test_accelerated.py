"""ML-accelerated QM/ML relaxation (qmml.accelerated) against plain FIRE, stand-in QM.

Stand-in QM = W_2940_2017_2 + ZBL ("reference", classical, not QM); Θ_i = W_milady_lml.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from conftest import MILADY
from qmml.accelerated import (AcceleratedSettings, ForceDifferences, MixedSystem,
                              SurrogateMixing, default_hard_set, qm_point_frames,
                              neb_accelerated, relax_accelerated, seed_points)
from qmml.descriptors import DescriptorCache, compute_descriptors, energy_rows
from qmml.engines import engine_settings_hash
from qmml.forcemixing import max_force
from qmml.qmcache import KILL_ENV, CachedQMCalculator, QMCache
from qmml.qmmm import make_force_qmmm, relax
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder

FMAX = 0.01
BUFFER = 5.0
REFERENCE = {"engine": "reference"}


def cached(directory) -> CachedQMCalculator:
    return CachedQMCalculator.from_config(REFERENCE, directory)


@pytest.fixture(scope="module")
def start(milady):
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=20.0, fixed_width=6.0)
    counts = cylinder_region(atoms, None, qm_radius=4.5, buffer_width=BUFFER,
                             ml_cutoff=milady.cutoff)
    assert counts["QM"] == 12
    return atoms


@pytest.fixture(scope="module")
def fire_run(start, milady, tmp_path_factory):
    atoms = start.copy()
    qm = cached(tmp_path_factory.mktemp("fire_cache"))
    stats = relax(atoms, qm, milady.calculator(), BUFFER, optimizer="FIRE", fmax=FMAX,
                  log=None)
    assert stats.converged
    return atoms, stats


@pytest.fixture(scope="module")
def accelerated_run(start, milady, tmp_path_factory):
    work = tmp_path_factory.mktemp("accelerated")
    atoms = start.copy()
    stats = relax_accelerated(atoms, cached(work / "cache"), milady, BUFFER, fmax=FMAX,
                              checkpoint=work / "run.ckpt", log=None)
    return atoms, stats, work


def test_accelerated_reaches_fire_minimum_with_fewer_qm_calls(start, milady, fire_run,
                                                              accelerated_run, tmp_path):
    fire_atoms, fire = fire_run
    atoms, stats, _ = accelerated_run
    assert stats.converged and stats.fmax <= FMAX
    assert stats.n_qm_real_calls == stats.n_qm_calls  # no repeats within a run
    # independent check of the TRUE QM/ML forces: fresh ForceQMMM, fresh (empty) cache
    check = atoms.copy()
    check.calc = make_force_qmmm(check, cached(tmp_path / "fresh"), milady.calculator(),
                                 BUFFER)
    free = ~check.arrays["fix_mask"]
    forces = check.get_forces()[free]
    assert np.linalg.norm(forces, axis=1).max() <= FMAX
    # same minimum as FIRE (free atoms), fixed atoms untouched
    assert np.abs(atoms.positions[free] - fire_atoms.positions[free]).max() < 0.01
    np.testing.assert_array_equal(atoms.positions[~free], start.positions[~free])
    # measured: FIRE 36 QM calls, accelerated 3 (12x; 4 without the ML pre-relaxation)
    ratio = fire.n_qm_real_calls / stats.n_qm_real_calls
    print(f"QM calls: FIRE {fire.n_qm_real_calls}, accelerated {stats.n_qm_real_calls} "
          f"({ratio:.1f}x)")
    assert ratio >= 10.0
    assert stats.rejected_steps == 0 and stats.fallback_steps == 0


def test_first_qm_call_is_at_the_ml_minimum(start, milady, accelerated_run):
    """The elastic-field start is relaxed with Θ_i alone before any QM call: the first
    QM-called geometry (from the checkpoint) has ML forces below the inner tolerance."""
    _, _, work = accelerated_run
    with open(work / "run.ckpt", "rb") as fh:
        first = pickle.load(fh)["points"][0][0]
    free = ~start.arrays["fix_mask"]
    ml = start.copy()
    ml.calc = milady.calculator()
    assert np.linalg.norm(ml.get_forces()[free], axis=1).max() > 0.5  # far from it at first
    ml.positions = first
    settings = AcceleratedSettings()
    assert np.linalg.norm(ml.get_forces()[free], axis=1).max() <= \
        settings.inner_fmax_ratio * FMAX
    np.testing.assert_array_equal(first[~free], start.positions[~free])


@pytest.mark.slow
def test_accelerated_edge_core_ends_in_fires_minimum(milady, tmp_path):
    """The edge core starts 5.6 eV/Å from equilibrium; large surrogate steps (a 1 Å trust
    radius) once carried it 0.55 Å away into another local minimum than FIRE's."""
    start = dislocation_cylinder("edge100_110", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=20.0, fixed_width=6.0)
    assert cylinder_region(start, None, 4.5, BUFFER, milady.cutoff)["QM"] == 18
    fire = start.copy()
    fire_stats = relax(fire, cached(tmp_path / "fire"), milady.calculator(), BUFFER,
                       optimizer="FIRE", fmax=FMAX, log=None)
    atoms = start.copy()
    stats = relax_accelerated(atoms, cached(tmp_path / "acc"), milady, BUFFER, fmax=FMAX,
                              log=None)
    assert fire_stats.converged and stats.converged and stats.fmax <= FMAX
    free = ~start.arrays["fix_mask"]
    assert np.abs(atoms.positions[free] - fire.positions[free]).max() < 0.01
    # measured: FIRE 63 QM calls, accelerated 4 (7 without the ML pre-relaxation)
    assert fire_stats.n_qm_real_calls / stats.n_qm_real_calls >= 10.0


def test_every_surrogate_keeps_hard_rows_exact(milady, accelerated_run):
    _, stats, _ = accelerated_run
    assert len(stats.surrogate_hard_residuals) == stats.outer_steps >= 2
    assert stats.surrogate_hard_residual_max <= 1e-9
    # independent: energies per atom of the hard set with each surrogate vs Θ_i, computed
    # through LAMMPS pair_style snap (not the descriptor rows the solver used)
    space = milady.to_quadratic()  # the default surrogate space: Θ_i embedded
    assert stats.surrogate_thetas[0].size == space.theta.size
    hard = default_hard_set(milady)[::7]
    rows = energy_rows(hard, space)
    base = rows @ space.theta
    for theta in stats.surrogate_thetas:
        np.testing.assert_allclose(rows @ theta, base, rtol=0, atol=1e-9)
        sur_calc = space.with_theta(theta).calculator()
        for cell, e_row in zip(hard[:2], base[:2]):
            a = cell.copy()
            a.calc = sur_calc
            assert abs(a.get_potential_energy() / len(a) - e_row) < 1e-9
    # ...while the surrogates really differ from Θ_i where it matters (the QM forces),
    # the first one too: before any secant it is fitted to the first call's QM forces
    assert min(np.abs(t - space.theta).max() for t in stats.surrogate_thetas) > 1e-6


def test_secant_fit_sees_force_changes_only(milady):
    """Forces = G·Θ* + a constant per-row offset: Θ* solves the secant normal equations
    exactly whatever the offset, and the anchor itself adds no row."""
    from ase.build import bulk

    rng = np.random.default_rng(7)
    base = bulk("W", "bcc", a=MILADY["a0"], cubic=True).repeat(3)
    mask = np.zeros(len(base), bool)
    mask[:5] = True
    theta_star = milady.theta * (1 + 0.05 * rng.standard_normal(milady.theta.size))
    frames = []
    for _ in range(4):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        frames.append((a.positions[None], compute_descriptors(a, milady, force_mask=mask).forces))
    fits = []
    for offset_scale in (0.0, 3.0):
        data = ForceDifferences(1, milady.theta.size)
        offset = offset_scale * rng.standard_normal(3 * mask.sum())
        for positions, rows in frames:
            data.add([rows], [(rows @ theta_star + offset).reshape(-1, 3)], positions)
        gtg, gtf = data.normal_equations(anchor=2, force_weight=0.0)
        np.testing.assert_allclose(gtg @ theta_star, gtf, rtol=1e-9,
                                   atol=1e-9 * np.abs(gtf).max())
        fits.append((gtg, gtf))
    np.testing.assert_allclose(fits[0][1], fits[1][1], rtol=1e-9, atol=1e-9)
    positions, rows = frames[0]
    one = ForceDifferences(1, milady.theta.size)
    one.add([rows], [(rows @ theta_star).reshape(-1, 3)], positions)
    assert not one.normal_equations(anchor=0, force_weight=0.0)[0].any()


def test_absolute_force_rows_join_the_secants(milady):
    """With force_weight w the absolute QM forces are fitted too: forces = G·Θ* → Θ* still
    solves the normal equations, which add w²·GᵀG per geometry; one geometry alone gives
    a fit (secants alone give none); a constant offset, invisible to the secants, is seen."""
    from ase.build import bulk

    rng = np.random.default_rng(5)
    base = bulk("W", "bcc", a=MILADY["a0"], cubic=True).repeat(3)
    mask = np.zeros(len(base), bool)
    mask[:5] = True
    theta_star = milady.theta * (1 + 0.05 * rng.standard_normal(milady.theta.size))
    offset = rng.standard_normal(3 * mask.sum())
    data, shifted = (ForceDifferences(1, milady.theta.size) for _ in range(2))
    absolute = np.zeros((milady.theta.size,) * 2)
    for _ in range(3):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        rows = compute_descriptors(a, milady, force_mask=mask).forces
        data.add([rows], [(rows @ theta_star).reshape(-1, 3)], a.positions[None])
        shifted.add([rows], [(rows @ theta_star + offset).reshape(-1, 3)], a.positions[None])
        absolute += rows.T @ rows
    w = 0.5
    gtg, gtf = data.normal_equations(anchor=0, force_weight=w)
    secants_only = data.normal_equations(anchor=0, force_weight=0.0)[0]
    np.testing.assert_allclose(gtg, secants_only + w ** 2 * absolute, rtol=1e-12,
                               atol=1e-12 * np.abs(gtg).max())
    np.testing.assert_allclose(gtg @ theta_star, gtf, rtol=1e-9, atol=1e-9 * np.abs(gtf).max())
    _, gtf_shifted = shifted.normal_equations(anchor=0, force_weight=w)
    assert np.abs(gtf_shifted - gtf).max() > 1e-3 * np.abs(gtf).max()
    one = ForceDifferences(1, milady.theta.size)
    one.add([data.rows[0][0]], [data.forces[0][0]], data.positions[0])
    assert one.normal_equations(anchor=0, force_weight=w)[0].any()


def test_linear_term_makes_surrogate_exact_at_every_geometry(milady):
    """QM forces that no SNAP Θ reproduces (Θ*'s plus a smooth non-SNAP field): with the
    Δ offset and the multisecant term, the surrogate of ANY Θ equals them at every stored
    geometry, and the term vanishes at the anchor and for directions no step explored."""
    from ase.build import bulk

    rng = np.random.default_rng(11)
    base = bulk("W", "bcc", a=MILADY["a0"], cubic=True).repeat(3)
    mask = np.zeros(len(base), bool)
    mask[:4] = True
    cluster = np.zeros(len(base), bool)
    cluster[:20] = True
    theta_star = milady.theta * (1 + 0.05 * rng.standard_normal(milady.theta.size))
    data = ForceDifferences(1, milady.theta.size)
    truth = []
    for _ in range(5):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        rows = compute_descriptors(a, milady, force_mask=mask).forces
        forces = (rows @ theta_star).reshape(-1, 3) + np.sin(a.positions[mask] * 3.0)
        truth.append((a.positions, rows, forces))
        data.add([rows], forces[None], a.positions[None])
    anchor = 1
    x0, rows0, f0 = truth[anchor]
    offset = f0 - (rows0 @ milady.theta).reshape(-1, 3)
    term = data.linear_term(anchor, 0, milady.theta, cluster)
    assert term[2].shape == (4, 3 * 20)  # four secants (the anchor adds none)
    sur = SurrogateMixing(mask, milady.calculator(), milady, reach=10.0)
    sur.secant = term
    for x, rows, forces in truth:
        model = (rows @ milady.theta).reshape(-1, 3) + offset + sur.linear_term(x)
        np.testing.assert_allclose(model, forces, rtol=0, atol=1e-9)
    assert np.abs(sur.linear_term(x0)).max() < 1e-12
    # a move orthogonal to every secant (or of atoms outside the cluster) gets no term
    steps = np.array([(x - x0)[cluster].ravel() for x, _, _ in truth])
    probe = rng.standard_normal(steps.shape[1])
    probe -= steps.T @ np.linalg.lstsq(steps.T, probe, rcond=None)[0]
    moved = x0.copy()
    moved[cluster] += probe.reshape(-1, 3) * 0.01
    moved[~cluster] += 0.1
    assert np.abs(sur.linear_term(moved)).max() < 1e-9


def test_delta_corrected_surrogate_equals_true_forces_at_anchor(start, milady, tmp_path):
    atoms = start.copy()
    qm = cached(tmp_path / "cache")
    true = make_force_qmmm(atoms, qm, milady.calculator(), BUFFER)
    atoms.calc = true
    f_true = atoms.get_forces(apply_constraint=False)
    qm_mask = atoms.arrays["region"] == "QM"
    raw_qm = qm.results["forces"][true.qm_selection_mask[true.qm_buffer_mask]]
    theta = milady.theta * (1 + 0.01 * np.sin(np.arange(milady.theta.size)))
    reach = 2 * milady.cutoff + 2 * 0.3
    sur = SurrogateMixing(qm_mask, milady.calculator(), milady.with_theta(theta), reach)
    probe = atoms.copy()
    probe.calc = sur
    without = probe.get_forces(apply_constraint=False)
    assert np.abs(without - f_true).max() > 1e-3  # the perturbed surrogate is wrong...
    sur.offset = raw_qm - sur.raw_surrogate_qm_forces(probe)
    sur.reset()
    # ...and exact at the anchor once Δ-corrected (zero-mean shift included)
    np.testing.assert_allclose(probe.get_forces(apply_constraint=False), f_true, atol=1e-10)
    # the surrogate's QM-atom forces come from a cluster cut at the anchor: a fraction of
    # the atoms, yet equal to the whole system's forces after every atom moved <= 0.3 Å
    index, cluster, _ = sur._cluster_of(probe)
    assert qm_mask.sum() < len(cluster) < 0.8 * len(probe)
    rng = np.random.default_rng(3)
    step = rng.normal(0.0, 1.0, probe.positions.shape)
    step *= 0.3 / np.linalg.norm(step, axis=1).max()
    probe.positions += step
    whole = probe.copy()
    whole.calc = milady.with_theta(theta).calculator()
    np.testing.assert_allclose(sur.raw_surrogate_qm_forces(probe),
                               whole.get_forces()[qm_mask], rtol=0, atol=1e-10)


def test_fixed_point_step_stays_where_a_minimiser_leaves(start, milady, tmp_path):
    """At a saddle of the surrogate the inner LBFGS runs to the trust radius; Newton-Krylov
    finds the fixed point next to the anchor (benchmarks/README.md §9)."""
    atoms = start.copy()
    system = MixedSystem([atoms], [0], cached(tmp_path), milady.calculator, milady,
                     AcceleratedSettings(), BUFFER, 5.0, None)
    x, _ = system.relax_ml(0.002, "LBFGS", 3000)
    ev = system.evaluate_true(x)
    assert ev.fmax > 0.1  # QM and ML disagree at the ML minimum: something to relax

    def max_step(y):
        return np.sqrt(((y - ev.positions) ** 2).sum(axis=2)).max()

    def max_force_at_fixed_point():
        return np.linalg.norm(system.sur_target.get_forces()[system.free], axis=1).max()

    # a stable surrogate (Θ_i + Δ): the fixed point is the minimiser's minimum
    system.set_surrogate(system.theta_i, ev.positions, ev.qm_forces)
    x_min, _, hit, _ = system.relax_surrogate(ev.positions, 0.3, 0.001, "LBFGS", 3000)
    assert not hit
    x_fp = system.nearest_fixed_point(ev.positions, 0.3, 0.001).positions
    assert max_force_at_fixed_point() <= 0.001
    assert np.abs(x_fp - x_min).max() < 2e-3
    assert system.nearest_fixed_point(ev.positions, 0.5 * max_step(x_fp),
                                      0.001).positions is None
    # a saddle: an outward spring of 40 eV/Å² on the QM atoms (force +k·d, as a surrogate
    # with Θ_i's negative curvature along a core mode has)
    cluster = system.images[0].calc.qm_buffer_mask
    n_qm = int(system.qm_mask.sum())
    pick = np.zeros((3 * n_qm, 3 * int(cluster.sum())))
    pick[np.arange(3 * n_qm), np.flatnonzero(np.repeat(system.qm_mask[cluster], 3))] = 1.0
    calc = system.sur_images[0].calc
    calc.secant = (cluster, ev.positions[0][cluster].copy(), 40.0 * pick, np.eye(3 * n_qm))
    calc.reset()
    x_min, _, hit, _ = system.relax_surrogate(ev.positions, 0.3, 0.001, "LBFGS", 3000)
    assert hit and max_step(x_min) == pytest.approx(0.3)
    at_trust_radius = max_force_at_fixed_point()
    # stopped once its largest force has not reached a new low for 10 steps, the same
    # relaxation ends inside the trust radius at the lowest-force point of its path: where
    # it stood 10 steps before it stopped
    system.set_positions(ev.positions, "sur")
    at_anchor = max_force_at_fixed_point()
    x_low, n, hit, stalled = system.relax_surrogate(ev.positions, 0.3, 0.001, "LBFGS", 3000,
                                                    stall_steps=10)
    assert stalled and not hit and max_step(x_low) < 0.1
    assert max_force_at_fixed_point() < 0.25 * at_anchor < at_trust_radius
    x_before, *_ = system.relax_surrogate(ev.positions, 0.3, 0.001, "LBFGS", n - 10)
    np.testing.assert_array_equal(x_before, x_low)
    search = system.nearest_fixed_point(ev.positions, 0.3, 0.001)
    x_fp = search.positions
    assert x_fp is not None and max_step(x_fp) < 0.05
    # Newton converges: each iteration cuts the largest surrogate force at least in half
    assert all(b <= 0.5 * a for a, b in zip(search.residuals, search.residuals[1:]))
    assert max_force_at_fixed_point() <= 0.001


def test_a_relaxation_stalls_only_after_getting_below_its_start():
    """The stall stop ends a relaxation once its largest force, below the start's, has
    not reached a new low for the window, at that low; one whose forces rose from the
    start (an unstable surrogate: the first 31 steps of a tblite screw relaxation's
    surrogate, eV/Å) goes on to the trust radius instead of stopping where it began."""
    from qmml.accelerated.records import StallWatch

    rising = [0.838, 1.695, 13.43, 1.193, 1.135, 1.759, 6.311, 1.344, 2.015, 25.697, 11.26,
              12.965, 13.393, 9.157, 7.71, 11.845, 7.287, 7.03, 6.244, 11.77, 8.158, 11.104,
              7.805, 7.577, 6.19, 17.702, 7.904, 15.059, 5.157, 7.224, 5.898]
    watch = StallWatch(30)
    assert not any(watch.stalled(n, f, np.full(3, n)) for n, f in enumerate(rising))
    wandering = [0.54, 0.032, 0.026, 0.034, 0.021, 0.023, 0.055] + [0.03] * 29
    watch = StallWatch(30)
    stops = [watch.stalled(n, f, np.full(3, n)) for n, f in enumerate(wandering)]
    assert stops.index(True) == 34 and watch.at == 4 and watch.lowest == 0.021
    np.testing.assert_array_equal(watch.positions, np.full(3, 4))


def test_no_fixed_point_search_after_a_quick_trust_hit(start, milady, tmp_path):
    """From the elastic-field start (forces near 1 eV/Å) the surrogate relaxation reaches a
    0.05 Å trust radius in a few steps: no fixed-point search follows, and the step is
    where the relaxation stopped."""
    from qmml.accelerated.system import FIXED_POINT_MIN_STEPS

    settings = AcceleratedSettings(secant_correction=False)
    system = MixedSystem([start.copy()], [0], cached(tmp_path), milady.calculator, milady,
                         settings, BUFFER, 5.0, None)
    anchor = system.evaluate_true()
    assert anchor.fmax > 0.5
    step = system.surrogate_step(system.theta_i, anchor, 0, None, settings, 0.05, 0.01)
    assert step.hit and step.steps < FIXED_POINT_MIN_STEPS
    assert step.fixed_point == "not searched"
    moved = np.sqrt(((step.positions - anchor.positions) ** 2).sum(axis=2)).max()
    assert moved == pytest.approx(0.05)


def test_ml_relaxation_stops_at_its_lowest_point_once_stalled(start, milady, tmp_path):
    """The relaxation with Θ_i alone stops once its largest force has not reached a new
    low for ``stall_steps`` steps (FIRE's force rises and falls on its way down), at the
    lowest-force point of its path; without the stall stop it runs all its steps."""
    def relax(stall_steps: int, steps: int) -> tuple[float, int]:
        system = MixedSystem([start.copy()], [0], cached(tmp_path), milady.calculator,
                             milady, AcceleratedSettings(), BUFFER, 5.0, None)
        x, n = system.relax_ml(1e-6, "FIRE", steps, stall_steps)
        system.set_positions(x, "sur")
        return max_force(system.sur_target), n

    lowest, stopped_after = relax(3, 60)
    assert stopped_after < 60
    last, all_steps = relax(0, stopped_after)
    assert all_steps == stopped_after
    assert lowest < last  # the stop returned the lowest point, not the last one


def test_a_stalled_band_gets_no_fixed_point_search(start, milady, tmp_path, monkeypatch):
    """After a stalled surrogate relaxation a single structure gets the fixed-point search
    and a band does not; either way the step ends where the relaxation stalled."""
    from qmml.accelerated.records import InnerRelaxation

    settings = AcceleratedSettings()
    middle = start.copy()
    middle.positions[middle.arrays["region"] == "QM"] += 0.02
    outcomes = {}
    for kind, images, moving, neb_kwargs in (
            ("single", [middle.copy()], [0], None),
            ("band", [start.copy(), middle.copy(), start.copy()], [1],
             {"k": 0.1})):
        system = MixedSystem(images, moving, cached(tmp_path / kind), milady.calculator,
                             milady, settings, BUFFER, 5.0, neb_kwargs)
        anchor = system.evaluate_true()
        lowest = anchor.positions.copy()
        lowest[:, system.free] += 0.001
        searches = []
        search = system.nearest_fixed_point
        monkeypatch.setattr(system, "relax_surrogate",  # a relaxation that stalled
                            lambda *args, **kwargs: InnerRelaxation(lowest, 40, False, True))
        monkeypatch.setattr(system, "nearest_fixed_point",
                            lambda *args, **kwargs: searches.append(1) or search(*args,
                                                                                  **kwargs))
        step = system.surrogate_step(system.theta_i, anchor, 0, None, settings, 0.3, 0.01)
        outcomes[kind] = (len(searches), step.fixed_point)
        if kind == "band" or step.fixed_point.startswith("not found"):
            np.testing.assert_array_equal(step.positions, lowest)
    assert outcomes["single"][0] == 1 and outcomes["single"][1].endswith("evaluations")
    assert outcomes["band"] == (0, "not searched (band stalled)")


def test_hard_rows_come_from_the_descriptor_cache(start, milady, tmp_path):
    """A relaxation stores its hard rows in the descriptor cache; the next one (or the
    pipeline's retraining, same frames and space) reads them, and gets the same path."""
    hard = default_hard_set(milady)[::3]
    runs = []
    for _ in range(2):
        cache = DescriptorCache(tmp_path / "descriptors")
        messages = []
        stats = relax_accelerated(start.copy(), cached(tmp_path / "qm"), milady, BUFFER,
                                  fmax=0.05, hard=hard, descriptor_cache=cache,
                                  log=messages.append)
        runs.append((cache, stats, messages))
    (first, s1, m1), (second, s2, m2) = runs
    assert first.computed == ["hard set"] and first.read == []
    assert second.read == ["hard set"] and second.computed == []
    assert any("hard rows computed into the descriptor cache" in m for m in m1)
    assert any("hard rows read from the descriptor cache" in m for m in m2)
    assert s2.n_qm_real_calls == 0 and s1.converged and s2.converged
    for a, b in zip(s1.surrogate_thetas, s2.surrogate_thetas, strict=True):
        np.testing.assert_array_equal(a, b)
    # the stored rows are the rows of those frames in the surrogate (quadratic) space
    stored = energy_rows(hard, milady.to_quadratic(), cache=DescriptorCache(tmp_path /
                                                                            "descriptors"))
    np.testing.assert_array_equal(stored, energy_rows(hard, milady.to_quadratic()))


def test_resume_from_checkpoint_repeats_no_qm_call(start, milady, accelerated_run):
    done, stats, work = accelerated_run
    atoms = start.copy()
    qm = cached(work / "cache")
    again = relax_accelerated(atoms, qm, milady, BUFFER, fmax=FMAX,
                              checkpoint=work / "run.ckpt", log=None)
    assert again.n_qm_real_calls_process == 0 and qm.n_real_calls == 0
    assert again.n_qm_real_calls == stats.n_qm_real_calls  # the whole run's, from the checkpoint
    assert again.converged and again.resumed_from_step == stats.outer_steps
    np.testing.assert_array_equal(atoms.positions, done.positions)
    # a checkpoint of a different run (here: another fmax) is never resumed: fresh start
    messages = []
    fresh = relax_accelerated(start.copy(), cached(work / "cache"), milady, BUFFER, fmax=0.02,
                              checkpoint=work / "run.ckpt", log=messages.append)
    assert fresh.resumed_from_step is None and fresh.converged
    assert any("checkpoint of a different run, starting afresh" in m for m in messages)


def test_every_qm_called_geometry_is_kept_with_its_true_forces(start, milady,
                                                               accelerated_run):
    """The QM data the surrogates were trained on (rejected probes included) come out as
    QM/ML frames, each with the true mixed forces at its geometry; the last is the end."""
    done, stats, work = accelerated_run
    frames = qm_point_frames([start], [0], stats, {"optimizer": "accelerated"})
    assert len(frames) == stats.n_qm_real_calls == len(stats.qm_points) >= 2
    finals = [f for f in frames if f.info["qm_point_final"]]
    assert len(finals) == 1 and finals[0] is frames[stats.accepted_point]
    np.testing.assert_array_equal(finals[0].positions, done.positions)
    qm = cached(work / "cache")  # recompute every frame's forces: all cache hits
    free = ~start.arrays["fix_mask"]
    for g, frame in enumerate(frames):
        assert frame.info["qm_point"] == g and frame.info["qm_point_image"] == 0
        np.testing.assert_array_equal(frame.arrays["region"], start.arrays["region"])
        atoms = start.copy()
        atoms.positions = frame.positions
        atoms.calc = make_force_qmmm(atoms, qm, milady.calculator(), BUFFER)
        truth = atoms.get_forces(apply_constraint=False)
        np.testing.assert_allclose(frame.get_forces(), truth, atol=1e-9)
        assert frame.info["qm_point_fmax"] == pytest.approx(
            np.linalg.norm(truth[free], axis=1).max(), abs=1e-9)
    assert qm.n_real_calls == 0
    assert max(f.info["qm_point_fmax"] for f in frames) > 10 * FMAX  # not just the end


def test_seeded_rerun_reuses_cached_qm_points(start, milady, accelerated_run, tmp_path):
    """A rerun seeded with an earlier run's QM points (here: a tighter fmax) replays them
    from the cache without a QM call, starts from the best, and a seed missing from the
    cache is skipped, not computed."""
    import shutil

    done, stats, work = accelerated_run
    frames = qm_point_frames([start], [0], stats, {})
    seeds = seed_points(frames, [start], [0], "qm_frames.xyz")
    assert len(seeds) == len(stats.qm_points)
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)
    first = QMCache(cache, engine_settings_hash(REFERENCE))
    missing = start.copy()  # drop the first QM point's cluster from the copied cache
    missing.positions = seeds[0][0]
    fq = make_force_qmmm(missing, cached(tmp_path / "scratch"), milady.calculator(), BUFFER)
    first.path(fq.get_qm_cluster(missing)).unlink()
    messages = []
    qm = cached(cache)
    atoms = start.copy()
    tight = relax_accelerated(atoms, qm, milady, BUFFER, fmax=FMAX / 5, seeds=seeds,
                              checkpoint=tmp_path / "seeded.ckpt", log=messages.append)
    assert tight.converged and tight.fmax <= FMAX / 5
    assert tight.n_seeds == len(seeds) - 1
    assert any(f"{len(seeds) - 1} of {len(seeds)} seed QM points replayed from the cache "
               "(1 not cached, skipped)" in m
               for m in messages)
    # the seeds cost nothing; the run started from the best of them (the earlier end point)
    assert tight.fmax_history[0] == pytest.approx(stats.fmax, abs=1e-12)
    new_calls = len(tight.qm_points) - tight.n_seeds
    print(f"seeded rerun: {tight.n_seeds} seeds, {new_calls} new QM calls, start fmax "
          f"{tight.fmax_history[0]:.4f}, end {tight.fmax:.4f}")
    assert tight.n_qm_real_calls == new_calls
    # measured: one new call takes the earlier end point (fmax 0.0091) to 0.0007 eV/Å
    assert 1 <= new_calls <= 2
    out = qm_point_frames([start], [0], tight, {})
    assert [f.info["qm_point_seed"] for f in out] == \
        [True] * tight.n_seeds + [False] * new_calls
    np.testing.assert_array_equal(out[-1].positions, atoms.positions)
    # run again (as a killed job would be): resumed, seeds still known as seeds, no QM call
    qm = cached(cache)
    again = relax_accelerated(start.copy(), qm, milady, BUFFER, fmax=FMAX / 5, seeds=seeds,
                              checkpoint=tmp_path / "seeded.ckpt", log=None)
    assert again.resumed_from_step == tight.outer_steps and qm.n_real_calls == 0
    assert again.n_seeds == tight.n_seeds and len(again.qm_points) == len(tight.qm_points)
    # with none of them cached (another cache) the run starts as if unseeded: ML minimum,
    # one QM call there (steps=0: no outer step)
    messages, qm = [], cached(tmp_path / "other_cache")
    cold = relax_accelerated(start.copy(), qm, milady, BUFFER, fmax=FMAX, seeds=seeds,
                             steps=0, log=messages.append)
    assert cold.n_seeds == 0 and qm.n_real_calls == 1 and qm.n_cache_hits == 0
    assert f"accelerated: none of the {len(seeds)} seed QM points is cached" in messages
    # frames of another structure are refused with a one-line error naming the file
    from qmml import QmmlError

    with pytest.raises(QmmlError, match=f"other.xyz: frame 0 has {len(start) - 1} atoms"):
        seed_points([f[:-1] for f in frames], [start], [0], "other.xyz")


def test_a_seed_of_another_atom_order_is_skipped(start, milady, accelerated_run, tmp_path):
    """A seed whose atoms are those of another atom order (two far-apart ML atoms swapped:
    its QM cluster, and so its QM call, are the same and cached) is not a QM point of this
    structure: skipped, never replayed with this structure's fixed atoms and regions."""
    done, stats, work = accelerated_run
    seeds = seed_points(qm_point_frames([start], [0], stats, {}), [start], [0], "seeds.xyz")
    free_ml = np.flatnonzero(~start.arrays["fix_mask"] & (start.arrays["region"] == "MM"))
    i = free_ml[0]
    j = free_ml[np.argmax(np.linalg.norm(start.positions[free_ml] - start.positions[i],
                                         axis=1))]
    swapped = seeds[-1].copy()
    swapped[0][[i, j]] = swapped[0][[j, i]]
    messages = []
    run = relax_accelerated(start.copy(), cached(work / "cache"), milady, BUFFER, fmax=FMAX,
                            seeds=[seeds[-1], swapped], steps=0, log=messages.append)
    assert run.n_seeds == 1
    assert "accelerated: 1 of 2 seed QM points have atoms more than 2.0 A from this " \
        "structure's (another atom order): skipped" in messages
    assert run.fmax_history[0] == pytest.approx(stats.fmax, abs=1e-12)  # the true seed


@pytest.mark.slow
def test_cli_killed_run_resumes_without_repeating_qm_calls(start, milady, tmp_path):
    """``qmml relax --optimizer accelerated`` SIGKILLed after 2 QM calls, then rerun."""
    structure = tmp_path / "screw.xyz"
    write(structure, start, format="extxyz")
    out = tmp_path / "relaxed.xyz"
    cmd = [sys.executable, "-m", "qmml.cli", "relax", "--input", str(structure),
           "--potential", str(milady_prefix()), "--engine", "reference",
           "--optimizer", "accelerated", "--buffer", str(BUFFER), "--fmax", str(FMAX),
           "--cache", str(tmp_path / "cache"), "--output", str(out), "--quiet",
           "--qm-frames", str(tmp_path / "qm_frames.xyz")]
    killed = subprocess.run(cmd, env=dict(os.environ, **{KILL_ENV: "2"}),
                            capture_output=True, text=True)
    assert killed.returncode == -9 and not out.exists()
    assert len(QMCache(tmp_path / "cache", engine_settings_hash(REFERENCE))) == 2
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    frame = read(out, format="extxyz")
    n_total = len(QMCache(tmp_path / "cache", engine_settings_hash(REFERENCE)))
    # the rerun made only the calls the killed run had not made
    assert frame.info["n_qm_real_calls_process"] == n_total - 2
    assert frame.info["optimizer"] == "accelerated" and frame.info["converged"]
    assert frame.info["surrogate_hard_residual_max"] <= 1e-9
    assert frame.info["qm_engine"].startswith("reference (classical stand-in")
    free = ~frame.arrays["fix_mask"]
    assert np.linalg.norm(frame.get_forces()[free], axis=1).max() <= FMAX
    # every QM-called geometry, the killed run's two (replayed from the cache) included
    qm_frames = read(tmp_path / "qm_frames.xyz", index=":", format="extxyz")
    assert len(qm_frames) == n_total
    np.testing.assert_array_equal(qm_frames[-1].positions, frame.positions)
    assert qm_frames[-1].info["qm_point_final"] is True
    # a third run (checkpoint says converged) makes no QM call at all
    third = subprocess.run(cmd, capture_output=True, text=True)
    assert third.returncode == 0
    assert read(out, format="extxyz").info["n_qm_real_calls_process"] == 0


@pytest.mark.slow
def test_accelerated_neb_converges_on_true_forces(milady, tmp_path):
    from ase.mep import NEB

    from qmml.qmmm import neb
    from qmml.structures import glide_endpoints

    ini, fin = glide_endpoints("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                               MILADY["C44"], radius=16.0, fixed_width=6.0)
    path = ini.info["glide_path"]
    for state in (ini, fin):
        cylinder_region(state, None, 4.0, milady.cutoff, milady.cutoff,
                        path=[path[:2], path[2:]])
    fin.arrays["region"] = ini.arrays["region"].copy()
    qm = cached(tmp_path / "cache")
    for state in (ini, fin):  # end points: accelerated relaxations too
        assert relax(state, qm, milady.calculator(), milady.cutoff,
                     optimizer="accelerated", fmax=0.01, log=None).converged
    calls_before = qm.n_real_calls
    images, stats, profile = neb(ini, fin, 4, qm, milady.calculator, milady.cutoff,
                                 optimizer="accelerated", fmax=0.05, steps=50, log=None)
    neb_calls = qm.n_real_calls - calls_before
    assert stats.converged and stats.fmax <= 0.05
    assert stats.surrogate_hard_residual_max <= 1e-9
    # measured with 5 images: 11 QM calls (2 end points + 3 rounds of 3 images), where
    # FIRE took 50; here 2 interior images: end points + at most 4 rounds
    assert neb_calls <= 2 + 4 * 2
    # true NEB forces of the accelerated path, recomputed from scratch (fresh cache)
    fresh = cached(tmp_path / "check")
    check = [im.copy() for im in images]
    for im in check:
        im.calc = make_force_qmmm(im, fresh, milady.calculator(), milady.cutoff)
    f = NEB(check, k=0.1, method="spline").get_forces()
    assert np.linalg.norm(f, axis=1).max() <= 0.05
    # equivalent end states: ~zero virtual work end to end; a Peierls barrier of tens of meV
    assert abs(profile["energy"][-1] - profile["energy"][0]) < 0.02
    assert 0.005 < profile["barrier"] < 0.2
    # kept QM data: both interior images at every QM-called path, the last one the result
    # and the start check's image, QM-called alone on the interpolated band (not
    # converged there): every QM call of the NEB is a frame
    frames = qm_point_frames(images, [1, 2], stats, {})
    single = [f for f in frames if "qm_single_image" in f.info]
    assert len(single) == len(stats.single_images) == 1
    assert single[0].info["qm_point_image"] == 2 and "qm_point" not in single[0].info
    assert len(frames) == 2 * len(stats.qm_points) + 1 == neb_calls
    probe = single[0].copy()  # its forces: the true mixed forces there (fresh cache)
    probe.calc = make_force_qmmm(probe, cached(tmp_path / "probe"), milady.calculator(),
                                 milady.cutoff)
    np.testing.assert_allclose(single[0].get_forces(), probe.get_forces(apply_constraint=False),
                               atol=1e-9)
    points = [f for f in frames if "qm_point" in f.info]
    assert [f.info["qm_point_image"] for f in points[-2:]] == [1, 2]
    for frame, im in zip(points[-2:], images[1:3]):
        assert frame.info["qm_point_final"] is True
        np.testing.assert_array_equal(frame.positions, im.positions)
        np.testing.assert_allclose(frame.get_forces(), im.get_forces(apply_constraint=False),
                                   atol=1e-9)
    # the same NEB seeded with those frames (as the next iteration's is): every QM point
    # replayed from the cache (the single image is no band point), no new QM call, the
    # path is the converged one
    seeds = seed_points(frames, images, [1, 2], "neb.qm_frames.xyz")
    assert len(seeds) == len(stats.qm_points) and seeds[0].shape == (2, len(ini), 3)
    calls_before = qm.n_real_calls
    again, seeded, _ = neb(ini, fin, 4, qm, milady.calculator, milady.cutoff,
                           optimizer="accelerated", fmax=0.05, steps=50, log=None,
                           seeds=seeds)
    assert qm.n_real_calls == calls_before
    assert seeded.converged and seeded.n_seeds == len(seeds) and seeded.outer_steps == 0
    for im, done in zip(again[1:3], images[1:3]):
        np.testing.assert_array_equal(im.positions, done.positions)
    # a band given converged (fresh cache): its middle image's NEB force is below fmax, so
    # the band starts where it is: one QM call per moving image (and the end points, whose
    # energies ASE's NEB reads), no ML-only band, no step
    given = [im.copy() for im in images]
    log = []
    stats = neb_accelerated(given, cached(tmp_path / "given"), milady, milady.cutoff,
                            fmax=0.05, log=log.append)[0]
    assert stats.converged and stats.outer_steps == 0 and stats.surrogate_steps == 0
    assert stats.n_qm_real_calls == 2 + 2 and not stats.single_images
    assert any("starting from the given band" in line for line in log)
    for im, done in zip(given, images):
        np.testing.assert_array_equal(im.positions, done.positions)


def test_bad_settings_are_one_line_errors(start, milady, tmp_path):
    from qmml import QmmlError

    with pytest.raises(QmmlError, match="space must be"):
        relax_accelerated(start.copy(), cached(tmp_path), milady, BUFFER,
                          settings=AcceleratedSettings(space="cubic"), log=None)
    # ODE12r cannot be stepped inside the trust radius: refused before any QM call
    qm = cached(tmp_path)
    with pytest.raises(QmmlError, match="inner_optimizer must be one of FIRE, LBFGS, "
                       "got 'ODE12r'"):
        relax_accelerated(start.copy(), qm, milady, BUFFER,
                          settings=AcceleratedSettings(inner_optimizer="ODE12r"), log=None)
    assert qm.n_real_calls == 0


def test_failed_surrogate_step_is_a_rejected_step_not_a_crash(start, milady, tmp_path,
                                                               monkeypatch):
    """A wrong surrogate is a rejected step, never a crash.  After the first QM call, one
    surrogate evaluation throws a QM atom 10 Å along the periodic dislocation line (a real
    LAMMPS error: lost atoms, which leaves that LAMMPS instance unusable), the next
    surrogate step returns NaN forces: each is one rejected step without a QM call, logged
    in one line; the run falls back to plain steps, goes on and converges on the true
    forces."""
    qm = cached(tmp_path / "cache")
    real = SurrogateMixing.raw_surrogate_qm_forces
    evaluations = []

    def faulty(self, atoms):
        if qm.n_calls != 1:  # the ML pre-relaxation, and every step after the injections
            return real(self, atoms)
        evaluations.append(1)
        if len(evaluations) == 3:  # inside the first surrogate relaxation
            thrown = atoms.copy()
            thrown.positions[np.flatnonzero(self.qm_mask)[0], 2] += 10.0
            return real(self, thrown)
        if len(evaluations) == 6:  # inside the second one (anchor offset = evaluation 4)
            return np.full_like(real(self, atoms), np.nan)
        return real(self, atoms)

    monkeypatch.setattr(SurrogateMixing, "raw_surrogate_qm_forces", faulty)
    messages = []
    atoms = start.copy()
    stats = relax_accelerated(atoms, qm, milady, BUFFER, fmax=FMAX,
                              checkpoint=tmp_path / "run.ckpt", log=messages.append)
    failed = [m for m in messages if "surrogate step failed" in m]
    assert len(failed) == 2 and stats.surrogate_failures == 2
    assert "(ERROR: Lost atoms: original" in failed[0]
    assert "(non-finite surrogate forces)" in failed[1]
    assert all("rejected without a QM call" in m for m in failed)
    assert stats.rejected_steps >= 2 and stats.fallback_steps >= 1
    # the two failed steps made no QM call: every QM call is a stored QM point, none twice
    assert stats.n_qm_real_calls == stats.n_qm_calls == len(stats.qm_points)
    assert stats.trust_history[:2] == pytest.approx([0.075, 0.01875])
    assert stats.converged and stats.fmax <= FMAX
    check = atoms.copy()  # the true QM/ML forces, fresh calculator and empty cache
    check.calc = make_force_qmmm(check, cached(tmp_path / "fresh"), milady.calculator(),
                                 BUFFER)
    free = ~check.arrays["fix_mask"]
    assert np.linalg.norm(check.get_forces()[free], axis=1).max() <= FMAX
    print(f"failed surrogate steps: {stats.surrogate_failures}, rejected "
          f"{stats.rejected_steps}, fallback steps {stats.fallback_steps}, QM calls "
          f"{stats.n_qm_real_calls}, outer steps {stats.outer_steps}")


def test_fixed_point_search_losing_atoms_ends_without_a_step(start, milady, tmp_path,
                                                            monkeypatch):
    """Newton's trial points can lie far from the anchor (measured on a 7-image glide NEB:
    0.52 Å at a trust radius of 0.075 Å).  One that throws an atom 10 Å along the line
    makes LAMMPS lose it: the search ends with no fixed point (no crash), and the
    surrogate, on fresh LAMMPS instances, is again exact at the anchor."""
    system = MixedSystem([start.copy()], [0], cached(tmp_path), milady.calculator, milady,
                         AcceleratedSettings(), BUFFER, 5.0, None)
    ev = system.evaluate_true()
    system.set_surrogate(system.theta_i, ev.positions, ev.qm_forces)
    thrown = int(np.flatnonzero(system.qm_mask)[0])
    real = MixedSystem.set_positions

    def far(self, x, which="true"):
        if which == "sur" and not np.array_equal(x, ev.positions):
            x = x.copy()
            x[0, thrown, 2] += 10.0
        return real(self, x, which)

    monkeypatch.setattr(MixedSystem, "set_positions", far)
    assert system.nearest_fixed_point(ev.positions, 0.3, 0.001).positions is None
    monkeypatch.undo()
    system.set_positions(ev.positions, "sur")
    np.testing.assert_allclose(system.surrogate_forces(), ev.forces, rtol=0, atol=1e-9)


def test_fixed_point_search_stops_at_an_iteration_that_does_not_halve_the_force(
        start, milady, tmp_path):
    """A Newton iteration that leaves the largest surrogate force above half of what it
    started from ends the search (failing searches barely cut it, converging ones 10-230
    times).  Seen through f -> sign(f)|f|^0.7 the surrogate keeps its fixed point, but
    Newton converges only linearly there: its second iteration cuts the force by about
    a third, and the search ends, not found, well inside its evaluation budget."""
    system = MixedSystem([start.copy()], [0], cached(tmp_path), milady.calculator, milady,
                         AcceleratedSettings(), BUFFER, 5.0, None)
    ev = system.evaluate_true()
    system.set_surrogate(system.theta_i, ev.positions, ev.qm_forces)
    target = system.sur_target
    forces = type(target).get_forces
    target.get_forces = lambda *args, **kwargs: (
        lambda f: np.sign(f) * np.abs(f) ** 0.7)(forces(target, *args, **kwargs))
    search = system.nearest_fixed_point(ev.positions, 0.3, 0.001)
    del target.get_forces
    assert search.positions is None and search.outcome.startswith("not found")
    at_start, first, second = search.residuals
    # the start's force is the true one (transformed): Θ_i + Δ is exact at the anchor
    assert at_start == pytest.approx(np.abs(ev.forces[:, system.free]).max() ** 0.7,
                                     rel=1e-8)
    assert first < 0.5 * at_start and second > 0.5 * first
    assert search.evaluations < 65  # the budget a search may use


def test_old_and_foreign_checkpoints_resume_or_restart_from_the_cache(start, milady,
                                                                     accelerated_run,
                                                                     tmp_path):
    """A checkpoint in the layout that kept the counters under "stats" still resumes; one
    whose content is not a loop state (same run fingerprint) is foreign: the run starts
    afresh, and every QM call it makes is a cache hit.  Neither crashes."""
    import shutil

    done, stats, work = accelerated_run
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)
    qm = cached(cache)  # the same run again: every QM call a cache hit, a new checkpoint
    again = relax_accelerated(start.copy(), qm, milady, BUFFER, fmax=FMAX,
                              checkpoint=tmp_path / "new.ckpt", log=None)
    assert qm.n_real_calls == 0 and again.outer_steps == stats.outer_steps
    with open(tmp_path / "new.ckpt", "rb") as fh:
        new = pickle.load(fh)
    counters = ("rejected_steps", "fallback_steps", "surrogate_hard_residuals",
                "surrogate_thetas", "prediction_errors", "trust_history", "fmax_history",
                "outer_steps", "surrogate_steps", "n_seeds")
    old = {key: new[key] for key in ("fingerprint", "points", "current", "trust", "rejects",
                                     "pending")}
    old.update(last_error=0.0, stats={key: new[key] for key in counters})
    with open(tmp_path / "old.ckpt", "wb") as fh:
        pickle.dump(old, fh)
    qm = cached(cache)
    resumed = relax_accelerated(start.copy(), qm, milady, BUFFER, fmax=FMAX,
                                checkpoint=tmp_path / "old.ckpt", log=None)
    assert resumed.resumed_from_step == stats.outer_steps and qm.n_real_calls == 0
    assert resumed.converged and len(resumed.qm_points) == len(stats.qm_points)
    foreign = {"fingerprint": new["fingerprint"], "positions": new["points"][-1],
               "state": {"nsteps": 3}}
    with open(tmp_path / "foreign.ckpt", "wb") as fh:
        pickle.dump(foreign, fh)
    messages, qm = [], cached(cache)
    fresh = relax_accelerated(start.copy(), qm, milady, BUFFER, fmax=FMAX,
                              checkpoint=tmp_path / "foreign.ckpt", log=messages.append)
    assert any("not a checkpoint of the accelerated optimiser, starting afresh" in m
               for m in messages)
    assert fresh.resumed_from_step is None and fresh.converged
    assert qm.n_real_calls == 0 and qm.n_cache_hits >= len(stats.qm_points)


def milady_prefix() -> Path:
    from qmml import potential_path

    return Path(potential_path("W_milady_lml"))
