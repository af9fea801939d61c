"""ML-only relaxations (qmml.ml_relax): the fixed shell stays, the free atoms reach fmax,
and the minimum is FIRE's."""
from __future__ import annotations

import numpy as np
import pytest
from ase.optimize import FIRE

from qmml.ml_relax import ml_image, relax_ml


def test_relax_ml_holds_the_shell_and_reaches_fires_minimum(small_screw, milady, rng):
    small_screw.positions[~small_screw.arrays["fix_mask"]] += rng.normal(
        0.0, 0.05, (int((~small_screw.arrays["fix_mask"]).sum()), 3))
    image = ml_image(small_screw)
    assert image.calc is None and set(image.arrays) == {"numbers", "positions", "fix_mask"}
    fixed = image.arrays["fix_mask"]
    assert fixed.any() and not fixed.all()

    assert relax_ml(image, milady.calculator(), fmax=1e-3, steps=500)
    np.testing.assert_array_equal(image.positions[fixed], small_screw.positions[fixed])
    forces = image.get_forces(apply_constraint=False)
    assert np.linalg.norm(forces[~fixed], axis=1).max() <= 1e-3
    assert np.linalg.norm(forces[fixed], axis=1).max() > 1e-3  # the shell was held

    fire = ml_image(small_screw)
    fire.calc = milady.calculator()
    assert FIRE(fire, logfile=None).run(fmax=1e-3, steps=5000)
    assert image.get_potential_energy() == pytest.approx(fire.get_potential_energy(),
                                                         abs=1e-3)
