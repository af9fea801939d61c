"""Shared fixtures and the suite's schedule (real LAMMPS and engines, no mocks).

Fixtures for any test file (session-scoped ones are built once per test process):

- ``milady``: Θ0, the paper's W_milady_lml SNAPPotential (``MILADY``: its a0 and C_ij).
- ``reference``: (potential, zbl) of the classical stand-in for QM, W_2940_2017_2 + ZBL
  (``engine: reference`` in an engine config; tests only, labelled as not QM).
- ``small_screw``: a fresh copy of a small ½<111> screw cylinder (R = 14 Å, fixed shell
  4 Å, one b thick, 102 atoms) with QM/buffer/MM regions (6 QM atoms within 3 Å, buffer
  5 Å), as ``qmml build`` makes it: cheap QM clusters for engine and error-path tests.
- ``small_screw_file``: the same structure written once as extxyz (read-only: copy it
  before editing), for CLI tests.
- ``shared_reference_cache``: one QM cache directory of the stand-in engine for the whole
  run (shared by xdist workers too).  For tests that only need QM/ML forces; never for a
  test that counts real QM calls from an empty cache (use ``tmp_path`` for that).
- ``rng``: a seeded numpy Generator.

Schedule: ``make test`` runs the suite on one process more than the cores (pytest-xdist),
so that a test waiting on a subprocess or the SLURM queue leaves no core idle.  The work
units are :func:`work_unit`'s: a file's tests stay on one worker, so that its
module-scoped fixtures (relaxations, QM/ML runs) are built once; files in ``SPREAD`` hand
out single tests, except those sharing a module fixture (``SHARED``).  The files with the
longest runs go first, so that the workers finish together.  A new file is scheduled
after the listed ones; list it in ``LONGEST_FIRST`` when its tests take more than ~30 s
together.
"""
from __future__ import annotations

import os
from pathlib import Path

# one thread per test process (before numpy loads its BLAS): the suite runs as many
# processes as there are cores, and threaded BLAS, tblite, GPAW or CP2K then spin-wait on
# busy cores (docs/performance.md, "Test suite")
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from qmml import potential_path  # noqa: E402
from qmml.potential import SNAPPotential, reference_potential  # noqa: E402

# first on PATH for Snakemake runs that do not use SLURM (see tests/no_slurm/scontrol)
NO_SLURM = Path(__file__).parent / "no_slurm"

# W_milady_lml (Goryaeva et al. 2021), method.md: the paper's Θ0
MILADY = {"a0": 3.18551, "C11": 513.1, "C12": 201.0, "C44": 144.9}
SMALL_SCREW = {"kind": "screw111", "radius": 14.0, "fixed_width": 4.0, "qm_radius": 3.0,
               "buffer": 5.0}

# files by the CPU time of their tests (process + child processes), longest first, so that
# the longest work units start first: the tiny pipeline run of test_workflow and its rerun
# take about 3.5 CPU minutes, real CP2K (one thread) about 3, test_accelerated and
# test_engine_doubles about 2 each
LONGEST_FIRST = ("test_workflow.py", "test_engine_cp2k.py", "test_accelerated.py",
                 "test_engine_doubles.py", "test_slurm.py", "test_accelerated_neb.py",
                 "test_docs.py", "test_gpaw.py", "test_qmmm.py", "test_binding.py",
                 "test_config.py", "test_resume.py", "test_figures.py", "test_constraints.py",
                 "test_accelerated_active.py", "test_retrain.py", "test_descriptors_fast.py")
# files whose tests share no expensive module fixture and no working directory: each test
# is its own work unit (test_config stays whole: its runs share the repository's
# .snakemake lock)
SPREAD = ("test_workflow.py", "test_resume.py", "test_docs.py", "test_structures.py",
          "test_layers.py")


# tests of a SPREAD file that share its module fixture: one work unit (name prefix: unit)
SHARED = {"test_workflow.py::test_end_to_end": "test_workflow.py: the tiny pipeline run"}


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its file, or the test itself in a SPREAD file."""
    path, _, name = nodeid.partition("::")
    test = f"{Path(path).name}::{name}"
    for prefix, unit in SHARED.items():
        if test.startswith(prefix):
            return unit
    return nodeid if Path(path).name in SPREAD else path


def pytest_xdist_make_scheduler(config, log):
    """Work units by :func:`work_unit` (``--dist loadscope`` groups by module; the
    ``xdist_group`` marks of ``--dist loadgroup`` are lost where pytest ignores the node
    id they rename)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Longest files first (a file's tests stay together, so module fixtures are built
    once)."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    order = {id(item): k for k, item in enumerate(items)}

    def key(item):
        name = Path(str(item.path)).name
        # test_workflow: its end-to-end runs (marked slow) before its dry runs
        late = name == "test_workflow.py" and item.get_closest_marker("slow") is None
        return rank.get(name, len(rank)), name, late, order[id(item)]

    items.sort(key=key)


@pytest.fixture(scope="session")
def milady() -> SNAPPotential:
    return SNAPPotential.read(potential_path("W_milady_lml"))


@pytest.fixture(scope="session")
def reference():
    """(potential, zbl) of the classical stand-in for QM (W_2940_2017_2 + ZBL)."""
    return reference_potential()


@pytest.fixture(scope="session")
def _small_screw_built(tmp_path_factory):
    from qmml import steps
    from qmml.build import default_settings
    from qmml.io import read_frame

    path = tmp_path_factory.mktemp("small_screw") / "screw.xyz"
    steps.build_file(default_settings(**SMALL_SCREW, **MILADY), path)
    path.chmod(0o444)
    return path, read_frame(path)


@pytest.fixture
def small_screw(_small_screw_built):
    """A ½<111> screw (R = 14 Å) with regions: a fresh copy per test."""
    return _small_screw_built[1].copy()


@pytest.fixture
def small_screw_file(_small_screw_built) -> Path:
    """extxyz of ``small_screw`` as ``qmml build`` writes it (read-only)."""
    return _small_screw_built[0]


@pytest.fixture(scope="session")
def shared_reference_cache(tmp_path_factory) -> Path:
    """QM cache directory of the stand-in engine, one for the run (all xdist workers:
    qmml.qmcache locks each entry, so concurrent writers compute a cluster once)."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):
        root = root.parent  # the run's directory, above the workers' own
    path = root / "shared_reference_qm_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
