"""QM / buffer / MM regions for force mixing, with ASE ``ForceQMMM`` semantics.

``atoms.arrays["region"]`` is a string array of "QM", "buffer", "MM", exactly what
``ForceQMMM.get_region_from_masks`` / ``export_extxyz`` write, so
``ForceQMMM.import_extxyz`` (``set_masks_from_region``) reproduces the masks:

* QM: atoms within ``qm_radius`` (≤) of the core line / glide path (cylinder) or of a
  point (sphere), distances taken with the minimum image along periodic directions;
* buffer: non-QM atoms closer than ``buffer_width`` (strictly <) to any QM atom, the rule
  of ``ForceQMMM.initialize_qm_buffer_mask``;
* MM: the rest.

Refused (one-line ``QmmlError``): empty QM region; buffer narrower than the ML cutoff;
a non-W atom (He) outside QM or with a non-QM atom within the ML cutoff (the ML
potential has no He, so nothing it evaluates may see one); non-orthorhombic cell; fixed
QM or buffer atoms.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.frames import fixed_mask

HOST = "W"
REGIONS = ("QM", "buffer", "MM")


def _periodic_delta(delta: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Minimum image of difference vectors in an orthorhombic cell (periodic axes only)."""
    delta = np.array(delta, float)
    lengths = np.diag(atoms.cell)
    for axis in range(3):
        if atoms.pbc[axis]:
            delta[..., axis] -= lengths[axis] * np.round(delta[..., axis] / lengths[axis])
    return delta


def _check_cell(atoms: Atoms) -> None:
    if not atoms.cell.orthorhombic:
        raise QmmlError("cell: non-orthorhombic cell (ASE ForceQMMM needs an orthorhombic "
                        "cell; build with qmml.structures)")
    if any(atoms.pbc & (np.diag(atoms.cell) <= 0)):
        raise QmmlError("cell: a periodic direction has zero length")


def distance_to_path(points_xy: np.ndarray, path_xy: np.ndarray) -> np.ndarray:
    """Distance of 2D points to a polyline (a single point if the path has one vertex)."""
    points_xy = np.asarray(points_xy, float)
    path_xy = np.atleast_2d(np.asarray(path_xy, float))
    if len(path_xy) == 1:
        return np.linalg.norm(points_xy - path_xy[0], axis=1)
    best = np.full(len(points_xy), np.inf)
    for a, b in zip(path_xy[:-1], path_xy[1:]):
        ab = b - a
        t = np.clip((points_xy - a) @ ab / max(ab @ ab, 1e-300), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points_xy - (a + t[:, None] * ab), axis=1))
    return best


def buffer_mask(atoms: Atoms, qm_mask: np.ndarray, buffer_width: float) -> np.ndarray:
    """QM atoms plus every atom closer than `buffer_width` to one (ForceQMMM's rule)."""
    qm_index = np.flatnonzero(qm_mask)
    mask = np.asarray(qm_mask, bool).copy()
    # chunk over QM atoms so a large 3D region needs little memory
    for start in range(0, len(qm_index), 256):
        chunk = atoms.positions[qm_index[start:start + 256]]
        delta = _periodic_delta(atoms.positions[None] - chunk[:, None], atoms)
        mask |= (np.linalg.norm(delta, axis=2) < buffer_width).any(axis=0)
    return mask


def assign_regions(atoms: Atoms, qm_mask: np.ndarray, buffer_width: float,
                   ml_cutoff: float) -> dict[str, int]:
    """Set ``arrays["region"]`` from a QM mask after all checks; return counts per region."""
    _check_cell(atoms)
    qm_mask = np.asarray(qm_mask, bool)
    if not qm_mask.any():
        raise QmmlError("qm_radius: QM region is empty (no atom within qm_radius)")
    if not np.isfinite(ml_cutoff) or ml_cutoff <= 0:
        raise QmmlError(f"ml_cutoff: must be a positive length in Å, got {ml_cutoff}")
    if buffer_width < ml_cutoff:
        raise QmmlError(f"buffer: buffer width {buffer_width} Å is narrower than the ML "
                        f"cutoff {ml_cutoff} Å")
    symbols = np.array(atoms.get_chemical_symbols())
    foreign = symbols != HOST
    outside = foreign & ~qm_mask
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise QmmlError(f"species: {outside.sum()} non-{HOST} atom(s) outside the QM region "
                        f"(atom {i}, {symbols[i]}): enlarge qm_radius")
    if foreign.any():
        # The ML potential gives He zero force and no interaction: every atom that would
        # interact with it (within the ML cutoff) must get QM forces.
        near = buffer_mask(atoms, foreign, ml_cutoff) & ~qm_mask
        if near.any():
            raise QmmlError(f"species: {near.sum()} non-QM atom(s) within the ML cutoff "
                            f"{ml_cutoff} Å of a non-{HOST} atom: enlarge qm_radius")
    qm_buffer = buffer_mask(atoms, qm_mask, buffer_width)
    fixed = fixed_mask(atoms)
    clash = fixed & qm_buffer
    if clash.any():
        kind = "QM" if (fixed & qm_mask).any() else "buffer"
        raise QmmlError(f"fix_mask: {clash.sum()} fixed atom(s) in the QM/buffer region "
                        f"({kind} atoms must be free): shrink qm_radius/buffer or enlarge "
                        "the cylinder")
    region = np.full(len(atoms), "MM", dtype="<U6")
    region[qm_buffer & ~qm_mask] = "buffer"
    region[qm_mask] = "QM"
    atoms.arrays["region"] = region
    atoms.arrays["fix_mask"] = fixed.copy()
    return {name: int((region == name).sum()) for name in REGIONS}


def cylinder_region(atoms: Atoms, center_xy: Sequence[float] | None, qm_radius: float,
                    buffer_width: float, ml_cutoff: float,
                    path: Sequence[Sequence[float]] | None = None) -> dict[str, int]:
    """Line-periodic QM slab: atoms within `qm_radius` of the core line or glide path.

    `center_xy` None -> ``atoms.info["core_position"]``; `path` (list of (x, y) core
    positions) overrides it and measures the distance to the path's segments.
    Sets ``atoms.arrays["region"]`` and returns {"QM": n, "buffer": n, "MM": n}.
    """
    _check_cell(atoms)
    if path is None:
        if center_xy is None:
            if "core_position" not in atoms.info:
                raise QmmlError("center_xy: not given and atoms.info has no 'core_position'")
            center_xy = atoms.info["core_position"]
        path = [center_xy]
    path = np.atleast_2d(np.asarray(path, float))
    if path.ndim != 2 or path.shape[1] < 2:
        raise QmmlError(f"path: need (x, y) points, got shape {path.shape}")
    qm_mask = distance_to_path(atoms.positions[:, :2], path[:, :2]) <= qm_radius
    return assign_regions(atoms, qm_mask, buffer_width, ml_cutoff)


def sphere_region(atoms: Atoms, center: Sequence[float] | None, qm_radius: float,
                  buffer_width: float, ml_cutoff: float) -> dict[str, int]:
    """3D QM sphere of `qm_radius` around `center` (minimum image along periodic z).

    `center` None -> ``atoms.info["defect_position"]``.  Sets ``arrays["region"]`` and
    returns the counts per region.
    """
    _check_cell(atoms)
    if center is None:
        if "defect_position" not in atoms.info:
            raise QmmlError("center: not given and atoms.info has no 'defect_position'")
        center = atoms.info["defect_position"]
    center = np.asarray(center, float)
    if center.shape != (3,):
        raise QmmlError(f"center: need an (x, y, z) point, got {center.tolist()}")
    distance = np.linalg.norm(_periodic_delta(atoms.positions - center, atoms), axis=1)
    return assign_regions(atoms, distance <= qm_radius, buffer_width, ml_cutoff)
