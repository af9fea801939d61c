"""SNAP descriptors from LAMMPS ``compute snap``: energy, force and stress rows.

For a configuration with N atoms and a single-element potential with K coefficients:
- ``energy`` (K,): Σ_i D_i, so E = energy·Θ (column 0 is the atom count);
- ``forces`` (3M, K): force rows of the M selected atoms, F = forces·Θ (atom order, xyz);
- ``stress`` (6, K): ASE-convention stress rows (Voigt xx yy zz yz xz xy), σ = stress·Θ.
Force rows are returned per configuration (one configuration in memory at a time) and can
be folded straight into normal equations (GᵀG, GᵀF) without ever stacking all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms
from scipy.linalg.blas import dsyrk

from qmml import QmmlError
from qmml.lmp import LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY

LMP_STYLE_ATOM = 1
from qmml.potential import SNAPPotential, lammps_system, type_elements

_VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


@dataclass
class Descriptors:
    energy: np.ndarray | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    n_atoms: int

    @property
    def energy_per_atom(self) -> np.ndarray:
        return self.energy / self.n_atoms


def compute_snap_command(potential: SNAPPotential, name: str = "qmml_snap",
                         group: str = "all", style: str = "snap") -> str:
    """The ``compute`` line of a SNAP descriptor compute with the potential's parameters."""
    p = potential
    if int(p.param("chemflag")):
        raise QmmlError("explicit multi-element (chemflag 1) SNAP is not supported")
    radii = " ".join(repr(r) for r in p.radii)
    weights = " ".join(repr(w) for w in p.weights)
    keys = ["rmin0", "switchflag", "bzeroflag", "quadraticflag", "bnormflag", "wselfallflag"]
    opts = " ".join(f"{k} {p.param(k)}" for k in keys)
    return (f"compute {name} {group} {style} {p.params['rcutfac']} {p.param('rfac0')} "
            f"{p.twojmax} {radii} {weights} {opts}")


def compute_descriptors(atoms: Atoms, potential: SNAPPotential,
                        force_mask: np.ndarray | None = None, forces: bool = True,
                        stress: bool = False, source: str = "configuration",
                        energy: bool = True) -> Descriptors:
    """Descriptor sums and (optionally masked) force rows of one configuration.

    The descriptor space is the potential's (linear or quadratic, by its quadraticflag).
    ``energy=False`` skips the descriptor sums (``energy`` is then None).

    Without stress rows the per-atom computes ``sna/atom`` (energy) and ``snad/atom`` (force
    rows, only central atoms within the cutoff of a selected atom) are used: equal to
    ``compute snap`` to round-off but 2–5× faster, because ``compute snap`` spends most of
    its time filling and transposing its global (1+3N+6)×K array (quadratic K = 1596).
    """
    _check_species(atoms, potential, source)
    if stress or not (forces or energy):
        return _compute_snap_descriptors(atoms, potential, force_mask, forces, stress)
    n = len(atoms)
    sel = np.arange(n) if force_mask is None else np.flatnonzero(force_mask)
    lmp, prism = lammps_system(atoms, type_elements(atoms, potential))
    try:
        nb = potential.n_coefficients - 1
        cmds = [f"pair_style zero {potential.cutoff + 0.1:.6f}", "pair_coeff * *"]
        if energy:
            cmds.append(compute_snap_command(potential, "qmml_sna", "all", "sna/atom"))
        if forces and sel.size:
            group = "all"
            # a margin: an extra central atom adds nothing to the selected rows, a missing
            # one would drop a real contribution
            centres = _central_atoms(atoms, sel, potential.cutoff + 0.5)
            if centres is not None:
                # snad/atom sums dB_i/dr_k over central atoms i of its group: only atoms
                # within the cutoff of a selected atom k contribute to k's rows
                cmds += _group_commands("qmml_centres", centres)
                group = "qmml_centres"
            cmds.append(compute_snap_command(potential, "qmml_snad", group, "snad/atom"))
        lmp.commands_list(cmds + ["run 0 post no"])
        order = _local_order(lmp, n)
        energy_sum = None
        if energy:
            per_atom = lmp.numpy.extract_compute("qmml_sna", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)
            _check_shape(per_atom, (n, nb), "sna/atom")
            energy_sum = np.empty(nb + 1)
            energy_sum[0] = n
            energy_sum[1:] = per_atom[:n].sum(axis=0)
        force_rows = None
        if forces:
            force_rows = np.zeros((3 * sel.size, nb + 1))
            if sel.size:
                snad = lmp.numpy.extract_compute("qmml_snad", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)
                _check_shape(snad, (n, 3 * nb), "snad/atom")
                # per-atom layout [d/dx (nb), d/dy (nb), d/dz (nb)] -> rows x, y, z per atom
                local = order[sel]
                force_rows[:, 1:] = snad[local].reshape(sel.size * 3, nb)
                force_rows = _rows_to_ase(force_rows, prism)
        return Descriptors(energy_sum, force_rows, None, n)
    finally:
        lmp.close()


def _check_species(atoms: Atoms, potential: SNAPPotential, source: str) -> None:
    if len(potential.elements) != 1:
        raise QmmlError("descriptors: only single-element potentials are supported")
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(potential.elements))
    if unknown:
        raise QmmlError(f"{source}: species {', '.join(unknown)} not in the potential "
                        f"({', '.join(potential.elements)})")


def _check_shape(arr, shape: tuple, what: str) -> None:
    if arr is None or arr.shape[1] != shape[1] or arr.shape[0] < shape[0]:
        got = None if arr is None else arr.shape
        raise QmmlError(f"compute {what} returned {got}, expected {shape}")


def _local_order(lmp, n: int) -> np.ndarray:
    """LAMMPS local index of each ASE atom (atom IDs are ASE index + 1)."""
    ids = lmp.numpy.extract_atom("id")[:n]
    order = np.empty(n, dtype=np.int64)
    order[ids - 1] = np.arange(n)
    return order


def _central_atoms(atoms: Atoms, sel: np.ndarray, cutoff: float) -> np.ndarray | None:
    """Indices of atoms within ``cutoff`` of a selected atom (None: that is every atom)."""
    n = len(atoms)
    if sel.size == n:
        return None
    from matscipy.neighbours import neighbour_list  # C implementation, ~30x ASE's

    first, second = neighbour_list("ij", atoms, cutoff)
    near = np.zeros(n, dtype=bool)
    near[sel] = True
    near[first[np.isin(second, sel)]] = True
    return None if near.all() else np.flatnonzero(near)


def _group_commands(name: str, indices: np.ndarray) -> list[str]:
    """``group`` commands for ASE indices (IDs = index + 1), in chunks of short lines."""
    ids = indices + 1
    return [f"group {name} id " + " ".join(map(str, ids[k:k + 2000]))
            for k in range(0, ids.size, 2000)]


def _compute_snap_descriptors(atoms: Atoms, potential: SNAPPotential,
                              force_mask: np.ndarray | None = None, forces: bool = True,
                              stress: bool = False) -> Descriptors:
    """The plain ``compute snap`` path (needed for stress rows; the reference for tests)."""
    lmp, prism = lammps_system(atoms, type_elements(atoms, potential))
    try:
        cut = potential.cutoff + 0.1
        lmp.commands_list([f"pair_style zero {cut:.6f}", "pair_coeff * *",
                           compute_snap_command(potential),
                           "thermo_style custom step c_qmml_snap[1][1]", "run 0 post no"])
        n = len(atoms)
        arr = lmp.numpy.extract_compute("qmml_snap", LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY)
        nb = potential.n_coefficients - 1
        if arr.shape != (1 + 3 * n + 6, nb + 1):
            raise QmmlError(f"compute snap returned {arr.shape}, expected "
                            f"{(1 + 3 * n + 6, nb + 1)}")
        energy = np.empty(nb + 1)
        energy[0] = n
        energy[1:] = arr[0, :nb]
        force_rows = None
        if forces:
            sel = np.arange(n) if force_mask is None else np.flatnonzero(force_mask)
            rows = (1 + 3 * sel[:, None] + np.arange(3)).ravel()
            force_rows = np.zeros((rows.size, nb + 1))
            force_rows[:, 1:] = arr[rows, :nb]
            force_rows = _rows_to_ase(force_rows, prism)
        stress_rows = None
        if stress:
            vir = np.zeros((6, nb + 1))
            vir[:, 1:] = arr[1 + 3 * n:, :nb]
            tensors = np.zeros((nb + 1, 3, 3))
            for k, (i, j) in enumerate(_VOIGT):
                tensors[:, i, j] = tensors[:, j, i] = vir[k]
            tensors = np.array([prism.tensor2_to_ase(t) for t in tensors]) if _rotated(prism) \
                else tensors
            stress_rows = -np.array([tensors[:, i, j] for i, j in _VOIGT]) / atoms.get_volume()
        return Descriptors(energy, force_rows, stress_rows, n)
    finally:
        lmp.close()


def _rotated(prism) -> bool:
    return not np.allclose(prism.rot_mat, np.eye(3), atol=1e-14)


def _rows_to_ase(rows: np.ndarray, prism) -> np.ndarray:
    """Rotate force rows (x,y,z per atom) from the LAMMPS frame back to the ASE frame."""
    if not _rotated(prism):
        return rows
    k = rows.shape[1]
    per_atom = rows.reshape(-1, 3, k).transpose(0, 2, 1)  # (M, K, 3)
    return prism.vector_to_ase(per_atom.reshape(-1, 3)).reshape(-1, k, 3).transpose(0, 2, 1) \
        .reshape(-1, k)


def energy_rows(structures: Iterable[Atoms], potential: SNAPPotential,
                source: str = "hard set", workers: int = 1) -> np.ndarray:
    """Per-atom mean descriptor of each configuration: row·Θ = energy per atom.

    ``workers`` > 1 spreads the configurations over that many processes.
    """
    structures = list(structures)
    if not structures:
        raise QmmlError(f"{source}: no configurations")
    jobs = [(a, f"{source} frame {i}") for i, a in enumerate(structures)]
    return np.array(_map(_energy_row_job, potential, jobs, workers))


def _energy_row_job(potential: SNAPPotential, job) -> np.ndarray:
    atoms, source = job
    return compute_descriptors(atoms, potential, forces=False, source=source).energy_per_atom


@dataclass
class NormalEquations:
    """Accumulates GᵀG, GᵀF and FᵀF over force rows, one configuration at a time."""

    n_coefficients: int
    gtg: np.ndarray = field(init=False)
    gtf: np.ndarray = field(init=False)
    ftf: float = 0.0
    n_rows: int = 0

    def __post_init__(self) -> None:
        k = self.n_coefficients
        self.gtg = np.zeros((k, k), order="F")
        self.gtf = np.zeros(k)

    def add(self, rows: np.ndarray, targets: np.ndarray | None = None) -> None:
        if rows.shape[0] == 0:
            return
        # symmetric rank-k update, upper triangle only (half the flops of rows.T @ rows)
        self.gtg = dsyrk(1.0, rows, beta=1.0, c=self.gtg, trans=1, lower=0,
                         overwrite_c=1)
        if targets is not None:
            t = np.asarray(targets, dtype=float).ravel()
            self.gtf += rows.T @ t
            self.ftf += float(t @ t)
        self.n_rows += rows.shape[0]

    def merge(self, other: "NormalEquations") -> None:
        """Add another accumulator's sums (both hold the upper triangle of GᵀG)."""
        self.gtg += np.triu(other.gtg)
        self.gtf += other.gtf
        self.ftf += other.ftf
        self.n_rows += other.n_rows

    def matrix(self) -> np.ndarray:
        """The full symmetric GᵀG."""
        upper = np.triu(self.gtg)
        return upper + np.triu(upper, 1).T

    def residual_sq(self, theta: np.ndarray) -> float:
        """||GΘ − F||² from the accumulated sums."""
        g = self.matrix()
        return float(theta @ g @ theta - 2 * theta @ self.gtf + self.ftf)


# ---- force normal equations over many configurations, optionally in parallel ------------
@dataclass
class ForceSums:
    """GᵀG, GᵀF sums of many configurations plus the force rows asked to be kept."""

    normal: NormalEquations
    kept_rows: list[np.ndarray]
    kept_targets: list[np.ndarray]


def force_normal_equations(frames: Sequence[Atoms], potential: SNAPPotential,
                           force_masks: Sequence[np.ndarray | None] | None = None,
                           targets: Sequence[np.ndarray] | None = None,
                           keep_masks: Sequence[np.ndarray | None] | None = None,
                           sources: Sequence[str] | None = None,
                           workers: int = 1) -> ForceSums:
    """Normal equations of the force rows of ``frames`` (one configuration in memory at a time).

    ``force_masks[f]``: atoms of frame f whose rows enter (None: all).  ``targets[f]``:
    (n_atoms, 3) target forces (rows of masked-out atoms are ignored).  ``keep_masks[f]``:
    atoms whose rows (and targets) are also returned explicitly, in frame order.
    ``workers`` > 1: frames are spread over that many processes (each with its own LAMMPS);
    the sums are the same up to the order of floating-point additions.
    """
    n = len(frames)
    masks = list(force_masks) if force_masks is not None else [None] * n
    tgts = list(targets) if targets is not None else [None] * n
    keeps = list(keep_masks) if keep_masks is not None else [None] * n
    names = list(sources) if sources is not None else [f"frame {i}" for i in range(n)]
    if not (len(masks) == len(tgts) == len(keeps) == len(names) == n):
        raise QmmlError("force_normal_equations: per-frame lists differ in length")
    jobs = list(zip(frames, masks, tgts, keeps, names))
    chunks = _chunks(jobs, [len(a) for a in frames], workers)
    total = ForceSums(NormalEquations(potential.n_coefficients), [], [])
    for part in _map(_force_chunk_job, potential, chunks, workers):
        total.normal.merge(part.normal)
        total.kept_rows += part.kept_rows
        total.kept_targets += part.kept_targets
    return total


def _force_chunk_job(potential: SNAPPotential, chunk) -> ForceSums:
    sums = ForceSums(NormalEquations(potential.n_coefficients), [], [])
    for atoms, mask, target, keep, source in chunk:
        sel = np.ones(len(atoms), bool) if mask is None else np.asarray(mask, bool)
        if not sel.any():
            continue
        rows = compute_descriptors(atoms, potential, force_mask=sel, source=source,
                                   energy=False).forces
        f = None if target is None else np.asarray(target, float)[sel].ravel()
        sums.normal.add(rows, f)
        if keep is not None:
            kept = np.repeat(np.asarray(keep, bool)[sel], 3)
            sums.kept_rows.append(rows[kept])
            sums.kept_targets.append(f[kept] if f is not None else np.zeros(int(kept.sum())))
    return sums


def _chunks(jobs: list, sizes: list[int], workers: int) -> list[list]:
    """Consecutive chunks of about equal atom count, a few per worker (load balance vs
    the cost of sending one GᵀG back per chunk)."""
    if workers <= 1 or len(jobs) <= 1:
        return [jobs]
    n_chunks = min(len(jobs), 4 * workers)
    bounds = np.searchsorted(np.cumsum(sizes), np.linspace(0, sum(sizes), n_chunks + 1)[1:-1])
    edges = [0, *sorted(set(int(b) + 1 for b in bounds)), len(jobs)]
    return [jobs[a:b] for a, b in zip(edges, edges[1:]) if b > a]


# A pool of spawned processes, kept for the life of the program: starting a worker costs
# ~1 s of imports, paid once.  "spawn", not fork: LAMMPS has initialised MPI in the parent.
_POOL = None
_POOL_SIZE = 0


def _map(func, potential: SNAPPotential, items: list, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [func(potential, item) for item in items]
    from functools import partial

    return _pool(workers).map(partial(func, potential), items, chunksize=1)


def _pool(workers: int):
    global _POOL, _POOL_SIZE
    if _POOL is not None and _POOL_SIZE == workers:
        return _POOL
    import atexit
    import multiprocessing as mp
    import os

    if _POOL is not None:
        _POOL.terminate()
    # one BLAS thread per worker: the workers already fill the cores
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        _POOL = mp.get_context("spawn").Pool(workers)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _POOL_SIZE = workers
    atexit.register(_POOL.terminate)
    return _POOL


def close_workers() -> None:
    """Stop the worker processes (they are otherwise kept until the program exits)."""
    global _POOL, _POOL_SIZE
    if _POOL is not None:
        _POOL.close()
        _POOL.join()
    _POOL, _POOL_SIZE = None, 0


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
