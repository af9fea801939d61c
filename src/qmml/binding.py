"""Binding energies of point defects to a dislocation from QM/ML forces (virtual work).

E_b(d) = E(dislocation + X far) − E(dislocation + X at distance d); positive = attraction
(method.md, step 5).  Force mixing has no total energy, so QM/ML energy differences come
from the virtual work along a path (Swinburne & Kermode, PRB 96, 144102, 2017).  For two
relaxed states A and B (same atoms, mapped as below) and the straight path
X(s) = A + s·D, D = B − A::

    E(A) − E(B) = ∫ F·dX = ∫₀¹ F(s)·D ds      (free atoms; Simpson on an odd number of
                                               equally spaced images, trapezoid otherwise)

Chains.  The configured distances of a defect are ordered (:func:`reference_index`); the
path of distance k starts from the NEXT FARTHER configured distance (for two distances:
from the far one), and :func:`binding_table` sums the segments up to the farthest state, so
E_b(k) = Σ segments and E_b(far) = 0 exactly.  Closely spaced distances therefore keep
each straight path short (see the caveats).

Atom correspondence.  Both end states are built (``qmml build`` / :func:`add_point_defect`)
from the same dislocation cylinder, so every host atom not next to either defect sits at
the same unrelaxed position in both: those atoms are paired by position.  What is left over
is paired by species at minimum total distance.  For a vacancy this means: in A the
vacancy is at the far site f and the near site n is occupied; in B it is the reverse.
The one atom that sits on n in A is mapped to the atom on f in B, so exactly ONE atom
moves (straight from n to f, filling the far vacancy and opening the near one) while all
other atoms only relax.  He (interstitial or in vacancies) is paired the same way.

QM region of the path (:func:`path_region`): the union of the QM spheres of both end
configurations (every atom within ``qm_radius`` of the far or the near defect centre, in A
or in B), plus every atom within ``qm_radius`` of a moving atom (end-to-end displacement
> 1.5 Å) in any image, so the moving atom and the atoms it passes are QM all along; fixed
along the path.  The buffer is the union over images of the atoms within ``buffer_width``
of a QM atom.  QM/ML forces use ASE ``ForceQMMM`` (zero mean force, as in the
relaxations) through the shared QM cache, so a rerun makes no new QM call.

Error estimate.  The same integral with ML-only forces is compared with the exact ML
energy difference E_ML(A) − E_ML(B) of the same images: the discrepancy
(``E_b_qmml_path_error``) measures the quadrature error of this path and image count.
It is an indicator, not a bound: on a one-hop screw-core vacancy path (stand-in QM) 7
images gave E_b = 0.033 eV with an ML error of 0.040 eV, 13 images 0.119 eV with 0.002 eV;
use ≥ 13 images for a one-hop path.
The ML-only binding energy (``E_b_ml``) is separate: both end states relaxed with the ML
potential alone (fixed shell), E_ML(A') − E_ML(B').  It is NaN for defects with
species the ML potential does not know (He): the ML potential gives He no interaction.

Caveats (read before trusting a number):

* Force mixing is not conservative: the forces are not the gradient of any energy, so the
  virtual work depends on the path, not only on the end states.  A fixed QM region along
  the path (as here) keeps the integrand continuous but not path independent; the
  ML error estimate says nothing about this non-conservative part.
* For distant sites the straight path drags the moving atom (a W for a vacancy, the He for
  He defects) through the lattice, close to other atoms: the integrand becomes large and
  spiky and the quadrature error explodes.  Measured (screw, W_milady_lml, reference
  stand-in as QM): a 4.7 Å straight vacancy jump has integrand values of ±500 eV and
  gave E_b = −18.6 eV with 5 images, −8.5 eV with 9, 0.002 eV with 17 (ML error estimate
  2.3 eV with 5 images); a one-hop (2.7 Å) path needs ~9-13 images for 1e-3 eV.
  ``path_max_step`` (the largest single-atom displacement between the end states, Å)
  flags this: above about one nearest-neighbour distance (√3/2·a0 ≈ 2.76 Å in W),
  configure intermediate distances one lattice hop apart (the chain sums them) and check
  ``E_b_qmml_path_error``.  A path whose moving atoms pass closer to another atom than
  ``CLOSEST_APPROACH_RATIO`` of their closest approach in the end states is refused
  before any QM call (:func:`check_path_clears_atoms`).
* The ML-only end states start from the QM/ML-relaxed ones, so both methods compare the
  same basins.  A vacancy in the screw core has several minima: ML relaxations of the
  same core vacancy started from the unrelaxed (elastic-field) structure gave
  E_b = 0.52 eV, started from the stand-in QM/ML state 0.18 eV (small test cylinder).
* The far state is at a finite distance in a finite cylinder: E_b is relative to it, not
  to infinity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from qmml import QmmlError
# scipy and ase.constraints (which loads scipy through ase.spacegroup, ~0.5 s) are imported
# where they are used: the workflow imports this module for reference_index on every parse
from qmml.frames import fixed_mask, free_mask
from qmml.ml_relax import ml_image, relax_ml
from qmml.regions import HOST, _periodic_delta, assign_regions

MATCH_TOLERANCE = 1e-3   # Å: unrelaxed positions of the same atom in both end states
# eV/Å: ML-only end-state relaxations.  The energy error of a state relaxed to fmax is
# ~ Σ F²/2k over the few atoms still near fmax (k ~ 10 eV/Å²): ≪ 1 meV at 5e-3.
ML_FMAX = 5e-3
ML_STEPS = 5000
# Å: end-to-end displacement above which an atom "moves" (hops, ≥ ~2.5 Å); relaxation
# shifts stay below: ~0.1-0.3 Å near point defects, up to ~1 Å for screw-core atoms (b/3)
MOVING_THRESHOLD = 1.5
# a straight path whose moving atoms come closer to another atom than this fraction of
# their closest approach in the end states runs through the lattice: its virtual work is
# meaningless (a 5.8 Å vacancy jump, ratio 0.13, gave E_b = -4025 eV with the
# ZBL-screened stand-in).  Measured on W screw cores: one vacancy hop 0.84-0.92; the
# example configs' He paths 0.50 (He2V1, its atoms pass each other) to 0.74 (He_tet, two
# to three tetrahedral hops), in the grey zone that path_max_step and
# E_b_qmml_path_error flag
CLOSEST_APPROACH_RATIO = 0.35
# info keys of the path frames that binding_table() turns into columns
SUMMARY_KEYS = ("defect_name", "defect", "dislocation_name", "distance_requested",
                "distance", "distance_index", "reference_index", "E_b_qmml", "E_b_qmml_path_error", "E_b_ml", "E_b_ml_path",
                "E_b_ml_path_exact", "qm_calls", "qm_calls_new", "engine", "path_max_step",
                "path_images", "integration")


# ---- geometry ------------------------------------------------------------------------
def atom_correspondence(a: Atoms, b: Atoms, tolerance: float = MATCH_TOLERANCE) -> np.ndarray:
    """Permutation ``perm`` such that atom ``perm[i]`` of `b` is atom ``i`` of `a`.

    `a` and `b` are UNRELAXED end states built from the same cylinder (see module
    docstring).  Atoms at the same position (minimum image along periodic axes, within
    `tolerance` Å) are the same atom; the remaining atoms of each species are paired at
    minimum total distance.
    """
    from scipy.optimize import linear_sum_assignment

    if len(a) != len(b):
        raise QmmlError(f"end states: {len(a)} vs {len(b)} atoms; the two defect "
                        "configurations must hold the same atoms")
    if sorted(a.numbers) != sorted(b.numbers):
        raise QmmlError("end states: different species counts; the two defect "
                        "configurations must hold the same atoms")
    if not np.allclose(a.cell, b.cell) or list(a.pbc) != list(b.pbc):
        raise QmmlError("end states: different cells; build both from the same cylinder")
    perm = np.full(len(a), -1)
    for number in np.unique(a.numbers):
        ia, ib = np.flatnonzero(a.numbers == number), np.flatnonzero(b.numbers == number)
        distance, nearest = _nearest(b.positions[ib], a.positions[ia], a)
        hit = distance < tolerance
        # mutual uniqueness: two atoms of a cannot claim one atom of b
        if len(np.unique(nearest[hit])) != hit.sum():
            raise QmmlError(f"end states: atoms closer than {tolerance} Å to each other")
        perm[ia[hit]] = ib[nearest[hit]]
        left_a, left_b = ia[~hit], np.setdiff1d(ib, ib[nearest[hit]])
        if len(left_a):
            cost = np.linalg.norm(_periodic_delta(
                b.positions[left_b][None] - a.positions[left_a][:, None], a), axis=2)
            rows, cols = linear_sum_assignment(cost)
            perm[left_a[rows]] = left_b[cols]
    unmatched = int((np.linalg.norm(_periodic_delta(b.positions[perm] - a.positions, a),
                                    axis=1) >= tolerance).sum())
    if unmatched > max(12, len(a) // 20):
        raise QmmlError(f"end states: {unmatched} atoms have no partner at the same "
                        "unrelaxed position; build both from the same cylinder (same "
                        "potential, radius, n_line)")
    return perm


def _nearest(points: np.ndarray, queries: np.ndarray, atoms: Atoms):
    """Nearest of `points` to each query, periodic along the periodic axes of `atoms`."""
    from scipy.spatial import cKDTree

    lo = np.minimum(points.min(axis=0), queries.min(axis=0))
    span = np.maximum(points.max(axis=0), queries.max(axis=0)) - lo
    box = np.where(atoms.pbc, np.diag(atoms.cell), 4.0 * span + 10.0)
    shift = lambda x: np.where(atoms.pbc, np.mod(x, box), x - lo)  # noqa: E731
    tree = cKDTree(shift(points), boxsize=box)
    return tree.query(shift(queries))


def displacement(a: Atoms, b_mapped: Atoms) -> np.ndarray:
    """B − A per atom, minimum image along periodic axes (relaxation ≪ half the cell)."""
    return _periodic_delta(b_mapped.positions - a.positions, a)


def linear_images(a: Atoms, b_mapped: Atoms, n_images: int) -> list[Atoms]:
    """`n_images` equally spaced images A + s·D, s = 0 … 1 (end points included)."""
    d = displacement(a, b_mapped)
    images = []
    for s in np.linspace(0.0, 1.0, n_images):
        image = Atoms(a.numbers, a.positions + s * d, cell=a.cell, pbc=a.pbc)
        image.arrays["fix_mask"] = fixed_mask(a).copy()
        images.append(image)
    return images


def path_region(images: list[Atoms], centres: list, qm_radius: float, buffer_width: float,
                ml_cutoff: float, moving_threshold: float = MOVING_THRESHOLD
                ) -> tuple[np.ndarray, dict[str, int]]:
    """Region array fixed along the path; checked (regions.assign_regions) on every image.

    QM = atoms within `qm_radius` of a defect centre (`centres`: far and near) in either
    end image, plus atoms within `qm_radius` of a *moving* atom (one displaced more than
    `moving_threshold` Å between the ends) in any image, so that the atoms it passes are
    QM as well (otherwise an ML neighbour pushes back with a different force than the QM
    moving atom feels, and the virtual work picks up large non-conservative terms).
    Buffer = union over images of the atoms within `buffer_width` of a QM atom.
    """
    a, b = images[0], images[-1]
    qm = np.zeros(len(a), bool)
    for end in (a, b):
        for centre in centres:
            qm |= np.linalg.norm(_periodic_delta(end.positions - np.asarray(centre, float),
                                                 end), axis=1) <= qm_radius
    moving = np.linalg.norm(_periodic_delta(b.positions - a.positions, a), axis=1) \
        > moving_threshold
    qm |= moving
    for image in images:
        for position in image.positions[moving]:
            qm |= np.linalg.norm(_periodic_delta(image.positions - position, image),
                                 axis=1) <= qm_radius
    buffered = qm.copy()
    for image in images:
        checked = image.copy()
        # raises on any violation, fixed atoms in the QM/buffer region included
        assign_regions(checked, qm, buffer_width, ml_cutoff)
        buffered |= checked.arrays["region"] != "MM"
    region = np.full(len(qm), "MM", dtype="<U6")
    region[buffered & ~qm] = "buffer"
    region[qm] = "QM"
    return region, {name: int((region == name).sum()) for name in ("QM", "buffer", "MM")}


def check_path_clears_atoms(a: Atoms, d: np.ndarray, what: str, samples: int = 41) -> None:
    """QmmlError unless the straight path A + s·D keeps every moving atom (one displaced
    more than MOVING_THRESHOLD) at least CLOSEST_APPROACH_RATIO times its closest
    approach in the end states away from every other atom, checked at ``samples``
    points (any number of path images).  `what` names the path in the message."""
    moving = np.flatnonzero(np.linalg.norm(d, axis=1) > MOVING_THRESHOLD)
    if not len(moving):
        return
    closest = []  # (distance, moving atom, other atom) at each sample
    for s in np.linspace(0.0, 1.0, samples):
        x = a.positions + s * d
        r = np.linalg.norm(_periodic_delta(x[None, :, :] - x[moving, None, :], a), axis=2)
        r[np.arange(len(moving)), moving] = np.inf
        k, j = np.unravel_index(np.argmin(r), r.shape)
        closest.append((float(r[k, j]), int(moving[k]), int(j)))
    ends = min(closest[0][0], closest[-1][0])
    nearest, atom, other = min(closest)
    if nearest < CLOSEST_APPROACH_RATIO * ends:
        raise QmmlError(
            f"{what}: the straight path brings atom {atom} within {nearest:.2f} Å of atom "
            f"{other} (closest approach {ends:.2f} Å in the end states; its largest atom "
            f"step is {np.linalg.norm(d, axis=1).max():.2f} Å): the two states are not one "
            f"lattice hop apart; configure distances between them so that each path is one "
            f"hop")


# ---- integration ---------------------------------------------------------------------
def quadrature_weights(n: int) -> tuple[np.ndarray, str]:
    """Weights on n equally spaced points of [0, 1]: Simpson if n is odd, else trapezoid."""
    if n < 2:
        raise QmmlError(f"path_images: need at least 2 images, got {n}")
    h = 1.0 / (n - 1)
    if n % 2 == 1:
        w = np.ones(n)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        return w * h / 3.0, "simpson"
    w = np.ones(n)
    w[0] = w[-1] = 0.5
    return w * h, "trapezoid"


def virtual_work(forces: list[np.ndarray], d: np.ndarray, free: np.ndarray
                 ) -> tuple[float, np.ndarray]:
    """E(A) − E(B) = ∫₀¹ F(s)·D ds over free atoms; also the integrand per image."""
    g = np.array([float((f[free] * d[free]).sum()) for f in forces])
    w, _ = quadrature_weights(len(g))
    return float(w @ g), g


# ---- ML-only pieces ------------------------------------------------------------------
def ml_knows_all(atoms: Atoms) -> bool:
    """False if the structure holds species the (single-element) ML potential ignores."""
    return bool((np.array(atoms.get_chemical_symbols()) == HOST).all())


def ml_relaxed_energy(atoms: Atoms, ml_calc: Calculator, fmax: float = ML_FMAX,
                      steps: int = ML_STEPS) -> tuple[float, Atoms]:
    """Relax a copy with the ML potential alone (fixed shell); its ML energy."""
    work = ml_image(atoms)
    if not relax_ml(work, ml_calc, fmax, steps):
        raise QmmlError(f"ML relaxation of an end state did not reach fmax {fmax} eV/Å in "
                        f"{steps} steps")
    return float(work.get_potential_energy()), work


def ml_path_check(images: list[Atoms], d: np.ndarray, ml_calc: Calculator
                  ) -> dict[str, float | np.ndarray]:
    """ML virtual work along the images vs the exact ML energy difference."""
    free = free_mask(images[0])
    forces, energies = [], []
    for image in images:
        image = image.copy()
        image.calc = ml_calc
        forces.append(image.get_forces(apply_constraint=False).copy())
        energies.append(float(image.get_potential_energy()))
    integral, g = virtual_work(forces, d, free)
    exact = energies[0] - energies[-1]
    return {"E_b_ml_path": integral, "E_b_ml_path_exact": exact, "error": integral - exact,
            "energies": np.array(energies), "integrand": g}


# ---- the QM/ML binding path ----------------------------------------------------------
@dataclass
class BindingPath:
    """Frames of a virtual-work path (A = far, B = near) and their summary."""

    frames: list[Atoms]
    summary: dict


def _check_pair(relaxed: Atoms, built: Atoms, what: str) -> None:
    if len(relaxed) != len(built) or (relaxed.numbers != built.numbers).any():
        raise QmmlError(f"{what}: relaxed structure does not hold the same atoms in the same "
                        "order as its built structure")


def _summary_base(near_built: Atoms, far_built: Atoms) -> dict:
    info = near_built.info
    return {
        "defect_name": str(info.get("defect_name", info.get("defect", "?"))),
        "defect": str(info.get("defect", "?")),
        "dislocation_name": str(info.get("dislocation_name", info.get("kind", "?"))),
        "distance_requested": float(info.get("defect_distance_requested", np.nan)),
        "distance": float(info.get("defect_distance", np.nan)),
        "distance_index": int(info.get("distance_index", -1)),
        "reference_index": int(far_built.info.get("distance_index", -1)),
        "reference_distance": float(far_built.info.get("defect_distance", np.nan)),
    }


def binding_path(far: Atoms, near: Atoms, far_built: Atoms, near_built: Atoms,
                 qm, ml_calc: Calculator, n_images: int, buffer_width: float,
                 qm_radius: float | None = None, vacuum: float = 5.0,
                 engine: str = "?", ml_cutoff: float | None = None,
                 ml_fmax: float = ML_FMAX, log=None) -> BindingPath:
    """QM/ML virtual work E(far) − E(near) of one segment (``E_b_qmml`` of the summary).

    `far`: the segment's reference state (the next farther distance, or the farthest
    one); `near`: the state at distance k.  Both QM/ML-relaxed; `far_built`/`near_built`: the same atoms unrelaxed
    (as built, with ``info`` of :func:`qmml.structures.add_point_defect`), used for the atom
    correspondence and the defect centres.  `qm`: a :class:`CachedQMCalculator`;
    `ml_calc`: the iteration potential's calculator.  Frames use the atom order of `far`.
    """
    from qmml.frames import output_frame
    from qmml.qmmm import make_force_qmmm

    _check_pair(far, far_built, "far")
    _check_pair(near, near_built, "near")
    qm_radius = float(qm_radius if qm_radius is not None else near_built.info["qm_radius"])
    ml_cutoff = float(ml_cutoff if ml_cutoff is not None else
                      near_built.info.get("ml_cutoff", buffer_width))
    perm = atom_correspondence(far_built, near_built)
    a = Atoms(far.numbers, far.positions, cell=far.cell, pbc=far.pbc)
    a.arrays["fix_mask"] = fixed_mask(far_built).copy()
    b = Atoms(near.numbers[perm], near.positions[perm], cell=near.cell, pbc=near.pbc)
    b.arrays["fix_mask"] = fixed_mask(near_built)[perm].copy()
    if not np.array_equal(b.arrays["fix_mask"], a.arrays["fix_mask"]):
        raise QmmlError("end states: different fixed atoms; build both from the same cylinder")
    d = displacement(a, b)
    max_step = float(np.linalg.norm(d, axis=1).max())
    summary = _summary_base(near_built, far_built)
    summary.update(engine=engine, path_max_step=max_step, qm_radius=qm_radius,
                   buffer_width=buffer_width)

    if max_step < 1e-8:  # near IS far: E_b = 0 by definition, nothing to evaluate
        summary.update(E_b_qmml=0.0, E_b_qmml_path_error=0.0, E_b_ml=0.0, E_b_ml_path=0.0,
                       E_b_ml_path_exact=0.0, qm_calls=0, qm_calls_new=0, path_images=1,
                       integration="none (far state)")
        a.arrays["region"] = np.asarray(far.arrays.get("region", np.full(len(a), "MM")))
        frame = output_frame(a, dict(summary, path_image=0, path_s=0.0,
                                     virtual_work_integrand=0.0, E_ml=np.nan),
                             forces=np.asarray(far.get_forces(apply_constraint=False))
                             if far.calc is not None else np.zeros((len(a), 3)))
        return BindingPath([frame], summary)

    far_requested = far_built.info.get("defect_distance_requested", "?")
    check_path_clears_atoms(a, d, f"defects.{summary['defect_name']}.distances: binding "
                                  f"path {summary['distance_requested']} -> {far_requested} Å")
    images = linear_images(a, b, n_images)
    centres = [far_built.info["defect_position"], near_built.info["defect_position"]]
    region, counts = path_region(images, centres, qm_radius, buffer_width, ml_cutoff)
    if log:
        log(f"path: {n_images} images, largest atom step {max_step:.3f} Å, regions {counts}")
    for image in images:
        image.arrays["region"] = region.copy()
    qmmm = make_force_qmmm(images[0], qm, ml_calc, buffer_width, vacuum=vacuum)
    calls0, real0 = qm.n_calls, qm.n_real_calls
    forces = []
    for i, image in enumerate(images):
        forces.append(np.array(qmmm.get_forces(image)))
        if log:
            log(f"image {i}: QM call {qm.n_calls - calls0} (new {qm.n_real_calls - real0})")
    free = free_mask(a)
    e_b, g = virtual_work(forces, d, free)
    check = ml_path_check(images, d, ml_calc)
    if ml_knows_all(a):
        e_far, _ = ml_relaxed_energy(a, ml_calc, fmax=ml_fmax)
        e_near, _ = ml_relaxed_energy(b, ml_calc, fmax=ml_fmax)
        e_b_ml = e_far - e_near
    else:
        e_b_ml = float("nan")  # He has no ML interaction: no ML-only binding energy
    _, integration = quadrature_weights(n_images)
    summary.update(E_b_qmml=e_b, E_b_qmml_path_error=float(check["error"]), E_b_ml=e_b_ml,
                   E_b_ml_path=float(check["E_b_ml_path"]),
                   E_b_ml_path_exact=float(check["E_b_ml_path_exact"]),
                   qm_calls=qm.n_calls - calls0, qm_calls_new=qm.n_real_calls - real0,
                   path_images=n_images, integration=integration, **counts)
    # running E(A) − E(image) by trapezoid (display only; the total above is Simpson)
    s = np.linspace(0.0, 1.0, n_images)
    running = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(s))])
    # images carry the path's region and fix_mask arrays and no info of their own
    frames = [output_frame(image, dict(summary, path_image=i, path_s=float(s[i]),
                                       virtual_work_integrand=float(g[i]),
                                       E_far_minus_image_trapz=float(running[i]),
                                       E_ml=float(check["energies"][i])), forces=f)
              for i, (image, f) in enumerate(zip(images, forces))]
    return BindingPath(frames, summary)


# ---- chains of paths and the table ---------------------------------------------------
def reference_index(distances: list[float], k: int) -> int:
    """The state the path of distance index `k` starts from: the next farther distance.

    Distances are ordered by (distance, −index); the largest is the FAR reference (the
    first of equal largest distances, as ``max`` picks it) and maps to itself.  Chaining
    neighbouring distances keeps every straight path short (see the caveats above);
    E_b(k) is the sum of the segment works from k up to FAR.
    """
    if not 0 <= k < len(distances):
        raise QmmlError(f"distances: no index {k} in {list(distances)}")
    key = [(float(d), -j) for j, d in enumerate(distances)]
    farther = [j for j in range(len(distances)) if key[j] > key[k]]
    return min(farther, key=lambda j: key[j]) if farther else k


COLUMNS = ("defect", "defect_type", "dislocation", "distance_requested", "distance",
           "E_b_qmml", "E_b_qmml_path_error", "E_b_ml", "qm_calls", "engine", "path_file",
           "path_max_step", "qm_calls_new", "segment_from_distance", "E_b_qmml_segment",
           "E_b_ml_path", "E_b_ml_path_exact", "path_images", "integration")


def _read_summary(path: Path) -> dict:
    from qmml.frames import read_info_with

    return read_info_with(path, SUMMARY_KEYS, "binding path")


def binding_table(path_files: list[str | Path], configured: dict | None = None):
    """Binding energies (pandas DataFrame, one row per path file, i.e. per distance).

    Each file is one segment (distance k ← its :func:`reference_index`); E_b, its ML
    error estimate and the ML-only E_b are summed along the chain up to the FAR state
    (E_b = 0 there).  `configured` (the ``defects`` config section) makes it check that
    every configured (defect, distance) has exactly one file.
    """
    import pandas as pd

    seg = {}
    for path in map(Path, path_files):
        info = _read_summary(path)
        key = (str(info["defect_name"]), int(info["distance_index"]))
        if key in seg:
            raise QmmlError(f"{path}: second path file for defect {key[0]} distance index "
                            f"{key[1]} (also {seg[key]['path_file']})")
        seg[key] = dict(info, path_file=str(path))
    if configured is not None:
        want = {(name, k) for name, d in configured.items() for k in range(len(d["distances"]))}
        if want != set(seg):
            missing, extra = sorted(want - set(seg)), sorted(set(seg) - want)
            raise QmmlError(f"binding paths do not match the configured defects (missing "
                            f"{missing or 'none'}, not configured {extra or 'none'})")

    def chained(key, column, seen=()):
        if key in seen:
            raise QmmlError(f"binding paths of defect {key[0]} form a loop")
        info = seg[key]
        ref = (key[0], int(info["reference_index"]))
        if ref == key:
            return float(info[column])
        if ref not in seg:
            raise QmmlError(f"{info['path_file']}: starts from distance index {ref[1]} of "
                            f"{key[0]}, whose path file is not given")
        return float(info[column]) + chained(ref, column, (*seen, key))

    rows = []
    for key in sorted(seg, key=lambda k: (list(configured or {}).index(k[0])
                                          if configured and k[0] in configured else 0, k)):
        info = seg[key]
        ref = seg.get((key[0], int(info["reference_index"])), info)
        rows.append({
            "defect": key[0], "defect_type": str(info["defect"]),
            "dislocation": str(info["dislocation_name"]),
            "distance_requested": float(info["distance_requested"]),
            "distance": float(info["distance"]),
            "E_b_qmml": chained(key, "E_b_qmml"),
            "E_b_qmml_path_error": chained(key, "E_b_qmml_path_error"),
            "E_b_ml": chained(key, "E_b_ml"), "qm_calls": int(info["qm_calls"]),
            "engine": str(info["engine"]), "path_file": info["path_file"],
            "path_max_step": float(info["path_max_step"]),
            "qm_calls_new": int(info["qm_calls_new"]),
            "segment_from_distance": float(ref["distance"]),
            "E_b_qmml_segment": float(info["E_b_qmml"]),
            "E_b_ml_path": chained(key, "E_b_ml_path"),
            "E_b_ml_path_exact": chained(key, "E_b_ml_path_exact"),
            "path_images": int(info["path_images"]), "integration": str(info["integration"]),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ---- files -------------------------------------------------------------------------
def compute(far: str, near: str, far_structure: str, near_structure: str, potential: str,
            engine_cfg: dict, cache: str, images: int, buffer_width: float,
            vacuum: float = 5.0, qm_radius: float | None = None, ml_fmax: float = ML_FMAX,
            ml_ranks: int = 1, log=None) -> BindingPath:
    """:func:`binding_path` of the structures in these files, QM calls through `cache`
    (``qmml.steps.binding_path_file`` writes its frames); the ML potential on ``ml_ranks``
    MPI processes (:mod:`qmml.lammps_mpi`)."""
    from qmml.engines import engine_label
    from qmml.io import read_frame
    from qmml.potential import SNAPPotential
    from qmml.qmcache import CachedQMCalculator

    pot = SNAPPotential.read(potential)
    qm = CachedQMCalculator.from_config(engine_cfg, cache, log=log)
    return binding_path(read_frame(far), read_frame(near),
                        read_frame(far_structure), read_frame(near_structure), qm,
                        pot.calculator(ranks=ml_ranks), images, buffer_width,
                        qm_radius=qm_radius, vacuum=vacuum, engine=engine_label(engine_cfg),
                        ml_cutoff=pot.cutoff, ml_fmax=ml_fmax, log=log)


# ---- building the configured structures ------------------------------------------------
def build_defect(name: str, defect: dict, dislocation: dict, three_d: dict, potential: str,
                 k: int, elastic: dict | None = None) -> tuple[Atoms, dict]:
    """Distance ``k`` of configured defect `name` on a long 3D dislocation cylinder.

    `defect`: the config entry (``defect``, ``dislocation``, ``distances``, ``direction``);
    `dislocation`: its dislocation case (``kind``); `three_d`: the ``three_d`` section.
    `elastic`: a0, C11, C12, C44 of `potential` (the iteration's elastic.json); without
    them they are measured with `potential` (:func:`qmml.build.build_case`).  The
    QM region is a sphere of ``three_d.qm_radius`` around the defect.  ``info`` gains
    ``defect_name``, ``dislocation_name`` and ``distance_index`` for the binding table.
    """
    from qmml.build import build_case, default_settings

    distances = list(defect["distances"])
    if not 0 <= k < len(distances):
        raise QmmlError(f"defects.{name}.distances: no distance with index {k} "
                        f"({len(distances)} configured)")
    settings = default_settings(
        kind=dislocation["kind"], radius=float(three_d["radius"]),
        fixed_width=float(three_d["fixed_width"]), n_line=int(three_d["n_line"]),
        potential=str(potential), qm_radius=float(three_d["qm_radius"]),
        buffer=float(three_d["buffer"]), region="sphere", defect=defect["defect"],
        distance=float(distances[k]),
        direction=[float(x) for x in defect.get("direction", (1.0, 0.0))],
        **{key: float(value) for key, value in (elastic or {}).items()
           if key in ("a0", "C11", "C12", "C44")})
    try:
        states, summary = build_case(settings)
    except QmmlError as err:
        raise QmmlError(f"defects.{name} (distance {distances[k]} Å): {err}") from None
    atoms = states[0]
    atoms.info.update(defect_name=name, dislocation_name=str(defect["dislocation"]),
                      distance_index=int(k))
    return atoms, summary
