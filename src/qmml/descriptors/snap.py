"""SNAP descriptors of one configuration from LAMMPS: energy, force and stress rows.

For a configuration with N atoms and a single-element potential with K coefficients:
- ``energy`` (K,): Σ_i D_i, so E = energy·Θ (column 0 is the atom count);
- ``forces`` (3M, K): force rows of the M selected atoms, F = forces·Θ (atom order, xyz);
- ``stress`` (6, K): ASE-convention stress rows (Voigt xx yy zz yz xz xy), σ = stress·Θ.
Force rows are returned per configuration (one configuration in memory at a time) and can
be folded straight into normal equations (GᵀG, GᵀF) without ever stacking all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
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
