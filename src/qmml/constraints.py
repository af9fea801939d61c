"""Constraint sets for retraining, all computed with the starting potential Θ0 (method.md).

* ``strain_set``: hard-constraint configurations, 6 homogeneous strain modes × 17 strains
  of a 5×5×5 bcc cell (250 atoms) at Θ0's own zero-pressure lattice constant a0.
* ``vacancy_neb``: hard-constraint configurations, the 13 images of a nearest-neighbour
  vacancy hop relaxed by (climbing-image) NEB with Θ0; keeps the vacancy energetics.
* ``md_snapshots``: soft-constraint configurations, snapshots of NVE MD with Θ0 started
  at 2T (equipartition brings the crystal to ~T).

Each set is written as one extxyz file (positions, cell, pbc, info only: retraining
recomputes descriptors, energies and forces from the configurations).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_masses, atomic_numbers
from ase.optimize.ode import ODE12r

from qmml import QmmlError
from qmml.elastic import bcc_cell, zero_pressure_a0
from qmml.io import write_frames
from qmml.potential import SNAPPotential


def _shear(a, b) -> np.ndarray:
    """S = (a bᵀ + b aᵀ) / (2|a||b|): symmetric; a = b gives the uniaxial mode a aᵀ/|a|²."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (np.outer(a, b) + np.outer(b, a)) / (2 * np.linalg.norm(a) * np.linalg.norm(b))


# The six strain modes of method.md, F = I + ε S.  The hydrostatic mode is taken literally
# as S = I/3 (tr S = 1: ε is then the volumetric strain to first order, not the linear one).
STRAIN_MODES: dict[str, np.ndarray] = {
    "hydrostatic": np.eye(3) / 3,
    "uniaxial_100": _shear([1, 0, 0], [1, 0, 0]),
    "uniaxial_111": _shear([1, 1, 1], [1, 1, 1]),
    "shear_100_010": _shear([1, 0, 0], [0, 1, 0]),
    "shear_110_001": _shear([1, 1, 0], [0, 0, 1]),
    "shear_110_1-12": _shear([1, 1, 0], [1, -1, 2]),
}


def bcc_supercell(a0: float, n_cells: int, element: str = "W") -> Atoms:
    """n_cells³ conventional bcc cells (2 n_cells³ atoms), cubic axes, periodic."""
    if n_cells < 1:
        raise QmmlError(f"n_cells must be >= 1, got {n_cells}")
    return bcc_cell(a0, n_cells, element)


def _element(potential: SNAPPotential) -> str:
    if len(potential.elements) != 1:
        raise QmmlError("constraint sets need a single-element potential, "
                        f"got {potential.elements}")
    return potential.elements[0]


def lattice_constant(potential: SNAPPotential, zbl: tuple[float, float] | None = None,
                     guess: float = 3.2, xtol: float = 1e-9) -> float:
    """Zero-pressure bcc lattice constant of ``potential`` (Å), the energy minimum vs a."""
    return zero_pressure_a0(potential.calculator(zbl=zbl), guess, _element(potential), n=1,
                            xtol=xtol)


def strain_set(potential: SNAPPotential, a0: float | None = None, n_cells: int = 5,
               n_strains: int = 17, max_strain: float = 0.01,
               zbl: tuple[float, float] | None = None) -> list[Atoms]:
    """6 modes × n_strains homogeneously strained bcc cells, F = I + ε S (method.md).

    ε runs over ``linspace(-max_strain, max_strain, n_strains)``; positions and cell
    vectors map as x → F x.  info: ``mode``, ``strain`` (ε), ``a0``.
    """
    if n_strains < 1 or not max_strain >= 0:
        raise QmmlError(f"need n_strains >= 1 and max_strain >= 0 "
                        f"(got {n_strains}, {max_strain})")
    if a0 is None:
        a0 = lattice_constant(potential, zbl=zbl)
    reference = bcc_supercell(a0, n_cells, _element(potential))
    configs = []
    for mode, S in STRAIN_MODES.items():
        for eps in np.linspace(-max_strain, max_strain, n_strains):
            F = np.eye(3) + eps * S
            atoms = reference.copy()
            # rows of cell/positions are vectors v, and v → F v is v_row @ Fᵀ
            atoms.set_cell(reference.cell.array @ F.T, scale_atoms=True)
            atoms.info.update(set="strain", mode=mode, strain=float(eps), a0=float(a0))
            configs.append(atoms)
    return configs


def relax_or_fail(atoms: Atoms, fmax: float, max_steps: int, what: str,
                  optimizer=ODE12r) -> int:
    """Relax ``atoms`` (its calculator) to ``fmax``; the step count, or a one-line QmmlError
    naming ``what`` when ``max_steps`` run out.  ODE12r by default: adaptive force-only
    steps, far fewer force calls than FIRE on these cells."""
    opt = optimizer(atoms, logfile=None)
    if not opt.run(fmax=fmax, steps=max_steps):
        f = np.linalg.norm(atoms.get_forces(), axis=1).max()
        raise QmmlError(f"{what}: not relaxed to fmax {fmax} eV/Å in {max_steps} "
                        f"{optimizer.__name__} steps (max force {f:.3g} eV/Å)")
    return opt.nsteps


def vacancy_neb(potential: SNAPPotential, a0: float | None = None, n_cells: int = 5,
                n_images: int = 13, fmax: float = 0.01, climb: bool = True,
                max_steps: int = 2000, zbl: tuple[float, float] | None = None) -> list[Atoms]:
    """Images of a nearest-neighbour vacancy hop (a0√3/2 along [111]) relaxed by NEB with Θ0.

    Endpoints: a vacancy in a fixed n_cells³ bcc cell (2n³ − 1 atoms), relaxed with FIRE;
    the final one has the neighbour moved into the vacant site.  Intermediate images start
    on the straight line and are relaxed by climbing-image NEB (improved tangent, ASE's
    adaptive ODE optimiser, to ``fmax``), each
    with its own LAMMPS instance.  info: ``image``, ``e_theta0`` (eV, relative energies give
    the path), ``barrier`` (eV), ``a0``.
    """
    from ase.mep import NEB
    from ase.mep.neb import NEBOptimizer

    if n_images < 3:
        raise QmmlError(f"vacancy NEB needs n_images >= 3 (got {n_images})")
    if n_cells < 2:
        raise QmmlError(f"vacancy NEB needs n_cells >= 2 (got {n_cells})")
    if a0 is None:
        a0 = lattice_constant(potential, zbl=zbl)
    perfect = bcc_supercell(a0, n_cells, _element(potential))
    # vacancy near the centre so the hop does not cross the periodic boundary
    centre = perfect.cell.array.sum(axis=0) / 2
    vacancy = int(np.argmin(np.linalg.norm(perfect.positions - centre, axis=1)))
    hop_vector = a0 / 2 * np.ones(3)
    target = perfect.positions[vacancy] + hop_vector
    hopper = int(np.argmin(np.linalg.norm(perfect.positions - target, axis=1)))
    vacant_site = perfect.positions[vacancy].copy()

    initial = perfect.copy()
    del initial[vacancy]
    hopper -= hopper > vacancy
    final = initial.copy()
    final.positions[hopper] = vacant_site

    endpoints = []
    for atoms, name in ((initial, "initial"), (final, "final")):
        atoms.calc = potential.calculator(zbl=zbl)
        relax_or_fail(atoms, fmax=min(fmax, 1e-3), max_steps=max_steps,
                      what=f"vacancy NEB {name} state")
        # freeze the relaxed endpoint: NEB only needs its energy, so no LAMMPS instance stays
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        endpoints.append(atoms)

    images = [endpoints[0]]
    for _ in range(n_images - 2):
        image = endpoints[0].copy()
        image.calc = potential.calculator(zbl=zbl)
        images.append(image)
    images.append(endpoints[1])
    neb = NEB(images, climb=climb, method="improvedtangent")
    neb.interpolate()
    # the adaptive ODE solver converged in ~10 steps where FIRE needed ~100 (3x3x3 cell)
    opt = NEBOptimizer(neb, method="ode", logfile=None)
    if not opt.run(fmax=fmax, steps=max_steps):
        raise QmmlError(f"vacancy NEB: not converged to fmax {fmax} eV/Å in {max_steps} steps")
    energies = np.array([im.get_potential_energy() for im in images])
    barrier = float(energies.max() - energies[0])

    out = []
    for i, (image, energy) in enumerate(zip(images, energies)):
        atoms = Atoms(image.get_chemical_symbols(), positions=image.positions,
                      cell=image.cell, pbc=image.pbc)
        atoms.info.update(set="vacancy_neb", image=i, e_theta0=float(energy),
                          barrier=barrier, a0=float(a0), neb_steps=int(opt.nsteps))
        out.append(atoms)
    return out


def md_snapshots(potential: SNAPPotential, temperatures=(300.0, 1000.0, 3000.0),
                 n_steps: int = 200, timestep_fs: float = 1.0, n_snapshots: int = 10,
                 n_cells: int = 5, a0: float | None = None, seed: int = 20231,
                 zbl: tuple[float, float] | None = None) -> list[Atoms]:
    """Snapshots of NVE MD with Θ0, one run per temperature T, started at 2T (method.md).

    The runs go through LAMMPS directly (``velocity create`` at 2T, ``fix nve``), not ASE MD.
    ``n_snapshots`` per run, evenly spaced, the last at ``n_steps`` (step 0, the perfect
    lattice, has no forces and is left out).  Deterministic for a given seed
    (``loop geom``).  info: ``temperature`` (instantaneous, K), ``target_temperature``,
    ``step``, ``etotal_drift`` (max |E_tot(t) − E_tot(0)| per atom so far, eV).
    """
    from qmml.lmp import new_lammps

    temperatures = [float(t) for t in temperatures]
    bad = [t for t in temperatures if not (t > 0 and math.isfinite(t))]
    if bad:
        raise QmmlError(f"MD temperatures must be positive, got {bad[0]:g} K")
    if not 1 <= n_snapshots <= n_steps:
        raise QmmlError(f"need 1 <= n_snapshots <= n_steps (got {n_snapshots}, {n_steps})")
    if not timestep_fs > 0:
        raise QmmlError(f"MD timestep must be positive, got {timestep_fs} fs")
    if a0 is None:
        a0 = lattice_constant(potential, zbl=zbl)
    element = _element(potential)
    mass = atomic_masses[atomic_numbers[element]]
    snap_steps = np.unique(np.rint(np.linspace(n_steps / n_snapshots, n_steps, n_snapshots))
                           .astype(int))
    snapshots = []
    with tempfile.TemporaryDirectory(prefix="qmml-md-") as tmp:
        prefix = potential.write(Path(tmp) / "pot")
        for k, T in enumerate(temperatures):
            lmp = new_lammps()
            try:
                lmp.commands_list([
                    "boundary p p p",
                    f"lattice bcc {a0:.16g}",
                    f"region box block 0 {n_cells} 0 {n_cells} 0 {n_cells}",
                    "create_box 1 box",
                    "create_atoms 1 box",
                    f"mass 1 {mass:.6f}",
                    *potential.pair_commands(prefix, [element], zbl),
                    "neighbor 1.0 bin",
                    "neigh_modify every 1 delay 0 check yes",
                    f"velocity all create {2 * T:.10g} {seed + 7919 * k} "
                    "mom yes rot no dist gaussian loop geom",
                    "fix nve all nve",
                    f"timestep {timestep_fs * 1e-3:.10g}",  # metal units: ps
                    "thermo_style custom step temp pe ke etotal",
                    "run 0",
                ])
                n = lmp.get_natoms()
                e0 = lmp.get_thermo("etotal")
                length = a0 * n_cells
                drift = 0.0
                wanted = set(int(s) for s in snap_steps)
                for done in range(1, n_steps + 1):
                    # one step per run call so the energy drift is checked at every step
                    # (the call overhead is small next to a SNAP step)
                    lmp.command("run 1 pre no post no")
                    drift = max(drift, abs(lmp.get_thermo("etotal") - e0) / n)
                    if done not in wanted:
                        continue
                    ids = lmp.numpy.extract_atom("id")[:n]
                    x = np.empty((n, 3))
                    x[ids - 1] = lmp.numpy.extract_atom("x")[:n]
                    atoms = Atoms([element] * n, positions=x, cell=np.eye(3) * length, pbc=True)
                    atoms.wrap()
                    atoms.info.update(set="md", target_temperature=T,
                                      temperature=float(lmp.get_thermo("temp")),
                                      step=done, time_fs=done * timestep_fs,
                                      etotal_drift=float(drift), a0=float(a0), seed=int(seed))
                    snapshots.append(atoms)
            finally:
                lmp.close()
    return snapshots


# ---- files ------------------------------------------------------------------------------
def write_set(path: str | Path, configs: list[Atoms]) -> Path:
    """A constraint set as one extxyz file (positions, cell, info only), atomically."""
    return write_frames(path, [Atoms(a.get_chemical_symbols(), a.positions, cell=a.cell,
                                     pbc=a.pbc, info=dict(a.info)) for a in configs])
