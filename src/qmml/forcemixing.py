"""Force-mixed QM/ML building blocks: ASE ``ForceQMMM`` from the ``region`` array, fixed
atoms, the NEB image layout, and what every QM/ML optimiser records (run statistics,
checkpoint fingerprints, output frames).

QM atoms get forces from a QM calculation on QM + buffer atoms (through the on-disk QM
cache, so no QM call is ever repeated); every other atom gets ML (SNAP) forces.  The
energy is undefined (ForceQMMM returns 0), so only force-based optimisers make sense.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.qmmm import ForceQMMM
from ase.constraints import FixAtoms

from qmml import QmmlError
from qmml.qmcache import CachedQMCalculator

# ---- building the QM/ML calculator -------------------------------------------------------
QM_CELL_ROUND_OFF = 3.0  # Å: the QM cluster cell in open directions is a multiple of this
QM_RADIUS_KEY = "qm_radius"  # atoms.info: the QM radius (Å, x y z) its cluster cell is cut with
# Å: a carried QM radius is kept while the QM atoms' half-extent is within this of it (the
# rounding itself allows QM_CELL_ROUND_OFF/4; relaxations move QM atoms by tenths of Å)
QM_RADIUS_SLACK = 1.0


def qm_mask_from_region(atoms: Atoms) -> np.ndarray:
    """Boolean QM mask from ``atoms.arrays['region']`` (strings QM/buffer/MM)."""
    if "region" not in atoms.arrays:
        raise QmmlError("input structure has no 'region' array (QM/buffer/MM per atom); "
                        "mark the QM region first (qmml.regions)")
    region = np.asarray(atoms.arrays["region"]).astype(str)
    bad = sorted(set(region) - {"QM", "buffer", "MM"})
    if bad:
        raise QmmlError(f"'region' array: unknown labels {bad} (expected QM, buffer, MM)")
    mask = region == "QM"
    if not mask.any():
        raise QmmlError("'region' array marks no atom as QM")
    return mask


def make_force_qmmm(atoms: Atoms, qm_calc: Calculator, ml_calc: Calculator,
                    buffer_width: float, vacuum: float = 5.0) -> ForceQMMM:
    """ASE ForceQMMM (zero-mean forces) for ``atoms`` with masks from its ``region`` array.

    If the region array has buffer atoms they are used as given (ASE's
    ``set_masks_from_region``); otherwise the buffer is every atom within ``buffer_width``
    of a QM atom, and the region array is filled in accordingly.  The QM cluster cell is
    fixed here, from the structure given, so a resumed run cuts identical clusters.
    """
    qm_mask = qm_mask_from_region(atoms)
    calc = ForceQMMM(atoms, qm_mask, qm_calc, ml_calc, buffer_width=buffer_width,
                     vacuum=vacuum, zero_mean=True, qm_cell_round_off=QM_CELL_ROUND_OFF)
    region = np.asarray(atoms.arrays["region"]).astype(str)
    if (region == "buffer").any():
        calc.set_masks_from_region(region)
    else:
        calc.initialize_qm_buffer_mask(atoms)
        atoms.arrays["region"] = calc.get_region_from_masks(atoms)
    cluster = calc.get_qm_cluster(atoms)  # fixes qm_radius (and so the cluster cell) now
    # ASE rounds the cluster cell (to qm_cell_round_off) on this first call only and
    # rebuilds it unrounded from qm_radius on every later call, so a structure rebuilt
    # from relaxed positions (an NEB end point, a relaxation's output read back) would get
    # a cell a few 0.01 Å different and miss every cached QM result.  Pinning qm_radius
    # to the rounded cell makes the cell the same for any nearby geometry.
    open_dirs = ~cluster.pbc
    calc.qm_radius = np.array(calc.qm_radius, dtype=float)
    calc.qm_radius[open_dirs] = (cluster.cell.diagonal()[open_dirs] / 2.0
                                 - buffer_width - vacuum)
    # Rounding alone still flips where a structure's QM extent sits near a rounding
    # boundary: the relaxed end points of an NEB would get another cell than the
    # relaxations that QM-called them, and miss the cache.  The pinned radius travels with
    # the structure (info, hence extxyz) and is reused while it still fits its QM atoms.
    carried = carried_qm_radius(atoms, qm_mask, open_dirs)
    if carried is not None:
        calc.qm_radius = carried
    atoms.info[QM_RADIUS_KEY] = calc.qm_radius.copy()
    return calc


def carried_qm_radius(atoms: Atoms, qm_mask: np.ndarray, open_dirs: np.ndarray
                      ) -> np.ndarray | None:
    """The QM radius pinned by an earlier calculator of this structure
    (``atoms.info[QM_RADIUS_KEY]``) if its QM atoms still fit it: their half-extent (as
    ASE measures it) within QM_RADIUS_SLACK of it in every open direction, so the
    cluster keeps nearly its vacuum.  None otherwise (none carried, or a region marked
    anew)."""
    from ase.geometry import get_distances

    carried = atoms.info.get(QM_RADIUS_KEY)
    if carried is None:
        return None
    carried = np.array(carried, dtype=float).ravel()
    vectors, _ = get_distances(atoms.positions[qm_mask], cell=atoms.cell, pbc=atoms.pbc)
    extent = np.abs(vectors).max(axis=(0, 1)) / 2.0
    if carried.shape != (3,) or (np.abs(carried - extent)[open_dirs] > QM_RADIUS_SLACK).any():
        return None
    return carried


def apply_fix_mask(atoms: Atoms) -> None:
    """FixAtoms from the bool ``fix_mask`` array (if present)."""
    if "fix_mask" in atoms.arrays:
        mask = np.asarray(atoms.arrays["fix_mask"], dtype=bool)
        atoms.set_constraint(FixAtoms(mask=mask) if mask.any() else [])


def neb_moving_images(n_images: int) -> range:
    """Indices of the images an NEB of ``n_images`` (end points included) moves: all but
    the two end points."""
    return range(1, n_images - 1)


# ---- checkpoints -------------------------------------------------------------------------
def run_fingerprint(images: list[Atoms], *parts) -> str:
    """Identifies a run: starting positions, species and the settings that matter."""
    h = hashlib.sha256()
    for im in images:
        h.update(im.numbers.tobytes())
        h.update(np.ascontiguousarray(im.positions).tobytes())
    h.update(repr(parts).encode())
    return h.hexdigest()[:16]


@dataclass
class RunStats:
    """What a relaxation/NEB did (also written into output provenance)."""

    optimizer: str
    fmax_target: float
    fmax: float = float("nan")
    steps: int = 0
    converged: bool = False
    resumed_from_step: int | None = None
    n_qm_calls: int = 0          # QM evaluations requested by the whole run (real + cached)
    n_qm_real_calls: int = 0     # engine calls (paid) of the whole run, every process
    n_qm_calls_process: int = 0       # QM evaluations requested by this process
    n_qm_real_calls_process: int = 0  # engine calls made by this process
    qm_seconds: float = 0.0      # wall time inside the QM engine (this process)
    wall_seconds: float = 0.0
    fmax_history: list = field(default_factory=list)
    # counts of the earlier processes of this run (from its checkpoint)
    earlier_qm_calls: int = 0
    earlier_qm_real_calls: int = 0

    def start_counting(self, qm: CachedQMCalculator) -> None:
        """From now on, QM calls and time belong to this run."""
        self._since = (qm.n_real_calls, qm.n_cache_hits, qm.qm_seconds, time.perf_counter())

    def count(self, qm: CachedQMCalculator) -> None:
        """Update the QM-call counts and timings since ``start_counting``."""
        real0, hits0, qm_s0, start = self._since
        self.n_qm_real_calls_process = qm.n_real_calls - real0
        self.n_qm_calls_process = self.n_qm_real_calls_process + qm.n_cache_hits - hits0
        self.n_qm_real_calls = self.earlier_qm_real_calls + self.n_qm_real_calls_process
        self.n_qm_calls = self.earlier_qm_calls + self.n_qm_calls_process
        self.qm_seconds = qm.qm_seconds - qm_s0
        self.wall_seconds = time.perf_counter() - start

    def checkpoint_counts(self) -> dict:
        """The run's QM-call counts so far, kept in its checkpoint."""
        return {"n_qm_calls": self.n_qm_calls, "n_qm_real_calls": self.n_qm_real_calls}

    def resume_counts(self, saved: dict, replayed: bool) -> None:
        """Continue the counts of a checkpoint (:meth:`checkpoint_counts` under key
        ``qm_counts``).  ``replayed``: this process requests the earlier evaluations again
        (from the cache), so only the earlier real calls are added."""
        counts = saved.get("qm_counts") or {}
        self.earlier_qm_real_calls = int(counts.get("n_qm_real_calls", 0))
        self.earlier_qm_calls = 0 if replayed else int(counts.get("n_qm_calls", 0))


def largest_norm(vectors: np.ndarray) -> float:
    """Largest Euclidean norm of an (..., 3) array of atomic vectors (forces,
    displacements); 0 for none."""
    return float(np.sqrt((np.asarray(vectors) ** 2).sum(axis=-1)).max(initial=0.0))


def max_force(target) -> float:
    """Largest atomic force of Atoms (constraints applied: fixed atoms do not count) or of
    an NEB (projected forces of its moving images)."""
    return largest_norm(np.asarray(target.get_forces()).reshape(-1, 3))
