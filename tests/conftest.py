"""Shared fixtures: shipped potentials and small W structures (real LAMMPS, no mocks)."""
from __future__ import annotations

import numpy as np
import pytest

from qmml import potential_path
from qmml.potential import SNAPPotential, reference_potential

# W_milady_lml (Goryaeva et al. 2021), method.md: the paper's Θ0
MILADY = {"a0": 3.18551, "C11": 513.1, "C12": 201.0, "C44": 144.9}


@pytest.fixture(scope="session")
def milady() -> SNAPPotential:
    return SNAPPotential.read(potential_path("W_milady_lml"))


@pytest.fixture(scope="session")
def reference():
    """(potential, zbl) of the classical stand-in for QM (W_2940_2017_2 + ZBL)."""
    return reference_potential()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
