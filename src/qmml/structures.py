"""Dislocation cylinders, glide end points and point defects near a dislocation core.

Cylinders are built with matscipy's dislocation classes and the anisotropic (Stroh)
displacement field of the given cubic elastic constants.  Conventions (all kinds):

* the dislocation line is z, the glide plane normal is y, the glide direction is x;
* the cell is orthorhombic, periodic along z only (``pbc = [False, False, True]``);
* atoms in the outer ``fixed_width`` Å of the cylinder are marked in the bool array
  ``atoms.arrays["fix_mask"]`` and held by an ASE ``FixAtoms`` constraint;
* ``atoms.info`` records ``kind``, ``burgers`` (lab frame, Å), ``core_position`` (x, y),
  ``a0``, ``C11``, ``C12``, ``C44`` (GPa), ``n_line``, ``radius``, ``fixed_width``, ``symbol``
  and ``lattice_origin`` (one site of the perfect crystal the cylinder was cut from: it
  lets :func:`add_point_defect` find lattice / interstitial sites later).

Positions are left unwrapped along z, as matscipy builds them, so that
``positions - perfect_positions`` is the displacement field (the screw's u_z winds by b).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from matscipy.dislocation import (BCCEdge100110Dislocation, BCCEdge100Dislocation,
                                  BCCEdge111Dislocation, BCCScrew111Dislocation,
                                  CubicCrystalDislocation)

from qmml import QmmlError
from qmml.frames import fixed_mask

# kind -> (matscipy class, human-readable name).  matscipy's own ``name`` strings for the
# two <100> edges are swapped (BCCEdge100Dislocation glides on (001): its y axis is
# [00-1]), so we keep our own labels, named after the glide plane.
KINDS: dict[str, tuple[type[CubicCrystalDislocation], str]] = {
    "screw111": (BCCScrew111Dislocation, "1/2<111>{110} screw"),
    "edge111": (BCCEdge111Dislocation, "1/2<111>{110} edge"),
    "edge100_110": (BCCEdge100110Dislocation, "<100>{110} edge"),
    "edge100_001": (BCCEdge100Dislocation, "<100>{001} edge"),
}

DEFECTS = ("vacancy", "He_tet", "He_oct", "HenVm")
_HENVM = re.compile(r"^He(\d*)V(\d*)$")

# displacement solver: matscipy's own anisotropic Stroh solver.  Named explicitly so the
# result does not change when the optional atomman package happens to be installed.
_METHOD = "adsl"

# Unit-cube (a0 = 1) basis of the bcc lattice and its interstitial sites, with the
# lattice sites that define each interstitial (site = centroid of those sites).
_LATTICE_BASIS = np.array([[0, 0, 0], [0.5, 0.5, 0.5]])


def _tet_sites() -> list[tuple[np.ndarray, np.ndarray]]:
    """12 tetrahedral sites per cube, each with its 4 W neighbours at a0·√5/4."""
    sites = []
    for fixed in range(3):  # the cube face (coordinate `fixed` = 0) the site lies on
        free = [i for i in range(3) if i != fixed]
        for u, v in ((0.5, 0.25), (0.5, 0.75), (0.25, 0.5), (0.75, 0.5)):
            p = np.zeros(3)
            p[free[0]], p[free[1]] = u, v
            sites.append(p)
    return [(p, _neighbours(p, 4)) for p in sites]


def _oct_sites() -> list[tuple[np.ndarray, np.ndarray]]:
    """6 octahedral sites per cube (face and edge centres), each with its 6 W neighbours."""
    sites = [np.array(p, float) for p in ((0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5),
                                         (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5))]
    return [(p, _neighbours(p, 6)) for p in sites]


def _neighbours(point: np.ndarray, count: int) -> np.ndarray:
    """The `count` bcc lattice sites (a0 = 1) nearest to `point`."""
    cells = np.array([[i, j, k] for i in (-1, 0, 1, 2) for j in (-1, 0, 1, 2)
                      for k in (-1, 0, 1, 2)], float)
    lattice = (cells[:, None, :] + _LATTICE_BASIS[None]).reshape(-1, 3)
    order = np.argsort(np.linalg.norm(lattice - point, axis=1), kind="stable")
    return lattice[order[:count]]


_SITES = {"vacancy": [(p, p[None]) for p in _LATTICE_BASIS],
          "He_tet": _tet_sites(), "He_oct": _oct_sites()}


# ---------------------------------------------------------------------------------------
def dislocation_model(kind: str, a0: float, C11: float, C12: float, C44: float,
                      symbol: str = "W") -> CubicCrystalDislocation:
    """The matscipy dislocation object for `kind` with cubic elastic constants (GPa)."""
    if kind not in KINDS:
        raise QmmlError(f"kind: unknown dislocation kind '{kind}' (choose from {', '.join(KINDS)})")
    values = {"a0": a0, "C11": C11, "C12": C12, "C44": C44}
    for key, value in values.items():
        if not np.isfinite(value) or value <= 0:
            raise QmmlError(f"{key}: must be a positive number, got {value}")
    # Born stability of a cubic crystal: without it the Stroh solution does not exist.
    if not (C11 > abs(C12) and C11 + 2 * C12 > 0):
        raise QmmlError(f"C11/C12: elastic constants C11={C11}, C12={C12} are not "
                        "mechanically stable (need C11 > |C12| and C11 + 2 C12 > 0)")
    cls, _ = KINDS[kind]
    return cls(float(a0), float(C11), float(C12), float(C44), symbol=symbol)


@contextmanager
def _solver_errors():
    """matscipy's self-consistent field loop raises RuntimeError: make it a user error."""
    try:
        yield
    except RuntimeError as err:
        raise QmmlError(f"C44: anisotropic displacement field failed ({err}); the Stroh "
                        "solver is degenerate for an isotropic crystal, 2·C44 = C11 − C12"
                        ) from None


def _check_geometry(radius: float, fixed_width: float, n_line: int, a0: float) -> None:
    if not np.isfinite(radius) or radius < 2 * a0:
        raise QmmlError(f"radius: {radius} Å is too small (need at least 2·a0 = {2 * a0:.2f} Å)")
    if not (0 < fixed_width < radius):
        raise QmmlError(f"fixed_width: {fixed_width} Å must be > 0 and smaller than "
                        f"radius = {radius} Å")
    if int(n_line) != n_line or n_line < 1:
        raise QmmlError(f"n_line: must be a positive integer, got {n_line}")


def _finish(disloc: Atoms, fix_mask: np.ndarray, model: CubicCrystalDislocation, kind: str,
            core_xy: Sequence[float], lattice_origin: np.ndarray, radius: float,
            fixed_width: float, n_line: int, symbol: str) -> Atoms:
    """Apply qmml's conventions (pbc, fix_mask, info) and repeat along the line."""
    atoms = Atoms(disloc.get_chemical_symbols(), positions=disloc.positions,
                  cell=np.diag(np.diag(disloc.cell)), pbc=[False, False, True])
    atoms.arrays["fix_mask"] = np.asarray(fix_mask, dtype=bool).copy()
    if n_line > 1:
        atoms = atoms.repeat((1, 1, int(n_line)))
    atoms.set_constraint(FixAtoms(mask=atoms.arrays["fix_mask"]))
    axes = model.axes / np.linalg.norm(model.axes, axis=1)[:, None]
    C = model.C
    atoms.info.update({
        "kind": kind,
        "dislocation": KINDS[kind][1],
        "burgers": [float(x) for x in axes @ model.burgers],  # lab frame
        "core_position": [float(core_xy[0]), float(core_xy[1])],
        "a0": float(model.alat),
        "C11": float(C[0, 0]), "C12": float(C[0, 1]), "C44": float(C[3, 3]),
        "n_line": int(n_line),
        "radius": float(radius),
        "fixed_width": float(fixed_width),
        "symbol": symbol,
        "lattice_origin": [float(x) for x in lattice_origin],
    })
    return atoms


def dislocation_cylinder(kind: str, a0: float, C11: float, C12: float, C44: float,
                         radius: float, fixed_width: float, n_line: int = 1,
                         symbol: str = "W") -> Atoms:
    """Straight dislocation of `kind` at the centre of a cylinder of `radius` Å.

    The anisotropic elastic displacement field of (a0 [Å], C11, C12, C44 [GPa]) is applied
    to a perfect crystal; the outer `fixed_width` Å are fixed; the cell is `n_line`
    lattice repeats long along the (periodic) line.
    """
    model = dislocation_model(kind, a0, C11, C12, C44, symbol)
    _check_geometry(radius, fixed_width, n_line, a0)
    with _solver_errors():
        bulk, disloc, fix_mask = model.build_cylinder(
            radius, fix_width=fixed_width, method=_METHOD, verbose=False,
            return_fix_mask=True)
    core = disloc.info["core_positions"][0]
    return _finish(disloc, fix_mask, model, kind, core[:2], bulk.positions[0], radius,
                   fixed_width, n_line, symbol)


def glide_endpoints(kind: str, a0: float, C11: float, C12: float, C44: float,
                    radius: float, fixed_width: float, n_line: int = 1, symbol: str = "W",
                    average_fixed: bool = True) -> tuple[Atoms, Atoms]:
    """Initial and final states of one glide step (one Peierls period along +x).

    Both states hold the same atoms in the same order (a cylinder around the whole glide
    segment) and the same fix_mask.  With `average_fixed` the fixed atoms sit at the mean of
    their two elastic positions in both states, so an NEB between them keeps them still
    (as in matscipy's ``make_barrier_configurations``).  ``info["glide_path"]`` holds the two
    core positions [x0, y0, x1, y1].
    """
    model = dislocation_model(kind, a0, C11, C12, C44, symbol)
    _check_geometry(radius, fixed_width, n_line, a0)
    with _solver_errors():
        bulk, ini, fin = model.build_glide_configurations(
            radius, average_positions=average_fixed, fix_width=fixed_width, method=_METHOD,
            verbose=False)
    fix_mask = ini.arrays["fix_mask"]
    if not np.array_equal(fix_mask, fin.arrays["fix_mask"]):  # matscipy guarantees this
        raise RuntimeError("glide end points have different fixed atoms")
    start, end = ini.info["core_positions"][0][:2], fin.info["core_positions"][0][:2]
    states = []
    for disloc, core in ((ini, start), (fin, end)):
        atoms = _finish(disloc, fix_mask, model, kind, core, bulk.positions[0], radius,
                        fixed_width, n_line, symbol)
        atoms.info["glide_path"] = [float(start[0]), float(start[1]),
                                    float(end[0]), float(end[1])]
        states.append(atoms)
    return states[0], states[1]


# ---------------------------------------------------------------------------------------
def parse_defect(defect: str) -> tuple[str, int, int]:
    """``defect`` string -> (site type, number of He, number of vacancies)."""
    if defect == "vacancy":
        return "vacancy", 0, 1
    if defect in ("He_tet", "He_oct"):
        return defect, 1, 0
    match = _HENVM.match(defect)
    if match is None:
        raise QmmlError(f"defect: unknown defect '{defect}' (choose vacancy, He_tet, He_oct "
                        "or HenVm such as He2V1)")
    n_he = int(match.group(1) or 1)
    n_vac = int(match.group(2) or 1)
    if n_he < 1 or n_vac < 1 or n_he > 6 * n_vac:
        raise QmmlError(f"defect: '{defect}' needs 1 ≤ n ≤ 6·m He in m ≥ 1 vacancies")
    return "vacancy", n_he, n_vac


def _rotation(atoms: Atoms) -> np.ndarray:
    """Rows: the lab x, y, z axes in cubic crystal coordinates (lab = R @ cubic)."""
    axes = KINDS[atoms.info["kind"]][0].axes.astype(float)
    return axes / np.linalg.norm(axes, axis=1)[:, None]


def _candidate_sites(atoms: Atoms, site_type: str, target: np.ndarray):
    """Perfect-crystal sites of `site_type` near `target` (lab frame, bulk positions).

    Returns (sites (n, 3), defining lattice sites (n, k, 3)).
    """
    a0 = float(atoms.info["a0"])
    origin = np.asarray(atoms.info["lattice_origin"], float)
    R = _rotation(atoms)
    cubic_target = R.T @ (target - origin) / a0
    base = np.floor(cubic_target)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1)
                       for k in (-1, 0, 1)], float)
    sites, defining = [], []
    for shift in shifts:
        for point, neighbours in _SITES[site_type]:
            sites.append(base + shift + point)
            defining.append(base + shift + neighbours)
    to_lab = lambda c: (np.asarray(c) * a0) @ R.T + origin  # noqa: E731  (lab = R·cubic)
    return to_lab(np.array(sites)), to_lab(np.array(defining))


def _z_min_image(delta: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Minimum image of displacement vectors along the periodic line (z)."""
    delta = np.array(delta, float)
    if atoms.pbc[2]:
        lz = atoms.cell[2, 2]
        delta[..., 2] -= lz * np.round(delta[..., 2] / lz)
    return delta


def _match_atoms(atoms: Atoms, points: np.ndarray, tolerance: float) -> np.ndarray:
    """Index of the atom at each of `points` (displaced lattice sites)."""
    d = np.linalg.norm(_z_min_image(atoms.positions[None] - points[:, None], atoms), axis=2)
    index = np.argmin(d, axis=1)
    worst = d[np.arange(len(points)), index].max()
    if worst > tolerance:
        raise QmmlError(f"defect: no atom within {tolerance:.2f} Å of a lattice site next to "
                        f"the defect (nearest {worst:.2f} Å): too close to the surface?")
    return index


def add_point_defect(atoms: Atoms, defect: str, distance: float = 0.0,
                     direction: Sequence[float] = (1.0, 0.0), z: float | None = None,
                     site: Sequence[float] | None = None) -> Atoms:
    """Return a copy of `atoms` with a point defect near the dislocation core.

    `defect`: "vacancy", "He_tet", "He_oct" or "HenVm" (n He in m vacancies, "He2V1").
    The target point is the core (``info["core_position"]``) + `distance` Å along the xy
    `direction` (default +x: in the glide plane) at height `z` (default: mid-cell), or
    the explicit xyz point `site`.  The nearest site of the right type of the perfect
    crystal is chosen; its position in the dislocated crystal is the centroid of the atoms
    on its defining lattice sites (the site itself for a vacancy, 4 W for tet, 6 W for
    oct), so the site follows the elastic (or relaxed) field.  m vacancies grow a compact
    cluster from the chosen site; He go to the vacancy sites (k > 1 per site: a small
    polyhedron of radius 0.8–1 Å around it, a starting guess for relaxation).

    The defect is periodic along the line: use ``n_line`` so that its images are far
    apart (a 1-b screw slab makes a tet site's (000) and (½½½) neighbours one atom).

    Records ``defect``, ``defect_position`` (xyz), ``defect_distance`` (xy distance from
    the core line, Å) and ``defect_distance_requested``; ``fix_mask`` follows the atoms.
    """
    for key in ("kind", "a0", "C11", "C12", "C44", "core_position", "lattice_origin"):
        if key not in atoms.info:
            raise QmmlError(f"atoms.info: '{key}' missing (build the structure with "
                            "qmml.structures.dislocation_cylinder)")
    if "defect" in atoms.info:
        raise QmmlError(f"defect: structure already holds a defect ({atoms.info['defect']})")
    site_type, n_he, n_vac = parse_defect(defect)
    core = np.asarray(atoms.info["core_position"], float)
    if site is None:
        if not np.isfinite(distance) or distance < 0:
            raise QmmlError(f"distance: must be ≥ 0 Å, got {distance}")
        direction = np.asarray(direction, float)
        if direction.shape != (2,) or np.linalg.norm(direction) == 0:
            raise QmmlError(f"direction: need a non-zero (x, y) vector, got {direction.tolist()}")
        direction = direction / np.linalg.norm(direction)
        zt = 0.5 * atoms.cell[2, 2] if z is None else float(z)
        target = np.array([*(core + distance * direction), zt])
    else:
        target = np.asarray(site, float)
        if target.shape != (3,):
            raise QmmlError(f"site: need an (x, y, z) point, got {target.tolist()}")
        distance = float(np.linalg.norm(target[:2] - core))

    model = dislocation_model(atoms.info["kind"], float(atoms.info["a0"]),
                              float(atoms.info["C11"]), float(atoms.info["C12"]),
                              float(atoms.info["C44"]), atoms.info.get("symbol", "W"))
    core3 = np.array([[core[0], core[1], 0.0]])

    def displaced(points: np.ndarray) -> np.ndarray:
        # The same self-consistent anisotropic field matscipy applied to the atoms.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u = model.displacements(points.reshape(-1, 3), core3, method=_METHOD,
                                    verbose=False)
        return (points.reshape(-1, 3) + u).reshape(points.shape)

    a0 = float(atoms.info["a0"])
    tolerance = 0.3 * a0  # far below the 1NN distance 0.87·a0: no ambiguous matches
    sites, defining = _candidate_sites(atoms, site_type, target)
    dist = np.linalg.norm(_z_min_image(sites - target, atoms), axis=1)
    # symmetric sites (the three columns around a screw core) tie up to round-off: take
    # the one farthest along `direction` (the first in the fixed enumeration order if
    # that ties too), so that every build of the same structure (each iteration's, with
    # its potential's a0 to 1e-8) removes the same atom and the atom order, which seeds
    # and binding paths rely on, stays the same
    tied = np.flatnonzero(dist <= dist.min() + 1e-6)
    along = np.round((sites[tied, :2] - core) @ direction, 6) if site is None else \
        np.zeros(len(tied))
    first = int(tied[np.flatnonzero(along == along.max())[0]])
    order = [first] + [int(i) for i in np.argsort(dist, kind="stable") if i != first]
    chosen = [order[0]]
    if n_vac > 1:
        # grow a compact vacancy cluster: next site = nearest to the cluster centroid
        for _ in range(n_vac - 1):
            centroid = sites[chosen].mean(axis=0)
            # skip periodic images (along the line) of sites already taken
            taken = sites[chosen]
            rest = [i for i in order if np.linalg.norm(
                _z_min_image(taken - sites[i], atoms), axis=1).min() > 0.1]
            dist = np.linalg.norm(_z_min_image(sites[rest] - centroid, atoms), axis=1)
            chosen.append(rest[int(np.argmin(np.round(dist, 6)))])

    fix_mask = fixed_mask(atoms)
    new = atoms.copy()
    new.set_constraint()
    new.arrays["fix_mask"] = fix_mask.copy()
    defining_atoms, site_positions = [], []
    for i in chosen:
        points = displaced(defining[i])
        index = _match_atoms(atoms, points, tolerance)
        # centroid of the matched atoms, each taken as the image nearest its site
        nearest = points + _z_min_image(atoms.positions[index] - points, atoms)
        defining_atoms.append(index)
        site_positions.append(nearest.mean(axis=0))
    site_positions = np.array(site_positions)
    if atoms.pbc[2]:  # report (and place He) inside the cell along the periodic line
        site_positions[:, 2] %= atoms.cell[2, 2]
    # He positions (vacancy sites: the removed atoms' positions)
    he_positions = []
    if site_type != "vacancy":
        he_positions = [site_positions[0]]
    else:
        R = _rotation(atoms)
        per_site = np.bincount(np.arange(n_he) % n_vac, minlength=n_vac)
        for position, k in zip(site_positions, per_site):
            he_positions += list(position + _cluster_offsets(int(k)) @ R.T)
    touched = np.unique(np.concatenate(defining_atoms))
    if fix_mask[touched].any():
        raise QmmlError(f"distance: {distance:.2f} Å puts the {defect} on or next to fixed "
                        "atoms; it must lie inside the free region")
    defect_points = np.vstack([site_positions, np.reshape(he_positions, (-1, 3))])
    if fix_mask.any():
        gap = np.linalg.norm(_z_min_image(
            atoms.positions[fix_mask][None] - defect_points[:, None], atoms), axis=2).min()
        if gap < np.sqrt(3) / 2 * a0:
            raise QmmlError(f"distance: {distance:.2f} Å puts the {defect} {gap:.2f} Å from a "
                            "fixed atom; it must lie inside the free region (≥ one 1NN "
                            "distance from the fixed shell)")
    if site_type == "vacancy":
        del new[[int(i) for i in np.concatenate(defining_atoms)]]
    if he_positions:
        new += Atoms(["He"] * len(he_positions), positions=he_positions)
        new.arrays["fix_mask"][-len(he_positions):] = False
    new.set_constraint(FixAtoms(mask=new.arrays["fix_mask"]))
    position = site_positions.mean(axis=0)
    new.info.update({
        "defect": defect,
        "defect_position": [float(x) for x in position],
        "defect_distance": float(np.linalg.norm(position[:2] - core)),
        "defect_distance_requested": float(distance),
    })
    return new


def _cluster_offsets(k: int) -> np.ndarray:
    """Cubic-frame offsets of k He sharing one vacancy (a starting guess)."""
    if k <= 1:
        return np.zeros((k, 3))
    shapes = {
        2: [[1, 1, 0], [-1, -1, 0]],                      # <110> pair, ~1.6 Å apart
        3: [[1, -1, 0], [0, 1, -1], [-1, 0, 1]],          # triangle in (111)
        4: [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],  # tetrahedron
        5: [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [0, 0, 0]],
        6: [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    }
    vectors = np.array(shapes[k], float)
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    radius = 0.8 if k <= 4 else 1.0
    return radius * vectors / norms[:, None]


def perfect_sites(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Perfect-crystal lattice site of every atom, and its distance from x − u(x).

    matscipy places atoms self-consistently, x = s + u(x) with u the elastic field of the
    recorded core, so s = x − u(x); snapping s to the bcc lattice of
    ``info["lattice_origin"]`` gives the site.  The residual |x − u(x) − site| is ~0 for an
    unrelaxed structure and measures non-elastic (core, relaxation) displacements.
    Non-host atoms (He) get NaN.
    """
    model = dislocation_model(atoms.info["kind"], float(atoms.info["a0"]),
                              float(atoms.info["C11"]), float(atoms.info["C12"]),
                              float(atoms.info["C44"]), atoms.info.get("symbol", "W"))
    core = np.asarray(atoms.info["core_position"], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = model.displacements(atoms.positions, np.array([[core[0], core[1], 0.0]]),
                                method=_METHOD, self_consistent=False, verbose=False)
    estimate = atoms.positions - u
    a0 = float(atoms.info["a0"])
    origin = np.asarray(atoms.info["lattice_origin"], float)
    R = _rotation(atoms)
    cubic = (estimate - origin) @ R / a0
    corner = np.round(cubic)
    centre = np.floor(cubic) + 0.5
    use_centre = (np.linalg.norm(cubic - centre, axis=1)
                  < np.linalg.norm(cubic - corner, axis=1))
    sites_cubic = np.where(use_centre[:, None], centre, corner)
    sites = sites_cubic * a0 @ R.T + origin
    residual = np.linalg.norm(estimate - sites, axis=1)
    host = np.array(atoms.get_chemical_symbols()) == atoms.info.get("symbol", "W")
    sites[~host] = np.nan
    residual[~host] = np.nan
    return sites, residual
