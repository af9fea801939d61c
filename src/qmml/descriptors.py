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
from typing import Iterable

import numpy as np
from ase import Atoms
from scipy.linalg.blas import dsyrk

from qmml import QmmlError
from qmml.lmp import LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY
from qmml.potential import SNAPPotential, lammps_system, type_elements

_VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


@dataclass
class Descriptors:
    energy: np.ndarray
    forces: np.ndarray | None
    stress: np.ndarray | None
    n_atoms: int

    @property
    def energy_per_atom(self) -> np.ndarray:
        return self.energy / self.n_atoms


def compute_snap_command(potential: SNAPPotential) -> str:
    p = potential
    if int(p.param("chemflag")):
        raise QmmlError("explicit multi-element (chemflag 1) SNAP is not supported")
    radii = " ".join(repr(r) for r in p.radii)
    weights = " ".join(repr(w) for w in p.weights)
    keys = ["rmin0", "switchflag", "bzeroflag", "quadraticflag", "bnormflag", "wselfallflag"]
    opts = " ".join(f"{k} {p.param(k)}" for k in keys)
    return (f"compute qmml_snap all snap {p.params['rcutfac']} {p.param('rfac0')} "
            f"{p.twojmax} {radii} {weights} {opts}")


def compute_descriptors(atoms: Atoms, potential: SNAPPotential,
                        force_mask: np.ndarray | None = None, forces: bool = True,
                        stress: bool = False, source: str = "configuration") -> Descriptors:
    """Descriptor sums and (optionally masked) force rows of one configuration.

    The descriptor space is the potential's (linear or quadratic, by its quadraticflag).
    """
    if len(potential.elements) != 1:
        raise QmmlError("descriptors: only single-element potentials are supported")
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(potential.elements))
    if unknown:
        raise QmmlError(f"{source}: species {', '.join(unknown)} not in the potential "
                        f"({', '.join(potential.elements)})")
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
                source: str = "hard set") -> np.ndarray:
    """Per-atom mean descriptor of each configuration: row·Θ = energy per atom."""
    rows = [compute_descriptors(a, potential, forces=False, source=f"{source} frame {i}")
            .energy_per_atom for i, a in enumerate(structures)]
    if not rows:
        raise QmmlError(f"{source}: no configurations")
    return np.array(rows)


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

    def matrix(self) -> np.ndarray:
        """The full symmetric GᵀG."""
        upper = np.triu(self.gtg)
        return upper + np.triu(upper, 1).T

    def residual_sq(self, theta: np.ndarray) -> float:
        """||GΘ − F||² from the accumulated sums."""
        g = self.matrix()
        return float(theta @ g @ theta - 2 * theta @ self.gtf + self.ftf)
