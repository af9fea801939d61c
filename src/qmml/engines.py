"""QM engines for the QM region of force-mixed QM/ML: one registry, one config format.

An engine config is a plain dict (usually read from YAML)::

    engine: tblite | gpaw | vasp | espresso | castep | reference   # required
    kpts_line: 4        # k-points along the periodic dislocation line (default 1)
    retries: 1          # extra attempts after an SCF failure (default 1)
    ...                 # engine keys, see the defaults below

k-points follow the QM cluster that ``ForceQMMM`` cuts out: a slab cluster (periodic
along the line only) gets ``(1, 1, kpts_line)``, a 3D sphere (no periodic direction) gets Γ.
tblite has no k-points: the cluster is instead *replicated* ``kpts_line`` times along its
periodic direction, tblite runs at Γ of the supercell (equivalent to ``kpts_line`` k-points
along the line), and the forces of the copies of each atom are averaged back onto it
(the copies are equivalent by translation symmetry; averaging removes round-off asymmetry).
The energy returned is per original cluster (supercell energy / kpts_line).

``reference`` is NOT QM: it is the classical W_2940_2017_2 SNAP + ZBL stand-in used for
tests and demos, and everything that records an engine name labels it as such.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError

REFERENCE_LABEL = "reference (classical stand-in, not QM)"

# Documented defaults per engine.  VASP follows the paper: PBE PAW, 550 eV,
# Methfessel-Paxton (ISMEAR=1) with 0.1 eV smearing.
DEFAULTS: dict[str, dict[str, Any]] = {
    "tblite": {"method": "GFN1-xTB", "electronic_temperature": 1000.0, "accuracy": 1.0,
               "max_iterations": 250},
    "gpaw": {"mode": "lcao", "basis": "dzp", "ecut": 400.0, "xc": "PBE", "setups": {"W": "6"},
             "smearing": 0.1, "h": 0.2, "maxiter": 333, "txt": None},
    "vasp": {"xc": "PBE", "encut": 550.0, "ismear": 1, "sigma": 0.1, "ediff": 1e-6,
             "prec": "Accurate", "lreal": "Auto", "lwave": False, "lcharg": False,
             "directory": "vasp-run"},
    "espresso": {"ecutwfc": 45.0, "occupations": "smearing", "smearing": "mp",
                 "degauss": 0.0073, "directory": "espresso-run"},
    "castep": {"xc_functional": "PBE", "cut_off_energy": 550.0, "smearing_width": 0.1,
               "directory": "castep-run"},
    "reference": {},
}
# keys a config must provide (besides 'engine'); commands may also come from env vars
REQUIRED = {"espresso": ("pseudopotentials",)}
COMMAND_ENV = {"vasp": "ASE_VASP_COMMAND", "espresso": "ASE_ESPRESSO_COMMAND",
               "castep": "CASTEP_COMMAND"}
# qmml's own keys, not engine parameters: never passed to an engine's calculator.
# 'bulk_kpts' sets the k-mesh of the periodic bulk cells only (qmml.bulk), so it is not part
# of the clusters' settings hash either (changing it must not discard cluster results)
COMMON_KEYS = ("engine", "kpts_line", "retries", "command", "bulk_kpts")
# engines that take no k-points (tblite replicates the cell instead; the stand-in is classical)
NO_KPOINTS = ("tblite", "reference")


def engine_label(cfg: dict) -> str:
    """Name to record in outputs; the classical stand-in is never called QM."""
    name = cfg.get("engine", "?")
    return REFERENCE_LABEL if name == "reference" else str(name)


def resolved_settings(cfg: dict) -> dict:
    """Defaults merged with the config; raises QmmlError on unknown engine / missing key."""
    if not isinstance(cfg, dict):
        raise QmmlError("engine config: expected a mapping with key 'engine'")
    if "engine" not in cfg:
        raise QmmlError("engine config: required key 'engine' missing "
                        f"(one of {', '.join(DEFAULTS)})")
    name = cfg["engine"]
    if name not in DEFAULTS:
        raise QmmlError(f"engine config: unknown engine '{name}' (known: {', '.join(DEFAULTS)})")
    for key in REQUIRED.get(name, ()):
        if key not in cfg:
            raise QmmlError(f"engine config: engine '{name}' needs key '{key}'")
    settings = copy.deepcopy(DEFAULTS[name])
    settings.update({k: v for k, v in cfg.items() if k not in COMMON_KEYS})
    settings["engine"] = name
    settings["kpts_line"] = int(cfg.get("kpts_line", 1))
    if settings["kpts_line"] < 1:
        raise QmmlError(f"engine config: 'kpts_line' must be >= 1, got {cfg['kpts_line']}")
    if name in COMMAND_ENV:
        command = cfg.get("command") or os.environ.get(COMMAND_ENV[name])
        if not command:
            raise QmmlError(f"engine config: engine '{name}' needs key 'command' "
                            f"(or environment variable {COMMAND_ENV[name]})")
        settings["command"] = command
    return settings


def read_engine_config(path) -> dict:
    """The engine config in the YAML file ``path``, checked (one-line QmmlError naming the file).

    The one reader of engine-config files: the CLI, the workflow scripts and the bulk
    reference all come through here.
    """
    from qmml.io import read_mapping

    cfg = read_mapping(path, required=["engine"])
    try:
        resolved_settings(cfg)
    except QmmlError as err:
        raise QmmlError(f"{path}: {str(err).removeprefix('engine config: ')}") from None
    return cfg


def engine_settings_hash(cfg: dict) -> str:
    """Hash of everything that changes a QM result (not run directories or commands).

    Part of every cache key: changing a physical setting never reuses old results.
    """
    settings = resolved_settings(cfg)
    for key in ("command", "directory", "txt", "retries"):
        settings.pop(key, None)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_qm_calculator(cfg: dict) -> Calculator:
    """ASE calculator for the engine named in ``cfg['engine']`` (see module docstring).

    The returned calculator adapts to the cluster it is given: k-points (or tblite
    replicas) only along periodic directions.  It has an ``adjust_for_retry(attempt)``
    method that the QM cache calls after an SCF failure.
    """
    settings = resolved_settings(cfg)
    name = settings.pop("engine")
    kpts_line = settings.pop("kpts_line")
    if name == "tblite":
        return _TBLiteEngine(settings, kpts_line)
    if name == "reference":
        return _Adapter(_reference(settings, kpts_line), name, kpts_line)
    build = BUILDERS[name]
    # built now so a missing module or bad setting fails at start-up, not mid-run
    return _Adapter(build(settings, kpts_line), name, kpts_line, build=build,
                    settings=settings)


# ---- engine constructors ----------------------------------------------------------------
def _tblite(s: dict, k=None, damping: float = 0.4) -> Calculator:
    """GFN1-xTB at Γ of the cell it is given (tblite has no k-points: ``k`` is unused).

    0.4 is tblite's own mixer damping; SCF retries pass smaller ones.
    """
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise QmmlError(f"engine 'tblite': cannot import tblite ({err}); "
                        "install with pip install tblite") from None
    return TBLite(method=s["method"], electronic_temperature=s["electronic_temperature"],
                  accuracy=s["accuracy"], max_iterations=int(s["max_iterations"]),
                  mixer_damping=damping, verbosity=0)


def _reference(s: dict, k=None) -> Calculator:
    """The classical stand-in (SNAP + ZBL); no k-points."""
    from qmml.potential import reference_potential

    pot, zbl = reference_potential()
    return pot.calculator(zbl=zbl)


def _gpaw(s: dict, k) -> Calculator:
    try:
        from gpaw import GPAW
    except ImportError as err:
        raise QmmlError(f"engine 'gpaw': cannot import gpaw ({err}); install with "
                        "CC=g++ pip install gpaw gpaw-data") from None
    if s["mode"] == "lcao":
        mode = {"name": "lcao"}
        extra = {"basis": s["basis"], "h": s["h"]}
    elif s["mode"] == "pw":
        mode = {"name": "pw", "ecut": float(s["ecut"])}
        extra = {}
    else:
        raise QmmlError(f"engine config: gpaw 'mode' must be 'lcao' or 'pw', got '{s['mode']}'")
    if "mixer" in s:
        from gpaw import Mixer
        extra["mixer"] = Mixer(**s["mixer"])
    return GPAW(mode=mode, xc=s["xc"], setups=s["setups"], kpts=_kpts(k),
                occupations={"name": "methfessel-paxton", "width": float(s["smearing"])},
                symmetry="off", maxiter=int(s["maxiter"]), txt=s["txt"], **extra)


def _vasp(s: dict, k) -> Calculator:
    from ase.calculators.vasp import Vasp

    s = dict(s)
    command = s.pop("command")
    return Vasp(command=command, kpts=_kpts(k), **s)


def _espresso(s: dict, k) -> Calculator:
    from ase.calculators.espresso import Espresso, EspressoProfile

    s = dict(s)
    command = s.pop("command")
    pseudo_dir = s.pop("pseudo_dir", os.environ.get("ESPRESSO_PSEUDO", "."))
    pseudopotentials = s.pop("pseudopotentials")
    directory = s.pop("directory")
    return Espresso(profile=EspressoProfile(command=command, pseudo_dir=pseudo_dir),
                    pseudopotentials=pseudopotentials, kpts=_kpts(k), directory=directory,
                    input_data={"system": s})


def _castep(s: dict, k) -> Calculator:
    from ase.calculators.castep import Castep

    s = dict(s)
    command = s.pop("command")
    directory = s.pop("directory")
    calc = Castep(directory=directory, castep_command=command)
    for key, value in s.items():
        setattr(calc.param, key, value)
    calc.cell.kpoint_mp_grid = " ".join(map(str, _kpts(k)))
    return calc


# The engines' own ASE calculators (energy, forces, stress): ``BUILDERS[name](settings, kpts)``
# with the settings of ``resolved_settings`` minus 'engine' and 'kpts_line'.
BUILDERS = {"tblite": _tblite, "reference": _reference, "gpaw": _gpaw, "vasp": _vasp,
            "espresso": _espresso, "castep": _castep}


# ---- adapters ---------------------------------------------------------------------------
def _kpts(k) -> tuple[int, int, int]:
    """An int means 'k along the line' (z); a tuple is used as given."""
    return (1, 1, int(k)) if np.isscalar(k) else tuple(int(x) for x in k)


class _Adapter(Calculator):
    """Wraps an ASE calculator: k-points only along periodic directions of each cluster.

    DFT engines are (re)built by ``build(settings, kpts)`` whenever the k-point mesh
    the cluster needs changes (slab: (1, 1, k); sphere: Γ) or after an SCF failure.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, calc: Calculator | None, name: str, kpts_line: int, build=None,
                 settings: dict | None = None):
        super().__init__()
        self.calc, self.engine_name, self.kpts_line = calc, name, kpts_line
        self.build, self.settings = build, dict(settings or {})
        self._kpts = _kpts(kpts_line) if calc is not None and build is not None else None

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms.copy()
        if self.build is not None:
            kpts = tuple(self.kpts_line if p else 1 for p in atoms.pbc)
            if kpts != self._kpts or self.calc is None:
                self.calc = self.build(self.settings, kpts)
                self._kpts = kpts
        atoms.calc = self.calc
        self.results["forces"] = np.array(atoms.get_forces())
        self.results["energy"] = float(atoms.get_potential_energy())

    def adjust_for_retry(self, attempt: int) -> str:
        """Softer SCF settings for the next attempt (same converged physics)."""
        self.calc = None if self.build is not None else self.calc
        if self.engine_name == "gpaw":
            self.settings["maxiter"] = int(self.settings["maxiter"]) * 2
            self.settings["mixer"] = {"beta": 0.02, "nmaxold": 5, "weight": 100.0}
            return f"mixer beta 0.02, maxiter {self.settings['maxiter']}"
        if self.engine_name == "vasp":
            self.settings.update(algo="All", nelm=200 * (attempt + 1))
            return "ALGO=All, more NELM"
        return "plain retry"


class _TBLiteEngine(Calculator):
    """GFN1-xTB via tblite at Γ; the cluster is replicated along periodic directions."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, settings: dict, kpts_line: int):
        super().__init__()
        self.settings = dict(settings)
        self.kpts_line = kpts_line
        self.engine_name = "tblite"
        self._damping = 0.4  # tblite's default mixer damping
        _tblite(self.settings)  # built now so a missing tblite fails at start-up, not mid-run

    def replicate(self, atoms: Atoms) -> tuple[Atoms, tuple[int, int, int]]:
        """The supercell tblite really computes (also used by tests for direct calls)."""
        reps = tuple(self.kpts_line if p else 1 for p in atoms.pbc)
        return atoms.repeat(reps), reps

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        big, reps = self.replicate(self.atoms)
        big.calc = _tblite(self.settings, damping=self._damping)
        copies = int(np.prod(reps))
        # Atoms.repeat puts copy c of atom i at index c*n + i
        self.results["forces"] = big.get_forces().reshape(copies, n, 3).mean(axis=0)
        self.results["energy"] = float(big.get_potential_energy()) / copies

    def adjust_for_retry(self, attempt: int) -> str:
        # only SCF-convergence aids: the converged result (and so the cache key) is unchanged
        self.settings["max_iterations"] = int(self.settings["max_iterations"]) * 2
        self._damping = 0.4 / (2 ** attempt)
        return f"max_iterations {self.settings['max_iterations']}, mixer damping {self._damping}"
