"""VASP, CASTEP and pw.x through ASE's real calculators, against protocol doubles.

The doubles (tests/doubles/) read each program's input files as the program does, refuse
what it refuses and write its output format, with energies and forces of the classical
stand-in; the POTCAR and UPF files made here are FAKE (labelled so in their first line).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read

from conftest import MILADY
from qmml import QmmlError, potential_path
from qmml.engines import (EngineFailed, EngineNotRunnable, engine_settings_hash,
                          is_retryable, make_qm_calculator)
from qmml.engines.cluster import BOX_STEP, open_vacuum
from qmml.forcemixing import make_force_qmmm
from qmml.qmcache import CachedQMCalculator
from qmml.qmmm import neb, relax
from qmml.regions import cylinder_region, sphere_region
from qmml.structures import add_point_defect, dislocation_cylinder, glide_endpoints

DOUBLES = Path(__file__).resolve().parent / "doubles"
FAKE = "FAKE (qmml test fixture, not a real pseudopotential)"


def fake_potcar(element: str, zval: float) -> str:
    return (f"  PAW_PBE {element} 08Apr2002 {FAKE}\n {zval:.14f}\n parameters from PSCTR are:\n"
            f"   VRHFIN ={element}: fake\n   TITEL  = PAW_PBE {element} {FAKE}\n"
            f"   ZVAL   = {zval:9.3f}    mass and valenz\n End of Dataset\n")


@pytest.fixture
def programs(tmp_path, monkeypatch) -> Path:
    """PATH with the doubles' python first; fake VASP_PP_PATH, UPF and CASTEP pseudo dirs."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for element, zval in (("W", 6.0), ("He", 2.0)):
        folder = tmp_path / "vasp_pp" / "potpaw_PBE" / element
        folder.mkdir(parents=True)
        (folder / "POTCAR").write_text(fake_potcar(element, zval))
        upf = tmp_path / "upf" / f"{element}.upf"
        upf.parent.mkdir(exist_ok=True)
        upf.write_text(f'<UPF version="2.0.1">\n<PP_INFO> {FAKE} </PP_INFO>\n</UPF>\n')
        usp = tmp_path / "castep_pp" / f"{element}_fake.usp"
        usp.parent.mkdir(exist_ok=True)
        usp.write_text(f"{FAKE}\n")
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path / "vasp_pp"))
    monkeypatch.setenv("CASTEP_PP_PATH", str(tmp_path / "castep_pp"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def engine_config(name: str, work: Path, **extra) -> dict:
    cfg = {"vasp": {"engine": "vasp", "command": str(DOUBLES / "vasp_double")},
           "castep": {"engine": "castep", "command": str(DOUBLES / "castep_double"),
                      "pseudopotentials": {"W": "W_fake.usp", "He": "He_fake.usp"}},
           "espresso": {"engine": "espresso", "command": str(DOUBLES / "pw_double"),
                        "pseudopotentials": {"W": "W.upf", "He": "He.upf"},
                        "pseudo_dir": str(work / "upf")}}[name]
    return dict(cfg, directory=str(work / f"{name}-run"), **extra)


def slab_cluster() -> Atoms:
    """8 bcc W atoms periodic along z only (the kind of cluster ForceQMMM cuts), rattled."""
    a = bulk("W", cubic=True).repeat((2, 2, 1))
    a.pbc = (False, False, True)
    a.set_cell([12.0, 12.0, a.cell[2, 2]])
    a.positions[:, :2] += 3.0
    a.rattle(0.05, seed=5)
    return a


def sphere_cluster() -> Atoms:
    """bcc W cube with a He atom, no periodic direction, rattled."""
    a = bulk("W", cubic=True).repeat((2, 2, 2))
    del a[-1]
    a += Atoms("He", positions=[[1.58, 0.79, 1.58]])
    a.pbc = False
    a.set_cell([12.0, 12.0, 12.0])
    a.positions += 3.0
    a.rattle(0.05, seed=6)
    return a


def reference_forces(atoms: Atoms) -> np.ndarray:
    return make_qm_calculator({"engine": "reference"}).get_forces(atoms.copy())


# ---- every engine writes input its program accepts, for both kinds of QM region ---------
INPUTS = {"vasp": ("POSCAR", "vasp"), "castep": ("castep.cell", "castep-cell"),
          "espresso": ("espresso.pwi", "espresso-in")}


@pytest.mark.parametrize("name", ["vasp", "castep", "espresso"])
@pytest.mark.parametrize("kind", ["slab", "sphere"])
def test_cluster_input_is_periodic_box_with_vacuum_and_right_kpoints(programs, name, kind):
    cluster = slab_cluster() if kind == "slab" else sphere_cluster()
    calc = make_qm_calculator(engine_config(name, programs, kpts_line=12, vacuum=9.0))
    forces = calc.get_forces(cluster.copy())
    # the program computed the stand-in's forces on the same atoms, in the original order
    np.testing.assert_allclose(forces, reference_forces(cluster), atol=1e-4)
    run = programs / f"{name}-run"
    filename, fmt = INPUTS[name]
    seen = read(run / filename, format=fmt)
    assert seen.pbc.all()  # the program gets a fully periodic cell
    assert sorted(seen.get_chemical_symbols()) == sorted(cluster.get_chemical_symbols())
    gaps = open_vacuum(seen, cluster.pbc)
    assert (gaps[~cluster.pbc] >= 9.0 - 1e-6).all() and (gaps[~cluster.pbc] < 9.0 + BOX_STEP).all()
    if kind == "slab":  # the periodic length is untouched
        assert seen.cell[2, 2] == pytest.approx(cluster.cell[2, 2], abs=1e-6)
    expected = (1, 1, 12) if kind == "slab" else (1, 1, 1)
    assert kpoint_mesh(name, run) == expected


def kpoint_mesh(name: str, run: Path) -> tuple[int, ...]:
    if name == "vasp":
        return tuple(int(x) for x in (run / "KPOINTS").read_text().splitlines()[3].split())
    if name == "castep":
        line = [ln for ln in (run / "castep.cell").read_text().splitlines()
                if ln.upper().startswith("KPOINT_MP_GRID")][0]
        return tuple(int(x) for x in line.split(":")[1].split())
    lines = (run / "espresso.pwi").read_text().splitlines()
    k = lines.index("K_POINTS automatic")
    return tuple(int(x) for x in lines[k + 1].split()[:3])


def test_vasp_writes_the_papers_settings(programs):
    cfg = engine_config("vasp", programs, kpts_line=12)
    make_qm_calculator(cfg).get_forces(slab_cluster())
    incar = dict(line.split(" = ") for line in
                 (programs / "vasp-run" / "INCAR").read_text().splitlines())
    assert float(incar["ENCUT"]) == 550.0 and incar["ISMEAR"] == "1"
    assert float(incar["SIGMA"]) == 0.1 and incar["ISYM"] == "0" and incar["GGA"] == "PE"
    outcar = (programs / "vasp-run" / "OUTCAR").read_text()
    assert "NOT DFT" in outcar and "test double" in outcar  # the double labels itself
    assert "FAKE" in (programs / "vasp-run" / "POTCAR").read_text().splitlines()[0]


# ---- restarts: the second call of one relaxation starts from the first one's wavefunction -
SCF_LINES = {"vasp": ("OUTCAR", "Iteration"), "castep": ("castep.castep", "<-- SCF"),
             "espresso": ("espresso.pwo", "iteration #")}


@pytest.mark.parametrize("name", ["vasp", "castep", "espresso"])
def test_second_call_restarts_from_the_previous_wavefunction(programs, name):
    calc = make_qm_calculator(engine_config(name, programs, kpts_line=2))
    run = programs / f"{name}-run"
    filename, marker = SCF_LINES[name]
    cluster = slab_cluster()
    steps = []
    for shift in (0.0, 0.02, 0.04):
        moved = cluster.copy()
        moved.positions[0, 0] += shift
        calc.get_forces(moved)
        steps.append((run / filename).read_text().count(marker))
    assert calc.n_restarts == 2
    # the doubles do 21 SCF steps from atoms, 7 from a previous wavefunction (+3 lines of
    # the frame of CASTEP's SCF table)
    extra = 3 if name == "castep" else 0
    assert steps == [21 + extra, 7 + extra, 7 + extra]
    # another cluster (here: the 3D sphere) starts from atoms again, never from a foreign one
    calc.get_forces(sphere_cluster())
    assert (run / filename).read_text().count(marker) == 21 + extra
    assert calc.n_restarts == 2


# ---- the doubles refuse what the programs refuse ----------------------------------------
def run_double(name: str, folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(DOUBLES / name), *args], cwd=folder, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def vasp_inputs(programs) -> Path:
    """A complete, accepted VASP input set for a W4He sphere."""
    calc = make_qm_calculator(engine_config("vasp", programs))
    calc.get_forces(sphere_cluster())
    folder = programs / "vasp-run"
    for name in ("OUTCAR", "vasprun.xml", "WAVECAR", "CHGCAR"):
        (folder / name).unlink()
    assert run_double("vasp_double", folder).returncode == 0
    return folder


def test_vasp_double_refuses_what_vasp_refuses(vasp_inputs):
    folder = vasp_inputs
    potcar = (folder / "POTCAR").read_text()
    # POTCAR datasets in another order than the POSCAR species
    first, second = potcar.split("End of Dataset\n")[:2]
    (folder / "POTCAR").write_text(second + "End of Dataset\n" + first + "End of Dataset\n")
    result = run_double("vasp_double", folder)
    assert result.returncode != 0 and "do not match the POTCAR" in result.stdout
    (folder / "POTCAR").unlink()
    result = run_double("vasp_double", folder)
    assert result.returncode != 0 and "file not found, unit 10, file POTCAR" in result.stderr
    (folder / "POTCAR").write_text(potcar)
    kpoints = (folder / "KPOINTS").read_text()
    (folder / "KPOINTS").write_text(kpoints.replace("1 1 1", "1 1 x"))
    result = run_double("vasp_double", folder)
    assert result.returncode != 0 and "Error reading KPOINTS" in result.stdout
    (folder / "KPOINTS").write_text(kpoints)
    # an unknown INCAR tag is only a note: VASP ignores it and runs
    with open(folder / "INCAR", "a") as fh:
        fh.write("NOTATAG = 3\n")
    result = run_double("vasp_double", folder)
    assert result.returncode == 0
    assert "NOTATAG in INCAR is not known and ignored" in (folder / "OUTCAR").read_text()


def test_castep_and_pw_doubles_refuse_unknown_keywords_and_missing_pseudopotentials(programs):
    make_qm_calculator(engine_config("castep", programs)).get_forces(sphere_cluster())
    folder = programs / "castep-run"
    param = (folder / "castep.param").read_text()
    (folder / "castep.param").write_text(param + "CUT_OF_ENERGY : 300\n")
    assert run_double("castep_double", folder, "castep").returncode != 0
    assert "unrecognised keyword CUT_OF_ENERGY" in (folder / "castep.0001.err").read_text()
    (folder / "castep.param").write_text(param)
    (folder / "castep.0001.err").unlink()
    for usp in folder.glob("*.usp"):
        usp.unlink()
    assert run_double("castep_double", folder, "castep").returncode != 0
    assert "could not open pseudopotential file" in (folder / "castep.0001.err").read_text()

    make_qm_calculator(engine_config("espresso", programs)).get_forces(sphere_cluster())
    folder = programs / "espresso-run"
    pwi = (folder / "espresso.pwi").read_text()
    (folder / "espresso.pwi").write_text(pwi.replace("&SYSTEM\n", "&SYSTEM\n   ecutwf = 30\n"))
    result = run_double("pw_double", folder, "-in", "espresso.pwi")
    assert result.returncode != 0 and "bad line in namelist &system" in result.stdout
    (folder / "espresso.pwi").write_text(pwi)
    (programs / "upf" / "W.upf").unlink()
    result = run_double("pw_double", folder, "-in", "espresso.pwi")
    assert result.returncode != 0 and "Error in routine readpp" in result.stdout


# ---- bad input: one line, not retried; a failed program is quoted, its folder kept ------
def test_missing_command_is_one_line_and_never_retried(programs, tmp_path):
    cfg = engine_config("vasp", programs, command="vasp_std_missing", retries=3)
    with pytest.raises(EngineNotRunnable) as err:
        CachedQMCalculator.from_config(cfg, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and "vasp_std_missing" in message and "'command'" in message
    assert "qm.command" in message
    # a command that disappears after start-up: one attempt, no retry, still one line
    script = programs / "vasp_soon_gone"
    script.write_text(f"#!/bin/sh\nexec {DOUBLES / 'vasp_double'}\n")
    script.chmod(0o755)
    log: list[str] = []
    qm = CachedQMCalculator.from_config(engine_config("vasp", programs, command=str(script),
                                                      retries=3), tmp_path / "c2", log=log.append)
    script.unlink()
    with pytest.raises(EngineNotRunnable) as err:
        qm.get_forces(slab_cluster())
    assert log == [] and "\n" not in str(err.value) and "vasp_soon_gone" in str(err.value)
    assert not is_retryable(err.value) and is_retryable(EngineFailed("x"))
    assert isinstance(err.value, QmmlError)


def test_failed_program_is_quoted_and_its_run_folder_kept(programs, tmp_path):
    # a broken POTCAR: VASP starts, reads it, and stops with its own error
    (programs / "vasp_pp" / "potpaw_PBE" / "W" / "POTCAR").write_text("  PAW_PBE W broken\n")
    log: list[str] = []
    qm = CachedQMCalculator.from_config(engine_config("vasp", programs, retries=1),
                                        tmp_path / "cache", log=log.append)
    with pytest.raises(EngineFailed) as err:
        qm.get_forces(slab_cluster())
    message = str(err.value)
    assert "\n" not in message and "POTCAR contains no dataset" in message
    assert "last lines of vasp.out" in message and "2 attempt(s)" in message
    kept = sorted(programs.glob("vasp-run.failed-*"))
    assert len(kept) == 2 and str(kept[-1]) in message  # one copy per attempt
    assert "POTCAR contains no dataset" in (kept[0] / "vasp.out").read_text()
    assert (kept[0] / "INCAR").is_file() and len(log) == 1


def test_unconverged_scf_is_retried_with_softer_settings(programs, tmp_path):
    """NELM below the SCF steps needed: OUTCAR says unconverged, the retry (ALGO=All, more
    NELM) converges; the result is stored once."""
    log: list[str] = []
    qm = CachedQMCalculator.from_config(engine_config("vasp", programs, nelm=10, retries=1),
                                        tmp_path / "cache", log=log.append)
    forces = qm.get_forces(slab_cluster())
    assert len(log) == 1 and "SCF not converged" in log[0] and "ALGO=All" in log[0]
    np.testing.assert_allclose(forces, reference_forces(slab_cluster()), atol=1e-5)
    assert qm.n_real_calls == 1


# ---- QM/ML relaxation, NEB and 3D through the real ASE calculators ----------------------
BUFFER = 5.0


def small_screw_cylinder(milady) -> Atoms:
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=16.0, fixed_width=5.0)
    cylinder_region(atoms, None, qm_radius=3.0, buffer_width=BUFFER, ml_cutoff=milady.cutoff)
    return atoms


@pytest.fixture(scope="module")
def direct_relaxation(milady, tmp_path_factory) -> Atoms:
    """The QM/ML relaxation of :func:`small_screw_cylinder` with the stand-in called
    directly (no program, no files): what each program double must reproduce."""
    atoms = small_screw_cylinder(milady)
    ref = CachedQMCalculator.from_config({"engine": "reference"},
                                         tmp_path_factory.mktemp("direct") / "cache")
    relax(atoms, ref, milady.calculator(), BUFFER, optimizer="accelerated", fmax=0.02,
          log=None)
    return atoms


@pytest.mark.parametrize("name", ["vasp", "castep", "espresso"])
def test_qmml_relaxation_through_program_double(programs, milady, direct_relaxation, name):
    atoms = small_screw_cylinder(milady)
    cfg = engine_config(name, programs, kpts_line=4)
    qm = CachedQMCalculator.from_config(cfg, programs / "cache")
    stats = relax(atoms, qm, milady.calculator(), BUFFER, optimizer="accelerated",
                  fmax=0.02, log=None)
    assert stats.converged and stats.fmax <= 0.02
    assert 1 <= qm.n_real_calls <= 8 and qm.engine.n_restarts == qm.n_real_calls - 1
    # the same QM forces as the stand-in called directly, so the same result
    assert np.abs(atoms.positions - direct_relaxation.positions).max() < 2e-3
    assert engine_settings_hash(cfg) != engine_settings_hash({"engine": "reference"})


def test_neb_through_vasp_double(programs, milady):
    initial, final = glide_endpoints("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                     MILADY["C44"], radius=16.0, fixed_width=5.0)
    cylinder_region(initial, None, qm_radius=3.0, buffer_width=BUFFER, ml_cutoff=milady.cutoff)
    qm = CachedQMCalculator.from_config(engine_config("vasp", programs, kpts_line=4),
                                        programs / "cache")
    images, stats, profile = neb(initial, final, 3, qm, milady.calculator, BUFFER,
                                 optimizer="accelerated", fmax=0.05, log=None)
    assert stats.converged and len(images) == 3
    assert qm.n_real_calls >= 3 and np.isfinite(profile["barrier"])
    kpoints = (programs / "vasp-run" / "KPOINTS").read_text().splitlines()[3]
    assert kpoints.split() == ["1", "1", "4"]


def test_3d_defect_cluster_through_vasp_double_is_open_and_gamma_only(programs, milady):
    """A 3D defect's spherical QM cluster has no periodic direction: VASP gets vacuum on
    every side and Γ only, though the config asks for k-points along the line, and the
    QM/ML forces equal those with the stand-in called directly."""
    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=12.0, fixed_width=3.0, n_line=7)
    atoms = add_point_defect(atoms, "vacancy", 0.0)
    counts = sphere_region(atoms, None, 3.0, BUFFER, milady.cutoff)
    assert counts["QM"] >= 4
    qm = CachedQMCalculator.from_config(engine_config("vasp", programs, kpts_line=12),
                                        programs / "cache")
    direct = CachedQMCalculator.from_config({"engine": "reference"}, programs / "ref")
    through, reference = atoms.copy(), atoms.copy()
    through.calc = make_force_qmmm(through, qm, milady.calculator(), BUFFER)
    reference.calc = make_force_qmmm(reference, direct, milady.calculator(), BUFFER)
    forces = through.get_forces()
    assert qm.n_real_calls == 1 and len(qm.engine.last_input) < len(atoms)
    np.testing.assert_allclose(forces, reference.get_forces(), atol=1e-4)
    assert np.abs(forces[atoms.arrays["region"] == "QM"]).max() > 0.05  # not a trivial case
    run = programs / "vasp-run"
    assert (run / "KPOINTS").read_text().splitlines()[3].split() == ["1", "1", "1"]
    seen = read(run / "POSCAR", format="vasp")
    assert (open_vacuum(seen, [False] * 3) >= 10.0 - 1e-6).all()  # vacuum along z too


def test_vasp_example_config_writes_the_papers_input(programs):
    """config/examples/vasp.yaml's qm block, with the double as the command."""
    import yaml

    example = Path(__file__).resolve().parents[1] / "config" / "examples" / "vasp.yaml"
    qm = yaml.safe_load(example.read_text())["qm"]
    cfg = dict(qm, command=str(DOUBLES / "vasp_double"), directory=str(programs / "vasp-run"))
    make_qm_calculator(cfg).get_forces(slab_cluster())
    run = programs / "vasp-run"
    incar = dict(line.split(" = ") for line in (run / "INCAR").read_text().splitlines())
    assert (float(incar["ENCUT"]), incar["ISMEAR"], float(incar["SIGMA"]), incar["ISYM"],
            incar["GGA"]) == (550.0, "1", 0.1, "0", "PE")
    assert "BULK_KPTS" not in incar and "KPTS_LINE" not in incar and "VACUUM" not in incar
    assert (run / "KPOINTS").read_text().splitlines()[3].split() == ["1", "1", "12"]


def test_bulk_reference_and_relaxations_run_in_folders_of_their_own(programs, milady):
    """Concurrent jobs of one workflow share a working directory: each output gets its
    own run folder, and the bulk reference's strained cells never read another cell's
    WAVECAR (the double, like VASP with ISTART=1, refuses a WAVECAR of another system)."""
    from qmml.steps import qm_bulk_reference_file, relax_file
    from qmml.frames import write_output_frames

    cfg = {"engine": "vasp", "command": str(DOUBLES / "vasp_double")}
    ref = qm_bulk_reference_file({"qm_cell": 1}, cfg, programs / "cache",
                                 programs / "bulk" / "reference.json")
    assert ref["qm_calls"] >= 4 and ref["C11"] > ref["C12"] > 0 and 3.0 < ref["a0"] < 3.4
    bulk_run = programs / "vasp-run" / "bulk_reference.json"
    assert "ISTART = 0" in (bulk_run / "INCAR").read_text()

    atoms = dislocation_cylinder("screw111", MILADY["a0"], MILADY["C11"], MILADY["C12"],
                                 MILADY["C44"], radius=12.0, fixed_width=4.0)
    cylinder_region(atoms, None, qm_radius=2.0, buffer_width=BUFFER, ml_cutoff=milady.cutoff)
    write_output_frames(programs / "start.xyz", [atoms])
    relax_file(programs / "start.xyz", programs / "out" / "screw.xyz",
               potential_path("W_milady_lml"), cfg,
               programs / "cache", optimizer="FIRE", fmax=0.5, buffer=BUFFER, steps=3,
               require_convergence=False)
    relax_run = programs / "vasp-run" / "out_screw.xyz"
    assert len(read(relax_run / "POSCAR", format="vasp")) < len(atoms)
    assert sorted(p.name for p in (programs / "vasp-run").iterdir()) == [
        "bulk_reference.json", "out_screw.xyz"]
