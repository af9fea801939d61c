"""The DFT programs qmml drives through ASE: builders and run-folder protocols.

Each builder is ``build(settings, kpts, pbc=(True, True, True))`` with the settings of
``resolved_settings`` minus 'engine' and 'kpts_line' (qmml.bulk calls them directly for
periodic bulk cells; the cluster adapter passes the cluster's pbc).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator
from ase.units import Rydberg

from qmml import QmmlError
from qmml.engines.adapter import EngineSpec
from qmml.engines.errors import EngineFailed, output_tail

FULL = (True, True, True)


def _kpts(k) -> tuple[int, int, int]:
    """An int means 'k along the line' (z); a tuple is used as given."""
    return (1, 1, int(k)) if np.isscalar(k) else tuple(int(x) for x in k)


def _strip(s: dict, *keys) -> dict:
    s = dict(s)
    for key in keys:
        s.pop(key, None)
    return s


# ---- GPAW (Python library: no command, handles open boundaries itself) ------------------
def gpaw(s: dict, k, pbc=FULL) -> Calculator:
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


# ---- VASP -------------------------------------------------------------------------------
def vasp(s: dict, k, pbc=FULL) -> Calculator:
    from ase.calculators.vasp import Vasp

    s = _strip(s, "vacuum")
    command = s.pop("command")
    return Vasp(command=command, kpts=_kpts(k), txt="vasp.out", **s)


def _vasp_prepare(calc, restart: bool) -> None:
    """Same cluster as the previous call: start from its WAVECAR (and CHGCAR); otherwise
    remove them (another cluster's wavefunction cannot be read) and start from atoms."""
    run = Path(calc.directory)
    wavecar, chgcar = run / "WAVECAR", run / "CHGCAR"
    has_wave = wavecar.is_file() and wavecar.stat().st_size > 0
    has_chg = chgcar.is_file() and chgcar.stat().st_size > 0
    if restart and has_wave:
        calc.set(istart=1, icharg=1 if has_chg else 0, lwave=True, lcharg=True)
    else:
        for path in (wavecar, chgcar):
            path.unlink(missing_ok=True)
        calc.set(istart=0, icharg=2, lwave=True, lcharg=True)


def _vasp_check(calc) -> None:
    if calc.converged is False:  # OUTCAR says the SCF loop stopped before EDIFF
        run = Path(calc.directory)
        raise EngineFailed(f"engine 'vasp': SCF not converged (NELM reached) in {run}; "
                           f"{output_tail([run / 'OUTCAR'], lines=3)}")


VASP = EngineSpec(build=vasp, box="periodic", prepare=_vasp_prepare, check=_vasp_check,
                  outputs=lambda c: [Path(c.directory) / "vasp.out",
                                     Path(c.directory) / "OUTCAR"],
                  run_dir=lambda c: Path(c.directory))


# ---- Quantum ESPRESSO (pw.x) ------------------------------------------------------------
ESPRESSO_OUTDIR, ESPRESSO_PREFIX = "out", "qmml"


def _pw_keys() -> dict[str, list[str]]:
    from ase.io.espresso_namelist.keys import pw_keys

    return pw_keys


def espresso(s: dict, k, pbc=FULL) -> Calculator:
    from ase.calculators.espresso import Espresso, EspressoProfile

    s = _strip(s, "vacuum")
    command = s.pop("command")
    pseudo_dir = s.pop("pseudo_dir", None) or os.environ.get("ESPRESSO_PSEUDO", ".")
    pseudopotentials = s.pop("pseudopotentials")
    directory = s.pop("directory")
    keys = _pw_keys()
    electrons = {key: s.pop(key) for key in list(s) if key in keys["electrons"]}
    system = s  # resolved_settings admits only &system and &electrons keys
    control = {"outdir": ESPRESSO_OUTDIR, "prefix": ESPRESSO_PREFIX, "tprnfor": True,
               "tstress": all(pbc)}  # bulk cells only: a cluster's box has no stress
    return Espresso(profile=EspressoProfile(command=command, pseudo_dir=str(pseudo_dir)),
                    pseudopotentials=pseudopotentials, kpts=_kpts(k), directory=directory,
                    input_data={"control": control, "system": system,
                                "electrons": electrons})


def _espresso_prepare(calc, restart: bool) -> None:
    """Same cluster: pw.x starts from the wavefunctions and potential that the previous
    run left in ``outdir``; otherwise that folder is removed."""
    save = Path(calc.directory) / ESPRESSO_OUTDIR
    electrons = calc.parameters["input_data"]["electrons"]
    if restart and (save / f"{ESPRESSO_PREFIX}.save").is_dir():
        electrons.update(startingwfc="file", startingpot="file")
    else:
        shutil.rmtree(save, ignore_errors=True)
        electrons.pop("startingwfc", None)
        electrons.pop("startingpot", None)


ESPRESSO = EngineSpec(build=espresso, box="periodic", prepare=_espresso_prepare,
                      outputs=lambda c: [Path(c.directory) / "espresso.pwo"],
                      run_dir=lambda c: Path(c.directory))


# ---- CASTEP -----------------------------------------------------------------------------
CASTEP_SEED = "castep"


def castep(s: dict, k, pbc=FULL) -> Calculator:
    from ase.calculators.castep import Castep

    s = _strip(s, "vacuum")
    command = s.pop("command")
    directory = s.pop("directory")
    pseudopotentials = s.pop("pseudopotentials", None) or {}
    pp_path = s.pop("castep_pp_path", None) or os.environ.get("CASTEP_PP_PATH")
    # keyword_tolerance 3: no keyword file generated by running castep; resolved_settings
    # checks the keys against qmml's schema instead
    calc = Castep(directory=directory, label=CASTEP_SEED, castep_command=command,
                  castep_pp_path=pp_path, keyword_tolerance=3)
    calc._rename_existing_dir = False  # the run folder is reused for restarts
    calc._pedantic = False
    calc._link_pspots, calc._copy_pspots = False, True
    for key, value in s.items():
        setattr(calc.param, key, value)
    calc.param.task = "SinglePoint"
    if pseudopotentials:
        calc.cell.species_pot = list(pseudopotentials.items())
    calc.cell.kpoint_mp_grid = " ".join(map(str, _kpts(k)))
    return calc


def _castep_prepare(calc, restart: bool) -> None:
    """Same cluster: CASTEP reuses the previous run's .check (wavefunction, density)."""
    check = Path(calc._directory) / f"{CASTEP_SEED}.check"
    if restart and check.is_file():
        calc.param.reuse = check.name
    else:
        check.unlink(missing_ok=True)
        calc.param.reuse.clear()
    for err in Path(calc._directory).glob(f"{CASTEP_SEED}.*.err"):
        err.unlink()  # ASE reads any .err file as this run's failure
    calc._error = None


CASTEP = EngineSpec(build=castep, box="periodic", prepare=_castep_prepare,
                    outputs=lambda c: sorted(Path(c._directory).glob(f"{CASTEP_SEED}.*.err"))
                    + [Path(c._directory) / f"{CASTEP_SEED}.castep"],
                    run_dir=lambda c: Path(c._directory))


# ---- CP2K (cp2k_shell) ------------------------------------------------------------------
CP2K_LABEL = "cp2k"
SCF_CONVERGED = re.compile(r"SCF run converged in\s+(\d+) steps")


def _cp2k_input(s: dict, k: tuple[int, int, int], pbc) -> str:
    """The &DFT additions ASE does not write: smearing, added MOs, Broyden mixing, a
    Poisson solver matching the cluster's periodicity, and k-points along periodic axes."""
    periodic = "".join(a for a, p in zip("XYZ", pbc) if p) or "NONE"
    # CP2K 2023: Martyna-Tuckerman for 0D only ("MT1D unimplemented"); the analytic
    # Green's function handles the wire (periodic along z only) in an orthorhombic box
    psolver = {"XYZ": "PERIODIC", "NONE": "MT"}.get(periodic, "ANALYTIC")
    kpoints = ""
    extrapolation = s["extrapolation"]
    if extrapolation == "auto":
        # CP2K extrapolates wavefunctions (ASPC) at Γ only; with k-points it falls back to
        # the initial guess unless told to start from the previous density matrix
        extrapolation = "USE_PREV_P" if max(k) > 1 else "ASPC"
    # Gaussian screening threshold (CP2K's default 1e-10 when not given; not in the
    # settings hash then, so caches of configs without it stay valid)
    eps_default = (f"      EPS_DEFAULT {float(s['eps_default']):.1e}\n"
                   if "eps_default" in s else "")
    if max(k) > 1:
        kpoints = (f"      &KPOINTS\n        SCHEME MONKHORST-PACK {k[0]} {k[1]} {k[2]}\n"
                   "      &END KPOINTS\n")
    return (
        "&FORCE_EVAL\n  &DFT\n"
        "    &SCF\n"
        f"      EPS_SCF {float(s['eps_scf']):.1e}\n"
        f"      ADDED_MOS {int(s['added_mos'])}\n"
        "      &SMEAR ON\n        METHOD FERMI_DIRAC\n"
        f"        ELECTRONIC_TEMPERATURE [K] {float(s['electronic_temperature'])}\n"
        "      &END SMEAR\n"
        "      &MIXING\n        METHOD BROYDEN_MIXING\n"
        f"        ALPHA {float(s['mixing_alpha'])}\n        NBROYDEN 8\n      &END MIXING\n"
        "    &END SCF\n"
        f"    &QS\n      EXTRAPOLATION {extrapolation}\n{eps_default}    &END QS\n"
        f"    &POISSON\n      PERIODIC {periodic}\n      PSOLVER {psolver}\n    &END POISSON\n"
        f"{kpoints}"
        "  &END DFT\n&END FORCE_EVAL\n")


# ASE writes the run folder into the input's PROJECT line, which cp2k_shell's WRITE_FILE
# wraps at 80 characters (measured: an 86-character folder path broke the parse at its
# 66th character)
CP2K_PROJECT_CHARS = 64


def cp2k(s: dict, k, pbc=FULL) -> Calculator:
    from ase.calculators.cp2k import CP2K

    k = _kpts(k)
    directory = Path(s["directory"])
    project = str(directory / CP2K_LABEL)
    if len(project) > CP2K_PROJECT_CHARS:  # cp2k_shell wraps longer input lines: parse error
        raise QmmlError(f"engine 'cp2k': key 'directory': the run folder path {project!r} has "
                        f"{len(project)} characters; CP2K's input lines hold at most "
                        f"{CP2K_PROJECT_CHARS} for it (use a shorter, e.g. relative, folder)")
    directory.mkdir(parents=True, exist_ok=True)
    data = s.get("data_dir") or os.environ.get("CP2K_DATA_DIR", "/usr/share/cp2k")
    return CP2K(command=s["command"], directory=str(directory), label=CP2K_LABEL,
                basis_set=s["basis_set"], basis_set_file=str(Path(data) / s["basis_set_file"]),
                potential_file=str(Path(data) / s["potential_file"]),
                pseudo_potential=s["pseudo_potential"], xc=s["xc"],
                cutoff=float(s["cutoff"]) * Rydberg, max_scf=int(s["max_scf"]),
                stress_tensor=all(pbc), poisson_solver=None,
                inp=_cp2k_input(s, k, pbc))


def cp2k_scf_steps(output) -> list[int]:
    """SCF iterations of each converged CP2K calculation in ``output`` (a cp2k .out)."""
    return [int(m) for m in SCF_CONVERGED.findall(Path(output).read_text(errors="replace"))]


def _cp2k_check(calc) -> None:
    out = Path(calc.directory) / f"{CP2K_LABEL}.out"
    if out.is_file():
        text = out.read_text(errors="replace")
        last = text[text.rfind("SCF WAVEFUNCTION OPTIMIZATION"):]
        if "SCF run NOT converged" in last:
            raise EngineFailed(f"engine 'cp2k': SCF not converged in max_scf steps "
                               f"({out}); {output_tail([out], lines=3)}")


# cp2k_shell keeps the last wavefunction in memory and extrapolates it to the next
# geometry: restarts need nothing on disk, the shell stays open across calls of one cluster.
# Measured (CP2K 2023.1, 12-atom W slab cluster, SVP-MOLOPT, 100 Ry, Γ, QM/ML relaxation of
# a screw core): SCF iterations 24 on the first call, then 15 and 13 restarted; measure
# with `PYTHONPATH=src python -m pytest -s tests/test_engine_cp2k.py`
CP2K = EngineSpec(build=cp2k, box="open", check=_cp2k_check,
                  outputs=lambda c: [Path(c.directory) / f"{CP2K_LABEL}.out"],
                  run_dir=lambda c: Path(c.directory))

SPECS = {"gpaw": EngineSpec(build=gpaw), "vasp": VASP, "espresso": ESPRESSO,
         "castep": CASTEP, "cp2k": CP2K}
