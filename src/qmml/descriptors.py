"""SNAP descriptors from LAMMPS ``compute snap``: energy, force and stress rows.

For a configuration with N atoms and a single-element potential with K coefficients:
- ``energy`` (K,): Σ_i D_i, so E = energy·Θ (column 0 is the atom count);
- ``forces`` (3M, K): force rows of the M selected atoms, F = forces·Θ (atom order, xyz);
- ``stress`` (6, K): ASE-convention stress rows (Voigt xx yy zz yz xz xy), σ = stress·Θ.
Force rows are returned per configuration (one configuration in memory at a time) and can
be folded straight into normal equations (GᵀG, GᵀF) without ever stacking all of them.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from itertools import groupby
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ase import Atoms
from scipy.linalg.blas import dsyrk
from scipy.sparse import csr_matrix

from qmml import QmmlError
from qmml.lmp import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY
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

    Energy-only, and quadratic force rows without stress, use the per-atom computes
    ``sna/atom`` (energy) and ``snad/atom`` (force rows, evaluated on open clusters of
    bounded size, see ``_add_force_rows``): equal to ``compute snap`` to round-off, and
    faster (energy only ~5×, quadratic rows ~1.5×) since ``compute snap`` also fills and
    transposes its global (1+3N+6)×K array (K = 1596) and computes derivatives it then
    does not need.
    """
    _check_species(atoms, potential, source)
    # linear space with force rows: compute snap does energy and forces in one pass and is
    # as fast as the two per-atom computes together
    if stress or not (forces or energy) or (forces and not potential.quadratic):
        return _compute_snap_descriptors(atoms, potential, force_mask, forces, stress)
    n = len(atoms)
    sel = np.arange(n) if force_mask is None else np.flatnonzero(force_mask)
    energy_sum = _energy_sum(atoms, potential) if energy else None
    force_rows = None
    if forces:
        force_rows = np.zeros((3 * sel.size, potential.n_coefficients))
        if sel.size:
            _add_force_rows(force_rows, atoms, potential, sel)
    return Descriptors(energy_sum, force_rows, None, n)


# Largest number of atoms (periodic images included) in one snad/atom run.  Its per-atom
# array has 3·(K−1) columns (37 kB per atom in the quadratic 2J=8 space), so a ~2000-atom
# slab one Burgers vector thick would need 0.3 GB for its 6,600 periodic images alone.
_RUN_ATOMS = 2000


def _spatial_split(indices: np.ndarray, positions: np.ndarray, parts: int) -> list[np.ndarray]:
    """``indices`` cut into ``parts`` equal-count slabs along the longest extent of their
    ``positions`` (rows of ``positions`` belong to ``indices``), in slab order."""
    axis = int(np.argmax(np.ptp(positions, axis=0)))
    return np.array_split(indices[np.argsort(positions[:, axis], kind="stable")], parts)


def _compute_only(potential: SNAPPotential) -> list[str]:
    """LAMMPS lines before a descriptor compute: no forces, and since atoms do not move in
    ``run 0``, no neighbour skin (the ghost shell is just the SNAP cutoff)."""
    return [f"pair_style zero {potential.cutoff + 1e-3:.6f}", "pair_coeff * *",
            "neighbor 0.0 bin"]


def _energy_sum(atoms: Atoms, potential: SNAPPotential) -> np.ndarray:
    """Σ_i D_i from ``compute sna/atom`` (column 0: the atom count)."""
    n, nb = len(atoms), potential.n_coefficients - 1
    lmp, _ = lammps_system(atoms, type_elements(atoms, potential))
    try:
        lmp.commands_list(_compute_only(potential) + [
            compute_snap_command(potential, "qmml_sna", "all", "sna/atom"), "run 0 post no"])
        per_atom = lmp.numpy.extract_compute("qmml_sna", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)
        _check_shape(per_atom, (n, nb), "sna/atom")
        energy_sum = np.empty(nb + 1)
        energy_sum[0] = n
        energy_sum[1:] = per_atom[:n].sum(axis=0)
        return energy_sum
    finally:
        lmp.close()


def _add_force_rows(force_rows: np.ndarray, atoms: Atoms, potential: SNAPPotential,
                    sel: np.ndarray) -> None:
    """Add the force rows of the selected atoms ``sel`` to ``force_rows`` (3·|sel|, K).

    The row of atom k is Σ_i ∂D_i/∂r_k over the central atoms i within the cutoff of k.
    The central atoms are split into spatial chunks, and each chunk is evaluated by
    ``compute snad/atom`` as an open cluster: the chunk plus every neighbour within the
    cutoff, periodic images placed explicitly.  A contribution to an image goes to the row
    of its atom, and the chunks' partial rows add up to the whole.  Memory per run is
    then bounded (``_RUN_ATOMS``) instead of growing with the image's ghost atoms.
    """
    from matscipy.neighbours import neighbour_list  # C implementation, ~30x ASE's

    n, nb = len(atoms), potential.n_coefficients - 1
    cut = potential.cutoff + 1e-3  # the pair-style cutoff of _compute_only
    first, second, shift = neighbour_list("ijS", atoms, cut)
    dest = np.full(n, -1)
    dest[sel] = np.arange(sel.size)
    # central atoms: the selected ones and every atom with a selected neighbour
    is_centre = dest >= 0
    is_centre[first[dest[second] >= 0]] = True
    centres = np.flatnonzero(is_centre)
    # a neighbour is an (atom, periodic shift) pair; the key numbers them uniquely
    span = int(np.abs(shift).max(initial=0)) + 1
    key = second * (2 * span + 1) ** 3 + ((shift + span) @ ((2 * span + 1) ** np.arange(3)))
    n_chunks = -(-np.unique(key[is_centre[first]]).size // _RUN_ATOMS)
    pos = atoms.positions
    cell = atoms.cell.array
    elements = type_elements(atoms, potential)
    rows3 = force_rows.reshape(sel.size, 3, nb + 1)[:, :, 1:]
    for chunk in _spatial_split(centres, pos[centres], max(n_chunks, 1)):
        in_chunk = np.zeros(n, dtype=bool)
        in_chunk[chunk] = True
        pairs = np.flatnonzero(in_chunk[first])
        _, keep = np.unique(key[pairs], return_index=True)
        pairs = pairs[keep]
        # the chunk's own atoms first (unshifted, LAMMPS IDs 1..len(chunk)); images and
        # other neighbours after them
        own = (shift[pairs] == 0).all(axis=1) & in_chunk[second[pairs]]
        pairs = pairs[~own]
        index = np.concatenate([chunk, second[pairs]])
        where = np.concatenate([pos[chunk], pos[second[pairs]] + shift[pairs] @ cell])
        cluster = Atoms(atoms.numbers[index], where, pbc=False,
                        cell=np.diag(np.ptp(where, axis=0) + 1.0))
        lmp, _ = lammps_system(cluster, elements)
        try:
            lmp.commands_list(_compute_only(potential) + [
                f"group qmml_centres id 1:{chunk.size}",
                compute_snap_command(potential, "qmml_snad", "qmml_centres", "snad/atom"),
                "run 0 post no"])
            snad = lmp.numpy.extract_compute("qmml_snad", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)
            _check_shape(snad, (index.size, 3 * nb), "snad/atom")
            local = _local_order(lmp, index.size)
            # sum each atom's images into its row: a 0/1 matrix (touched rows × cluster
            # atoms) times LAMMPS' per-atom array, which it reads once and in place
            target = dest[index]
            wanted = np.flatnonzero(target >= 0)
            touched, row = np.unique(target[wanted], return_inverse=True)
            images = csr_matrix((np.ones(wanted.size), (row, local[wanted])),
                                shape=(touched.size, snad.shape[0]))
            # per-atom layout [d/dx (nb), d/dy (nb), d/dz (nb)]
            rows3[touched] += (images @ snad).reshape(-1, 3, nb)
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
                source: str = "hard set", workers: int = 1,
                cache: "DescriptorCache | None" = None) -> np.ndarray:
    """Per-atom mean descriptor of each configuration: row·Θ = energy per atom.

    ``workers`` > 1 spreads the configurations over that many processes; with ``cache``
    the rows of a set computed before (same frames, same order) are read instead.
    """
    structures = list(structures)
    if not structures:
        raise QmmlError(f"{source}: no configurations")
    return descriptor_sums(potential, energy_sets=[structures], energy_sources=[source],
                           workers=workers, cache=cache)[1][0]


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
        # rows.T of C-ordered rows is Fortran-ordered: BLAS reads it in place (no copy)
        self.gtg = dsyrk(1.0, rows.T, beta=1.0, c=self.gtg, trans=0, lower=0,
                         overwrite_c=1)
        if targets is not None:
            t = np.asarray(targets, dtype=float).ravel()
            self.gtf += rows.T @ t
            self.ftf += float(t @ t)
        self.n_rows += rows.shape[0]

    def merge(self, other: "NormalEquations") -> None:
        """Add another accumulator's sums.  Both hold the upper triangle of GᵀG and zeros
        below it (dsyrk never writes there), so a plain sum needs no 20 MB np.triu copy."""
        self.gtg += other.gtg
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

    def rmse(self, theta: np.ndarray) -> float:
        """Root mean square of the force-component errors GΘ − F (no targets: of GΘ)."""
        return float(np.sqrt(max(self.residual_sq(theta), 0.0) / self.n_rows))


# ---- descriptor sums over many configurations, optionally in parallel -------------------
@dataclass
class ForceSet:
    """Configurations whose force rows go into one set of normal equations.

    ``force_masks[f]``: atoms of frame f whose rows enter (None: all).  ``targets[f]``:
    (n_atoms, 3) target forces (None: no GᵀF).  ``keep_masks[f]``: atoms whose rows (and
    targets) are also returned explicitly.
    """

    frames: Sequence[Atoms]
    force_masks: Sequence[np.ndarray | None] | None = None
    targets: Sequence[np.ndarray | None] | None = None
    keep_masks: Sequence[np.ndarray | None] | None = None
    source: str = "configurations"
    sources: Sequence[str] | None = None  # per-frame names for error messages

    def jobs(self) -> list[tuple]:
        n = len(self.frames)
        per_frame = [list(x) if x is not None else [None] * n
                     for x in (self.force_masks, self.targets, self.keep_masks)]
        if any(len(x) != n for x in per_frame):
            raise QmmlError(f"{self.source}: per-frame masks/targets differ in length "
                            f"from the {n} frames")
        names = list(self.sources) if self.sources is not None else \
            [f"{self.source} frame {f}" for f in range(n)]
        if len(names) != n:
            raise QmmlError(f"{self.source}: {len(names)} frame names for {n} frames")
        return [(f, a, *(x[f] for x in per_frame), names[f]) for f, a in enumerate(self.frames)]


@dataclass
class ForceSums:
    """GᵀG, GᵀF sums of a ForceSet plus the rows asked to be kept (frame order)."""

    normal: NormalEquations
    kept_rows: list[np.ndarray]
    kept_targets: list[np.ndarray]


def force_normal_equations(frames: Sequence[Atoms], potential: SNAPPotential,
                           force_masks=None, targets=None, keep_masks=None,
                           source: str = "configurations", workers: int = 1) -> ForceSums:
    """Normal equations of the force rows of ``frames`` (see ForceSet for the arguments)."""
    return descriptor_sums(potential, [ForceSet(frames, force_masks, targets, keep_masks,
                                                source)], workers=workers)[0][0]


def descriptor_sums(potential: SNAPPotential, force_sets: Sequence[ForceSet] = (),
                    energy_sets: Sequence[Sequence[Atoms]] = (),
                    energy_sources: Sequence[str] | None = None, workers: int = 1,
                    cache: "DescriptorCache | None" = None
                    ) -> tuple[list[ForceSums], list[np.ndarray]]:
    """Force normal equations of each ForceSet and per-atom energy rows of each energy set.

    Only one configuration's rows are in memory per process at a time.  With ``workers``
    > 1 every configuration of every set is a job for a pool of that many processes (each
    with its own LAMMPS), largest first so the small ones fill the gaps at the end; the
    sums equal the serial ones up to the order of floating-point additions.  With a
    ``cache``, a set whose sums are stored there is read instead of computed, and every
    computed set is stored.
    """
    sources = list(energy_sources) if energy_sources is not None else \
        [f"energy set {k}" for k in range(len(energy_sets))]
    force_jobs = [fs.jobs() for fs in force_sets]  # also checks the per-frame lengths
    force_keys = [cache.key(potential, "force", jobs) if cache else None
                  for jobs in force_jobs]
    energy_keys = [cache.key(potential, "energy", [(a,) for a in frames]) if cache else None
                   for frames in energy_sets]
    sums: list[ForceSums | None] = [cache.load_force_sums(key, fs.source) if cache else None
                                    for key, fs in zip(force_keys, force_sets)]
    rows: list[np.ndarray | None] = [cache.load_rows(key, source) if cache else None
                                     for key, source in zip(energy_keys, sources)]
    jobs = []  # (cost, kind, set index, payload)
    for k, set_jobs in enumerate(force_jobs):
        if sums[k] is None:
            jobs += [(3.0 * len(job[1]), "force", k, ((job[0], 0), *job[1:]))
                     for job in set_jobs]
    for k, frames in enumerate(energy_sets):
        if rows[k] is None:
            jobs += [(0.3 * len(a), "energy", k, (f, a, f"{sources[k]} frame {f}"))
                     for f, a in enumerate(frames)]
    jobs.sort(key=lambda j: -j[0])
    jobs = _balanced(jobs, workers)
    new_sums = {k: ForceSums(NormalEquations(potential.n_coefficients), [], [])
                for k, s in enumerate(sums) if s is None}
    kept: dict[int, dict] = {k: {} for k in new_sums}
    energies: dict[int, dict] = {k: {} for k, r in enumerate(rows) if r is None}
    for part in _map(_chunk_job, potential, _chunks(jobs, workers), workers):
        for k, normal in part["normal"].items():
            new_sums[k].normal.merge(normal)
        for (k, f), kept_rows in part["kept"].items():  # f: (frame, part of frame)
            kept[k][f] = kept_rows
        for (k, f), row in part["energy"].items():
            energies[k][f] = row
    for k, s in new_sums.items():
        for _, group in groupby(sorted(kept[k]), key=lambda f: f[0]):
            parts = [kept[k][f] for f in group]
            # a frame split into parts: its kept rows back in atom order
            order = np.argsort(np.concatenate([atoms for *_, atoms in parts]), kind="stable")
            rows3 = (3 * order[:, None] + np.arange(3)).ravel()
            s.kept_rows.append(np.vstack([rows for rows, *_ in parts])[rows3])
            s.kept_targets.append(np.concatenate([t for _, t, _ in parts])[rows3])
        sums[k] = s
        if cache:
            cache.store_force_sums(force_keys[k], s, force_sets[k].source)
    for k, e in energies.items():
        rows[k] = np.array([e[f] for f in range(len(e))])
        if cache:
            cache.store_rows(energy_keys[k], rows[k], sources[k])
    return sums, rows


class DescriptorCache:
    """Descriptor sums of whole sets in a folder, found again by their content.

    An entry's name is a hash of everything the sums depend on: the descriptor parameters
    (the ``compute`` line, which includes the quadratic flag), the species, and every
    frame's numbers, positions, cell, pbc, masks and targets bit for bit, plus the cache
    format and qmml version.  A changed input therefore misses instead of returning stale
    sums.  Retraining with new weights (λ0, λS) or new targets against the same hard and
    soft sets then computes only what changed.  An unreadable entry is a miss.
    ``read`` and ``computed`` name the sets found and the sets computed, in order.
    """

    FORMAT = "1"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.read: list[str] = []
        self.computed: list[str] = []

    def key(self, potential: SNAPPotential, kind: str, jobs: Sequence[tuple]) -> str:
        import hashlib

        from qmml import __version__

        h = hashlib.sha256()
        for text in (self.FORMAT, __version__, kind, compute_snap_command(potential),
                     " ".join(potential.elements)):
            h.update(text.encode() + b"\0")
        for job in jobs:
            atoms = next(x for x in job if isinstance(x, Atoms))
            parts = [atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc]
            parts += [x for x in job if x is None or isinstance(x, np.ndarray)]
            for x in parts:  # None is hashed as a marker, distinct from any array
                h.update(b"N" if x is None else np.ascontiguousarray(x).tobytes() + b"|")
        return f"{kind}-{h.hexdigest()[:32]}"

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def _load(self, key: str) -> dict | None:
        try:
            with np.load(self._path(key)) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def _store(self, key: str, arrays: dict) -> None:
        from qmml.io import atomic_writer

        with atomic_writer(self._path(key), "wb") as fh:
            np.savez(fh, **arrays)

    def load_rows(self, key: str, name: str) -> np.ndarray | None:
        data = self._load(key)
        if data is None or "rows" not in data:
            return None
        self.read.append(name)
        return data["rows"]

    def store_rows(self, key: str, rows: np.ndarray, name: str) -> None:
        self._store(key, {"rows": rows})
        self.computed.append(name)

    def load_force_sums(self, key: str, name: str) -> ForceSums | None:
        data = self._load(key)
        if data is None or "gtg_upper" not in data:
            return None
        self.read.append(name)
        k = data["gtf"].size
        normal = NormalEquations(k)
        normal.gtg[np.triu_indices(k)] = data["gtg_upper"]
        normal.gtf[:] = data["gtf"]
        normal.ftf, normal.n_rows = float(data["ftf"]), int(data["n_rows"])
        counts = data["kept_counts"]
        if counts.size == 0:
            return ForceSums(normal, [], [])
        bounds = np.cumsum(counts)[:-1]
        return ForceSums(normal, np.split(data["kept_rows"], bounds),
                         np.split(data["kept_targets"], bounds))

    def store_force_sums(self, key: str, sums: ForceSums, name: str) -> None:
        self.computed.append(name)
        n = sums.normal
        k = n.n_coefficients
        self._store(key, {
            "gtg_upper": n.gtg[np.triu_indices(k)], "gtf": n.gtf, "ftf": np.float64(n.ftf),
            "n_rows": np.int64(n.n_rows),
            "kept_counts": np.array([r.shape[0] for r in sums.kept_rows], dtype=np.int64),
            "kept_rows": np.vstack(sums.kept_rows) if sums.kept_rows else np.zeros((0, k)),
            "kept_targets": np.concatenate(sums.kept_targets) if sums.kept_targets
            else np.zeros(0)})


def _balanced(jobs: list, workers: int) -> list:
    """Split the force jobs that would leave workers idle at the end.

    Jobs are sorted by cost.  The large force jobs (at least half the largest cost) are
    the bulk of the work; when their count is not a multiple of ``workers``, the last
    ones are split into ``workers`` parts by their selected atoms (halves of the frame
    along its longest extent).  Each part computes complete rows for its own atoms, so
    the parts' normal equations add up to the frame's; the price is the central atoms
    near the cut, which both parts evaluate (~5 % of a 2000-atom image).
    """
    force = [j for j in jobs if j[1] == "force"]
    if workers <= 1 or not force:
        return jobs
    big = [j for j in force if j[0] >= force[0][0] / 2]
    tail = {id(j) for j in big[len(big) - len(big) % workers:]}
    out = []
    for job in jobs:
        out += _split_force_job(job, workers) if id(job) in tail else [job]
    return sorted(out, key=lambda j: -j[0])


def _split_force_job(job: tuple, parts: int) -> list[tuple]:
    cost, kind, k, (f, atoms, mask, target, keep, source) = job
    sel = np.arange(len(atoms)) if mask is None else np.flatnonzero(mask)
    if sel.size < parts:
        return [job]
    out = []
    for p, piece in enumerate(_spatial_split(sel, atoms.positions[sel], parts)):
        sub = np.zeros(len(atoms), dtype=bool)
        sub[np.sort(piece)] = True
        out.append((cost / parts, kind, k, ((f[0], p), atoms, sub, target, keep, source)))
    return out


def _chunks(jobs: list, workers: int) -> list[list]:
    """Group consecutive small jobs so each chunk costs at least ~1/2 of the largest job:
    every chunk returns its own GᵀG (20 MB in the quadratic space) to be sent to and added
    by the main process; half-size chunks still balance the load of the last jobs."""
    if not jobs:
        return []
    floor = jobs[0][0] / 2 if workers > 1 else float("inf")
    chunks, current, cost = [], [], 0.0
    for job in jobs:
        current.append(job)
        cost += job[0]
        if cost >= floor:
            chunks.append(current)
            current, cost = [], 0.0
    if current:
        chunks.append(current)
    return chunks


def _chunk_job(potential: SNAPPotential, chunk: list) -> dict:
    try:
        return _compute_chunk(potential, chunk)
    finally:
        _release_free_memory()


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise): an idle worker
    then holds ~100 MB instead of its last image's ~300 MB while the main process solves."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to release
        pass


def _compute_chunk(potential: SNAPPotential, chunk: list) -> dict:
    out: dict = {"normal": {}, "kept": {}, "energy": {}}
    for _, kind, k, payload in chunk:
        if kind == "energy":
            f, atoms, source = payload
            out["energy"][(k, f)] = compute_descriptors(
                atoms, potential, forces=False, source=source).energy_per_atom
            continue
        f, atoms, mask, target, keep, source = payload
        sel = np.ones(len(atoms), bool) if mask is None else np.asarray(mask, bool)
        if not sel.any():
            continue
        rows = compute_descriptors(atoms, potential, force_mask=sel, source=source,
                                   energy=False).forces
        t = None if target is None else np.asarray(target, float)[sel].ravel()
        normal = out["normal"].setdefault(k, NormalEquations(potential.n_coefficients))
        normal.add(rows, t)
        if keep is not None:
            rows_kept = np.repeat(np.asarray(keep, bool)[sel], 3)
            out["kept"][(k, f)] = (rows[rows_kept], t[rows_kept] if t is not None
                                   else np.zeros(int(rows_kept.sum())),
                                   np.flatnonzero(np.asarray(keep, bool) & sel))
    return out


# A pool of spawned processes, kept for the life of the program: starting a worker costs
# ~1 s of imports, paid once.  "spawn", not fork: LAMMPS has initialised MPI in the parent.
_POOL = None
_POOL_SIZE = 0


def _map(func, potential: SNAPPotential, items: list, workers: int):
    """func(potential, item) for every item, in item order (in parallel when workers > 1)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield func(potential, item)
        return
    from concurrent.futures.process import BrokenProcessPool

    pool = _pool(workers)
    with _one_blas_thread():
        futures = [pool.submit(func, potential, item) for item in items]  # largest first
    # results in submission order, so the caller's sums are added in the same order on
    # every run: the same inputs give a bit-identical potential.  Each future is dropped
    # once read: a finished one holds a 20 MB GᵀG (quadratic space) until released
    futures.reverse()
    while futures:
        future = futures.pop()
        try:
            yield future.result()
        except BrokenProcessPool:
            close_workers()
            raise QmmlError(f"descriptor worker processes died (workers={workers}); a "
                            "program read from stdin cannot start them, use workers=1 "
                            "there") from None


@contextmanager
def _one_blas_thread():
    """Workers start on demand during submit and inherit the environment: one BLAS thread
    each, so that they fill the cores without oversubscribing them."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_workers(workers: int) -> None:
    """Start the worker processes now, so their ~1 s of start-up and imports overlaps the
    caller's own work (reading the input files) instead of preceding the first job."""
    if workers > 1:
        pool = _pool(workers)
        with _one_blas_thread():
            for _ in range(workers):  # each submit finds no idle worker and spawns one
                pool.submit(_imported)


def _imported() -> int:
    """A no-op whose unpickling in a worker imports this module (numpy, ASE, LAMMPS)."""
    return os.getpid()


def _pool(workers: int):
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE != workers:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        close_workers()
        _POOL = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        _POOL_SIZE = workers
    return _POOL


def close_workers() -> None:
    """Stop the worker processes (they are otherwise kept until the program exits)."""
    global _POOL, _POOL_SIZE
    if _POOL is not None:
        _POOL.shutdown(wait=True)
    _POOL, _POOL_SIZE = None, 0


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
