"""QM engines for the QM region of force-mixed QM/ML: one registry, one config format.

An engine config is a plain dict (usually read from YAML)::

    engine: tblite | gpaw | cp2k | vasp | espresso | castep | reference   # required
    kpts_line: 4        # k-points along the periodic dislocation line (default 1)
    retries: 1          # extra attempts after an SCF failure (default 1)
    command: ...        # program command line (cp2k, vasp, espresso, castep)
    ...                 # engine keys: DEFAULTS and OPTIONAL below; anything else is an error

k-points follow the QM cluster that ``ForceQMMM`` cuts out: a slab cluster (periodic
along the line only) gets ``(1, 1, kpts_line)``, a 3D sphere (no periodic direction) gets Γ.
Plane-wave programs (VASP, QE, CASTEP) get the cluster in a FULLY periodic box with at
least ``vacuum`` Å of empty space between images along the open directions; CP2K gets the
same box with its periodicity kept (&CELL/&POISSON PERIODIC Z or NONE).  Within one
relaxation (same species, cell, pbc), each call restarts from the previous call's
wavefunction/density (VASP WAVECAR/CHGCAR, QE outdir, CASTEP .check, CP2K's shell).

tblite has no k-points: the cluster is instead *replicated* ``kpts_line`` times along its
periodic direction, tblite runs at Γ of the supercell (equivalent to ``kpts_line`` k-points
along the line), and the forces of the copies of each atom are averaged back onto it
(the copies are equivalent by translation symmetry; averaging removes round-off asymmetry).
The energy returned is per original cluster (supercell energy / kpts_line).

A missing or non-executable command raises :class:`EngineNotRunnable` at start-up (one
line, never retried); a program that ran and failed raises :class:`EngineFailed` quoting
the end of its output, with a copy of its run folder kept.  ``is_retryable`` tells the QM
cache which failures are worth another attempt.

``reference`` is NOT QM: it is the classical W_2940_2017_2 SNAP + ZBL stand-in used for
tests and demos, and everything that records an engine name labels it as such.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError
from qmml.engines.adapter import Adapter, EngineSpec
from qmml.engines.errors import (EngineFailed, EngineNotRunnable, check_command,
                                 is_retryable)
from qmml.engines.programs import SPECS, castep, cp2k, espresso, gpaw, vasp

__all__ = ["BUILDERS", "COMMON_KEYS", "DEFAULTS", "NO_KPOINTS", "OPTIONAL", "REFERENCE_LABEL",
           "Adapter", "EngineFailed", "EngineNotRunnable", "EngineSpec", "engine_label",
           "engine_settings_hash", "is_retryable", "make_qm_calculator", "read_engine_config",
           "resolved_settings", "with_run_folder"]

REFERENCE_LABEL = "reference (classical stand-in, not QM)"

# Documented defaults per engine.  VASP follows the paper: PBE PAW, 550 eV,
# Methfessel-Paxton (ISMEAR=1) with 0.1 eV smearing, no symmetry on clusters.
# 'vacuum' (Å): least empty width between periodic images of a cluster (open directions).
DEFAULTS: dict[str, dict[str, Any]] = {
    "tblite": {"method": "GFN1-xTB", "electronic_temperature": 1000.0, "accuracy": 1.0,
               "max_iterations": 250},
    "gpaw": {"mode": "lcao", "basis": "dzp", "ecut": 400.0, "xc": "PBE", "setups": {"W": "6"},
             "smearing": 0.1, "h": 0.2, "maxiter": 333, "txt": None},
    "cp2k": {"xc": "PBE", "basis_set": "DZVP-MOLOPT-PBE-GTH-q14",
             "basis_set_file": "BASIS_MOLOPT_UZH", "potential_file": "GTH_POTENTIALS",
             "pseudo_potential": "GTH-PBE-q14", "cutoff": 400.0, "max_scf": 100,
             "eps_scf": 1e-6, "added_mos": 40, "electronic_temperature": 1000.0,
             "mixing_alpha": 0.2, "extrapolation": "auto", "vacuum": 10.0,
             "directory": "cp2k-run"},
    "vasp": {"xc": "PBE", "encut": 550.0, "ismear": 1, "sigma": 0.1, "ediff": 1e-6,
             "prec": "Accurate", "lreal": "Auto", "isym": 0, "vacuum": 10.0,
             "directory": "vasp-run"},
    "espresso": {"ecutwfc": 45.0, "occupations": "smearing", "smearing": "mp",
                 "degauss": 0.0073, "nosym": True, "vacuum": 10.0,
                 "directory": "espresso-run"},
    "castep": {"xc_functional": "PBE", "cut_off_energy": 550.0, "smearing_width": 0.1,
               "vacuum": 10.0, "directory": "castep-run"},
    "reference": {},
}
# keys a config must provide (besides 'engine'); commands may also come from env vars
REQUIRED = {"espresso": ("pseudopotentials",)}
CASTEP_KEYS = ("pseudopotentials", "castep_pp_path", "elec_energy_tol", "max_scf_cycles",
               "mixing_scheme", "mix_charge_amp", "metals_method", "smearing_scheme",
               "nextra_bands", "perc_extra_bands", "basis_precision", "finite_basis_corr",
               "spin_polarized", "fix_occupancy", "num_dump_cycles", "opt_strategy",
               "elec_method", "iprint")
# keys an engine accepts besides its DEFAULTS (None: computed from ASE, see _optional)
OPTIONAL: dict[str, tuple[str, ...] | None] = {
    "tblite": (), "reference": (), "gpaw": ("mixer",), "cp2k": ("data_dir", "eps_default"),
    "vasp": None, "espresso": None, "castep": CASTEP_KEYS}
COMMAND_ENV = {"cp2k": "ASE_CP2K_COMMAND", "vasp": "ASE_VASP_COMMAND",
               "espresso": "ASE_ESPRESSO_COMMAND", "castep": "CASTEP_COMMAND"}
DEFAULT_COMMAND = {"cp2k": "cp2k_shell"}
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


def _optional(name: str) -> tuple[set[str], str]:
    """(keys engine ``name`` accepts besides DEFAULTS/COMMON_KEYS, how to list them)."""
    if name == "vasp":
        from ase.calculators.vasp import create_input as ci

        tags = {k.lower() for group in (ci.float_keys, ci.exp_keys, ci.string_keys,
                                        ci.int_keys, ci.bool_keys, ci.list_int_keys,
                                        ci.list_bool_keys, ci.list_float_keys,
                                        ci.special_keys, ci.dict_keys) for k in group}
        tags |= {"pp", "pp_version", "setups", "charge", "custom", "gamma"}
        return tags, "or any INCAR tag ASE's Vasp calculator knows"
    if name == "espresso":
        from ase.io.espresso_namelist.keys import pw_keys

        keys = set(pw_keys["system"]) | set(pw_keys["electrons"]) | {"pseudo_dir"}
        keys -= {"startingwfc", "startingpot"}  # set per call by the restart protocol
        return keys, "or any pw.x &SYSTEM / &ELECTRONS key"
    return set(OPTIONAL[name]), ", ".join(OPTIONAL[name])


def _check_keys(cfg: dict, name: str) -> None:
    """QmmlError naming an unknown key, with a close match and the valid keys."""
    optional, listed = _optional(name)
    documented = [*COMMON_KEYS, *DEFAULTS[name], *REQUIRED.get(name, ())]
    valid = set(documented) | optional
    for key in cfg:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            extra = f"; {listed}" if listed else ""
            raise QmmlError(f"engine config: unknown key '{key}' for engine '{name}' ({hint}"
                            f"valid: {', '.join(documented)}{extra})")


def resolved_settings(cfg: dict) -> dict:
    """Defaults merged with the config; raises QmmlError on unknown engine or key, or a
    missing key."""
    if not isinstance(cfg, dict):
        raise QmmlError("engine config: expected a mapping with key 'engine'")
    if "engine" not in cfg:
        raise QmmlError("engine config: required key 'engine' missing "
                        f"(one of {', '.join(DEFAULTS)})")
    name = cfg["engine"]
    if name not in DEFAULTS:
        raise QmmlError(f"engine config: unknown engine '{name}' (known: {', '.join(DEFAULTS)})")
    _check_keys(cfg, name)
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
        command = (cfg.get("command") or os.environ.get(COMMAND_ENV[name])
                   or DEFAULT_COMMAND.get(name))
        if not command:
            raise QmmlError(f"engine config: engine '{name}' needs key 'command' "
                            f"(or environment variable {COMMAND_ENV[name]})")
        settings["command"] = command
    return settings


def command_source(cfg: dict) -> str:
    """Where the engine command of ``cfg`` comes from, for error messages."""
    name = cfg.get("engine")
    if cfg.get("command"):
        return "key 'command' (qm.command in a workflow config)"
    if name in COMMAND_ENV and os.environ.get(COMMAND_ENV[name]):
        return f"environment variable {COMMAND_ENV[name]}"
    return "the default (set key 'command', qm.command in a workflow config)"


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


def with_run_folder(cfg: dict, output) -> dict:
    """``cfg`` with the program's run folder made private to the job writing ``output``:
    ``<directory>/<output path as one name>``.  Jobs of one workflow (several SLURM jobs
    in one working directory) would otherwise write each other's input and restart files
    (INCAR, POSCAR, WAVECAR) in the one configured folder.  Engines without a run folder
    (tblite, gpaw, reference) are returned unchanged."""
    folder = cfg.get("directory", DEFAULTS.get(cfg.get("engine"), {}).get("directory"))
    if not folder:
        return cfg
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.relpath(os.fspath(output))).strip("_.")
    return dict(cfg, directory=os.path.join(folder, name))


def engine_settings_hash(cfg: dict) -> str:
    """Hash of everything that changes a QM result (not run directories or commands).

    Part of every cache key: changing a physical setting never reuses old results.
    """
    settings = resolved_settings(cfg)
    for key in ("command", "directory", "txt", "retries", "data_dir", "castep_pp_path",
                "pseudo_dir"):
        settings.pop(key, None)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_qm_calculator(cfg: dict) -> Calculator:
    """ASE calculator for the engine named in ``cfg['engine']`` (see module docstring).

    The returned calculator adapts to the cluster it is given: k-points (or tblite
    replicas) only along periodic directions, a vacuum box for plane-wave codes.  It has
    an ``adjust_for_retry(attempt)`` method that the QM cache calls after an SCF failure.
    A command that cannot run raises EngineNotRunnable here, before any QM call.
    """
    settings = resolved_settings(cfg)
    name = settings.pop("engine")
    kpts_line = settings.pop("kpts_line")
    if name == "tblite":
        return _TBLiteEngine(settings, kpts_line)
    if name == "reference":
        return _Classical(_reference(settings), name)
    source = command_source(cfg)
    if "command" in settings:
        check_command(name, settings["command"], source)
    if name == "gpaw":
        gpaw(settings, 1)  # built now so a missing gpaw fails at start-up, not mid-run
    return Adapter(SPECS[name], name, kpts_line, settings, command_source=source)


# ---- engine constructors ----------------------------------------------------------------
def _tblite(s: dict, k=None, pbc=None, damping: float = 0.4) -> Calculator:
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


def _reference(s: dict, k=None, pbc=None) -> Calculator:
    """The classical stand-in (SNAP + ZBL); no k-points."""
    from qmml.potential import reference_potential

    pot, zbl = reference_potential()
    return pot.calculator(zbl=zbl)


# The engines' own ASE calculators (energy, forces, stress): ``BUILDERS[name](settings, kpts)``
# with the settings of ``resolved_settings`` minus 'engine' and 'kpts_line'.
BUILDERS = {"tblite": _tblite, "reference": _reference, "gpaw": gpaw, "cp2k": cp2k,
            "vasp": vasp, "espresso": espresso, "castep": castep}


class _Classical(Calculator):
    """The classical stand-in for clusters (no k-points, no vacuum box)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, calc: Calculator, name: str):
        super().__init__()
        self.calc, self.engine_name = calc, name

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms.copy()
        atoms.calc = self.calc
        self.results["forces"] = np.array(atoms.get_forces())
        self.results["energy"] = float(atoms.get_potential_energy())

    def adjust_for_retry(self, attempt: int) -> str:
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
