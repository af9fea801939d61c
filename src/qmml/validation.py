"""Validation of an iteration's potential as a potential: its properties against the QM
reference the pipeline has, one table row per (property, case).

Rows (``validation.csv``: property, case, reference, value, error, relative_error,
source; error = value − reference):

* ``a0``, ``C11``, ``C12``, ``C44``: the potential's (``elastic.json``) vs the QM bulk
  targets (``qm_bulk/reference.json``; a number given in the config is the reference then);
* ``vacancy_formation_energy``, ``vacancy_migration_barrier``: the same procedure
  (:func:`vacancy_properties`) with the potential and with the QM engine, on the same
  small periodic cell, each model at its own lattice constant, so finite-size errors
  largely cancel in the comparison;
* ``peierls_barrier``: ML-only NEB of the potential between the ML-relaxed end states of
  a QM/ML glide NEB vs that NEB's virtual-work barrier (``neb_barrier_virtual_work``);
* ``path_barrier``, ``path_profile_rmse``: the potential's energy along the QM/ML NEB path
  itself vs the virtual-work profile (:mod:`qmml.path_energy`);
* ``screw_core``, ``screw_core_offset``: the core structure (easy / hard / split) of an
  ML-only relaxation vs the QM/ML one (:func:`core_type`), and the distance between the
  two fitted core centres;
* ``force_rmse_heldout``: force RMSE on the QM atoms of QM/ML frames no retraining saw
  (``heldout.xyz`` of force extraction); reference 0, relative error = RMSE / RMS force.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from qmml import QmmlError
from qmml.frames import free_mask
from qmml.ml_relax import ml_image, relax_ml

PathLike = str | Path
COLUMNS = ("property", "case", "reference", "value", "error", "relative_error", "source")
ELASTIC_KEYS = ("a0", "C11", "C12", "C44")
CORE_TYPES = ("easy", "hard", "split")
# radius (Å) around the built core position inside which atoms fit the core centre: the
# first ~3 neighbour shells of columns carry the core's position, farther ones only the
# (fixed) elastic field
CORE_FIT_RADIUS = 10.0


def row(prop: str, case: str, reference, value, source: str) -> dict:
    """One table row; error and relative error for numeric reference and value."""
    numeric = all(isinstance(x, (int, float, np.floating)) and not isinstance(x, bool)
                  for x in (reference, value))
    if numeric:
        reference, value = float(reference), float(value)
        error = value - reference
        relative = error / abs(reference) if reference != 0 else float("nan")
    else:
        error = float(reference != value)
        relative = float("nan")
    return {"property": prop, "case": case, "reference": reference, "value": value,
            "error": error, "relative_error": relative, "source": source}


# ---- elastic ---------------------------------------------------------------------------
def elastic_rows(elastic: dict, reference: dict, source: str = "elastic.json vs "
                 "qm_bulk/reference.json") -> list[dict]:
    return [row(k, "bulk", float(reference[k]), float(elastic[k]), source)
            for k in ELASTIC_KEYS]


# ---- vacancy ---------------------------------------------------------------------------
def vacancy_properties(calc: Calculator, a0: float, n_cells: int = 2, fmax: float = 0.01,
                       steps: int = 200, symbol: str = "W") -> dict:
    """Vacancy formation energy and migration barrier (eV) of ``calc`` in a periodic
    n×n×n conventional bcc cell of lattice constant ``a0`` (fixed cell, relaxed atoms).

    E_f = E(vacancy) − (N−1)/N · E(perfect).  The saddle of a nearest-neighbour hop is
    found by symmetry: the midpoint of the hop is an inversion centre of the configuration
    with the hopping atom there, so the force on that atom vanishes and holding it at the
    midpoint while the others relax gives a stationary point of the full energy (the
    saddle of the single-hump bcc path): E_m = E(saddle) − E(vacancy).
    """
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    from qmml.constraints import relax_or_fail
    from qmml.elastic import bcc_cell

    perfect = bcc_cell(a0, n_cells, symbol)
    n = len(perfect)
    perfect.calc = calc
    e_perfect = float(perfect.get_potential_energy())
    # site 0 at the origin, its [111] neighbour at the body centre of the first cell
    hopper = int(np.argmin(np.linalg.norm(perfect.positions - a0 / 2, axis=1)))
    vacancy = perfect.copy()
    del vacancy[0]
    vacancy.calc = calc
    steps_vacancy = relax_or_fail(vacancy, fmax, steps, "vacancy", BFGS)
    e_vacancy = float(vacancy.get_potential_energy())
    saddle = perfect.copy()
    saddle.positions[hopper] = a0 / 4 * np.ones(3)
    del saddle[0]
    saddle.set_constraint(FixAtoms(indices=[hopper - 1]))
    saddle.calc = calc
    steps_saddle = relax_or_fail(saddle, fmax, steps, "vacancy saddle", BFGS)
    e_saddle = float(saddle.get_potential_energy())
    return {"formation_energy": e_vacancy - (n - 1) / n * e_perfect,
            "migration_barrier": e_saddle - e_vacancy, "a0": float(a0), "n_cells": n_cells,
            "n_atoms": n - 1, "fmax": fmax, "steps_vacancy": steps_vacancy,
            "steps_saddle": steps_saddle}


def vacancy_rows(ml: dict, qm: dict, source: str) -> list[dict]:
    return [row("vacancy_formation_energy", "bulk", qm["formation_energy"],
                ml["formation_energy"], source),
            row("vacancy_migration_barrier", "bulk", qm["migration_barrier"],
                ml["migration_barrier"], source)]


# ---- screw core ------------------------------------------------------------------------
def fit_core_center(relaxed: Atoms, structure: Atoms,
                    radius: float = CORE_FIT_RADIUS) -> np.ndarray:
    """Core centre (x, y) of a ½⟨111⟩ screw: the centre of the screw field
    u_z = b/(2π)·atan2(y − y_c, x − x_c) (exact for a screw along a threefold axis of a
    cubic crystal) best fitting the displacements, from the perfect lattice sites of the
    unrelaxed ``structure`` (``qmml.structures.perfect_sites``), of the free atoms within
    ``radius`` of the built core position (displacements wrapped modulo b)."""
    from scipy.optimize import least_squares

    from qmml.structures import perfect_sites

    if structure.info.get("kind") != "screw111":
        raise QmmlError(f"core fit: structure kind {structure.info.get('kind')!r} is not "
                        "screw111")
    if len(relaxed) != len(structure):
        raise QmmlError("core fit: relaxed and unrelaxed structures hold different atoms")
    sites, _ = perfect_sites(structure)
    core = np.asarray(structure.info["core_position"], float)
    b = float(np.asarray(structure.info["burgers"], float)[2])
    free = free_mask(structure)
    near = free & (np.linalg.norm(sites[:, :2] - core, axis=1) < radius)
    xy, uz = sites[near, :2], relaxed.positions[near, 2] - sites[near, 2]

    def residual(c):
        d = uz - b / (2 * np.pi) * np.arctan2(xy[:, 1] - c[1], xy[:, 0] - c[0])
        return d - b * np.round(d / b)

    return least_squares(residual, core, x_scale=0.1).x


def core_sites(structure: Atoms, point: Sequence[float]) -> dict[str, float]:
    """Distances (Å) from ``point`` to the nearest site of each core type.

    In the [111] projection the atomic columns form a triangular lattice; triangle centres
    come in two orientations.  The built core sits at an easy-core centre (matscipy places
    the ½⟨111⟩ screw at the centroid of an easy triangle); easy centres are that centre
    plus lattice translations, hard centres its images under inversion through a column,
    and a core centred on a column is the split (degenerate) core."""
    from qmml.structures import perfect_sites

    sites, _ = perfect_sites(structure)
    core = np.asarray(structure.info["core_position"], float)
    columns = np.unique(np.round(sites[np.isfinite(sites).all(axis=1), :2], 4), axis=0)
    columns = columns[np.linalg.norm(columns - core, axis=1) < CORE_FIT_RADIUS + 5.0]
    anchor = columns[np.argmin(np.linalg.norm(columns - core, axis=1))]
    shift = core - anchor
    point = np.asarray(point, float)
    return {"easy": float(np.linalg.norm(columns + shift - point, axis=1).min()),
            "hard": float(np.linalg.norm(columns - shift - point, axis=1).min()),
            "split": float(np.linalg.norm(columns - point, axis=1).min())}


def core_type(relaxed: Atoms, structure: Atoms) -> tuple[str, np.ndarray, dict]:
    """(easy / hard / split, fitted centre, distances to each site type): the type whose
    nearest site is closest to the fitted core centre (:func:`fit_core_center`)."""
    centre = fit_core_center(relaxed, structure)
    distances = core_sites(structure, centre)
    return min(distances, key=distances.get), centre, distances


def ml_relaxed(structure: Atoms, calc: Calculator, fmax: float = 0.01, steps: int = 500
               ) -> Atoms:
    """``structure`` relaxed with the ML calculator ``calc`` alone (its fix_mask held)."""
    atoms = ml_image(structure)
    relax_ml(atoms, calc, fmax, steps)
    return atoms


def core_rows(case: str, ml: Atoms, qmml: Atoms, structure: Atoms, source: str) -> list[dict]:
    ml_type, ml_centre, _ = core_type(ml, structure)
    qm_type, qm_centre, _ = core_type(qmml, structure)
    return [row("screw_core", case, qm_type, ml_type, source),
            {**row("screw_core_offset", case, 0.0,
                   float(np.linalg.norm(ml_centre - qm_centre)), source),
             "relative_error": float("nan")}]


# ---- glide path and Peierls barrier ----------------------------------------------------
def path_energy_rows(case: str, images: Sequence[Atoms], calc: Calculator, source: str
                     ) -> list[dict]:
    """The ML calculator's energy along the QM/ML path vs the virtual-work profile."""
    from qmml.path_energy import ordered_images, virtual_work_energies

    images = ordered_images(images, source)
    reference = virtual_work_energies(images)
    energies = []
    for image in images:
        probe = Atoms(image.numbers, image.positions, cell=image.cell, pbc=image.pbc)
        probe.calc = calc
        energies.append(float(probe.get_potential_energy()))
    ml = np.array(energies) - energies[0]
    rmse = float(np.sqrt(np.mean((ml - reference) ** 2)))
    return [row("path_barrier", case, float(reference.max()), float(ml.max()), source),
            {**row("path_profile_rmse", case, 0.0, rmse, source),
             "relative_error": rmse / float(reference.max())}]


def ml_neb_profile(initial: Atoms, final: Atoms, calc: Calculator, n_images: int,
                   fmax: float = 0.05, steps: int = 300, relax_ends: bool = True,
                   ) -> tuple[np.ndarray, np.ndarray, bool]:
    """ML-only NEB (ASE, SNAP energies) between two end states; fixed atoms from fix_mask.

    With `relax_ends` the end states are first relaxed with the same potential (they are
    QM/ML minima, not ML ones).  Every image is evaluated by the one ML calculator
    ``calc`` (a LAMMPS instance, positions swapped in place), and the band is moved by ASE's
    ODE12r NEB optimiser: it evaluates the band once per trial step, where ASE's FIRE
    asks for the forces three times per step (each a full band evaluation with a shared
    calculator), and it took fewer evaluations than FIRE on glide paths
    (docs/performance.md).  Returns (s = normalised path length, E − E_initial in eV,
    converged).
    """
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.mep import NEB
    from ase.mep.neb import NEBOptimizer

    ends = [ml_image(initial), ml_image(final)]
    if relax_ends:
        for end in ends:
            relax_ml(end, calc, 0.01, steps)
    images = [ends[0]] + [ends[0].copy() for _ in range(n_images - 2)] + [ends[1]]
    for im in images[1:-1]:
        im.set_constraint(ends[0].constraints)
        im.calc = calc
    for end in ends:  # evaluated once: the band reads their energies at every step
        end.calc = calc
        end.calc = SinglePointCalculator(end, energy=end.get_potential_energy(),
                                         forces=end.get_forces(apply_constraint=False))
    band = NEB(images, k=0.1, method="improvedtangent", allow_shared_calculator=True)
    band.interpolate(method="linear")
    converged = bool(NEBOptimizer(band, method="ODE", logfile=None).run(fmax=fmax,
                                                                       steps=steps))
    # the band's energies of its last evaluation: ODE12r never moves the band without
    # evaluating it (reading each image's energy again would rerun the shared calculator)
    energy = np.array(band.energies)
    steps_len = [np.linalg.norm(b.positions - a.positions) for a, b in zip(images, images[1:])]
    s = np.concatenate([[0.0], np.cumsum(steps_len)])
    return s / s[-1], energy - energy[0], converged


def peierls_profile(images: Sequence[Atoms], calc: Calculator, source: str) -> dict:
    """The potential's ML-only NEB between the end states of the QM/ML NEB ``images``
    (same number of images, end states relaxed with the potential): {"s", "energy" (eV,
    from the initial state), "barrier", "converged", "qmml_barrier" (the QM/ML NEB's
    virtual-work barrier), "source"}."""
    if "neb_barrier_virtual_work" not in images[-1].info:
        raise QmmlError(f"{source}: info 'neb_barrier_virtual_work' missing (not a qmml "
                        "neb output)")
    s, energy, converged = ml_neb_profile(images[0], images[-1], calc, len(images))
    return {"s": s.tolist(), "energy": energy.tolist(), "barrier": float(energy.max()),
            "converged": converged,
            "qmml_barrier": float(images[-1].info["neb_barrier_virtual_work"]),
            "source": source}


def peierls_rows(case: str, profile: dict) -> list[dict]:
    """ML-only NEB barrier vs the QM/ML NEB's virtual-work barrier (a
    :func:`peierls_profile`)."""
    return [row("peierls_barrier", case, profile["qmml_barrier"], profile["barrier"],
                profile["source"] + ("" if profile["converged"] else
                                     " (ML NEB not converged)"))]


# ---- held-out frames -------------------------------------------------------------------
def heldout_rows(label: str, frames: Sequence[Atoms], potential, source: str) -> list[dict]:
    from qmml.extract import qm_atom_forces

    if not frames:
        return []
    ref, ml = qm_atom_forces(frames, potential, source)
    rmse = float(np.sqrt(np.mean((ml - ref) ** 2)))
    rms = float(np.sqrt(np.mean(ref ** 2)))
    return [{**row("force_rmse_heldout", label, 0.0, rmse, source),
             "relative_error": rmse / rms if rms > 0 else float("nan")}]


def table(rows: Sequence[dict]):
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(COLUMNS))
