"""The accelerated optimiser's active region: surrogate relaxations move only the atoms
near the QM region, the far field follows in ML-only relaxations.

Stand-in QM = W_2940_2017_2 + ZBL ("reference", classical, not QM); Θ_i = W_milady_lml.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import MILADY
from qmml.accelerated import AcceleratedSettings, MixedSystem, relax_accelerated
from qmml.accelerated.system import active_region
from qmml.forcemixing import qm_mask_from_region
from qmml.qmcache import CachedQMCalculator
from qmml.qmmm import make_force_qmmm, relax
from qmml.regions import cylinder_region
from qmml.structures import dislocation_cylinder

FMAX = 0.01
BUFFER = 5.0
ACTIVE = 6.0  # Å: just beyond the buffer, so half the free atoms are far field


def cached(directory) -> CachedQMCalculator:
    return CachedQMCalculator.from_config({"engine": "reference"}, directory)


@pytest.fixture(scope="module")
def start(milady):
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=20.0, fixed_width=6.0)
    cylinder_region(atoms, None, qm_radius=4.5, buffer_width=BUFFER, ml_cutoff=milady.cutoff)
    return atoms


def test_active_region_holds_the_qm_cluster_and_no_more(start, milady):
    qm = qm_mask_from_region(start)
    free = ~start.arrays["fix_mask"]
    active = active_region(start, qm, free, ACTIVE)
    region = start.arrays["region"]
    # the QM atoms and their buffer move in the surrogate relaxation ...
    assert active[qm].all() and active[free & (region == "buffer")].all()
    # ... the far field holds the other half of the free atoms; no fixed atom is active
    assert not active[~free].any()
    assert (free & ~active).sum() > active.sum() > qm.sum()
    # a width covering every free atom means no active region at all
    assert active_region(start, qm, free, 1e9) is None


def test_active_phase_forces_are_the_whole_system_forces(start, milady, tmp_path):
    """The active atoms' ML forces come from a cluster around them: equal to the whole
    system's, also after the atoms moved (inside the cluster's reach)."""
    atoms = start.copy()
    settings = AcceleratedSettings(active_width=ACTIVE)
    system = MixedSystem([atoms], [0], cached(tmp_path), milady.calculator, milady,
                         settings, BUFFER, 5.0, None)
    system.set_surrogate(system.theta_i, system.positions())  # plain Θ_i: whole phase
    x = system.positions()
    rng = np.random.default_rng(1)
    x[:, system.free] += rng.normal(scale=0.05, size=x[:, system.free].shape)
    system.set_positions(x, "sur")
    whole = system.surrogate_forces()[0]
    system.set_phase("active")
    image = system.sur_images[0]
    image.calc.plain = True  # the same Θ_i on the QM atoms: only the ML cluster differs
    image.calc.reset()
    active = system.surrogate_forces()[0]
    # zero-mean shifts differ by the far atoms' share; compare before the shift
    shift_whole = whole - whole.mean(axis=0)
    np.testing.assert_allclose(active[system.active] - active[system.active].mean(axis=0),
                               shift_whole[system.active] - shift_whole[system.active]
                               .mean(axis=0), atol=1e-8)
    assert np.abs(active[~system.active]).max() < 1e-2  # only the (tiny) mean shift


def test_relaxation_with_active_region_reaches_the_true_minimum(start, milady, tmp_path):
    """With most free atoms in the far field the run still converges on the TRUE forces
    of every atom, to FIRE's minimum, with no more QM calls than the whole-system
    surrogate."""
    whole = start.copy()
    whole_stats = relax_accelerated(whole, cached(tmp_path / "whole"), milady, BUFFER,
                                    fmax=FMAX, log=None,
                                    settings=AcceleratedSettings(active_width=1e9))
    atoms = start.copy()
    stats = relax_accelerated(atoms, cached(tmp_path / "active"), milady, BUFFER, fmax=FMAX,
                              log=None, settings=AcceleratedSettings(active_width=ACTIVE))
    assert whole_stats.converged and stats.converged
    fire = start.copy()
    assert relax(fire, cached(tmp_path / "fire"), milady.calculator(), BUFFER,
                 optimizer="FIRE", fmax=FMAX, log=None).converged
    check = atoms.copy()
    check.calc = make_force_qmmm(check, cached(tmp_path / "fresh"), milady.calculator(),
                                 BUFFER)
    free = ~check.arrays["fix_mask"]
    assert np.linalg.norm(check.get_forces()[free], axis=1).max() <= FMAX
    assert np.abs(atoms.positions[free] - fire.positions[free]).max() < 0.01
    # the far field did follow the core (ML-only relaxations after the first QM call)
    far = free & ~active_region(start, qm_mask_from_region(start), free, ACTIVE)
    first = stats.qm_points[0].positions[0]
    assert np.abs(atoms.positions[far] - first[far]).max() > 1e-3
    print(f"QM calls: whole-system surrogate {whole_stats.n_qm_real_calls}, active region "
          f"{stats.n_qm_real_calls}")
    assert stats.n_qm_real_calls <= whole_stats.n_qm_real_calls


def test_far_field_rounds_end_after_an_active_relaxation_stalls(start, milady, tmp_path,
                                                                 monkeypatch):
    """The far field and the active region take turns until both are below fmax, but an
    active relaxation that stalled is the last: the far field relaxes once more after it,
    and the step ends there (each further round would stall again)."""
    system = MixedSystem([start.copy()], [0], cached(tmp_path), milady.calculator, milady,
                         AcceleratedSettings(active_width=ACTIVE), BUFFER, 5.0, None)
    x = system.positions()
    system.set_surrogate(system.theta_i, x, np.zeros((int(system.qm_mask.sum()), 3)))
    turns = []

    def relax_far(y, fmax, optimizer, steps):
        turns.append("far")
        return y, 1

    def relax_surrogate(y, trust, fmax, optimizer, steps, centre=None, stall_steps=0):
        turns.append("active")
        return y, 31, False, stall_steps > 0 and len(turns) >= 4  # stalls on its 2nd turn

    monkeypatch.setattr(system, "relax_far", relax_far)
    monkeypatch.setattr(system, "relax_surrogate", relax_surrogate)
    # fmax 0: never reached, so only the stall ends the rounds
    _, steps, hit, _ = system.relax_with_far_field(x, False, x, 0.3, 0.0,
                                                   AcceleratedSettings(active_width=ACTIVE))
    assert turns == ["far", "active", "far", "active", "far"] and not hit
    assert steps == 3 * 1 + 2 * 31
    turns.clear()  # without the stall stop the rounds run out
    system.relax_with_far_field(x, False, x, 0.3, 0.0,
                                AcceleratedSettings(active_width=ACTIVE, inner_stall_steps=0))
    assert turns.count("active") == turns.count("far") == 10
