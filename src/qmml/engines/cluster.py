"""The QM cluster as each program needs it: k-points per periodic direction, vacuum box."""
from __future__ import annotations

import numpy as np
from ase import Atoms

from qmml import QmmlError

BOX_STEP = 2.0  # Å


def cluster_kpts(pbc, kpts_line: int) -> tuple[int, int, int]:
    """``kpts_line`` k-points along periodic directions, one (Γ) along open ones: a slab
    cluster (pbc F,F,T) gets (1, 1, kpts_line), a 3D sphere Γ."""
    return tuple(int(kpts_line) if p else 1 for p in pbc)


def vacuum_box(atoms: Atoms, vacuum: float, periodic: bool) -> Atoms:
    """``atoms`` in an orthorhombic box with at least ``vacuum`` Å of empty space between
    periodic images along every open direction (a cell too small is widened to a multiple
    of BOX_STEP; atoms are centred along open directions; periodic ones are untouched).  ``periodic``: the box is fully
    periodic (plane-wave codes); else the open directions stay open.

    Forces mean the same: only whole-cluster translations and the cell in open directions
    change, and the vacuum keeps images apart.
    """
    box = atoms.copy()
    cell = np.asarray(box.cell)
    open_dirs = [i for i in range(3) if not box.pbc[i]]
    if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-9 and open_dirs:
        raise QmmlError("QM cluster: a non-orthorhombic cell with open directions cannot be "
                        "boxed for a plane-wave code")
    lengths = np.diag(cell).copy()
    for i in open_dirs:
        lo, hi = box.positions[:, i].min(), box.positions[:, i].max()
        if lengths[i] < hi - lo + float(vacuum):  # widened to a whole number of BOX_STEPs,
            # so the cell (and with it the program's restart) survives small displacements
            lengths[i] = BOX_STEP * np.ceil((hi - lo + float(vacuum)) / BOX_STEP)
        box.positions[:, i] += 0.5 * lengths[i] - 0.5 * (lo + hi)
    box.set_cell(np.diag(lengths) if open_dirs else cell)
    if periodic:
        box.pbc = True
    return box


def open_vacuum(atoms: Atoms, original_pbc) -> np.ndarray:
    """Empty width between periodic images along each direction that ``original_pbc``
    marks open (inf along the others): what tests and logs check."""
    gaps = np.full(3, np.inf)
    for i in range(3):
        if not original_pbc[i]:
            gaps[i] = atoms.cell[i, i] - np.ptp(atoms.positions[:, i])
    return gaps
