"""On-disk cache of descriptor sums of whole sets, keyed by their content."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from qmml.descriptors.normal import ForceSums, NormalEquations
from qmml.descriptors.snap import compute_snap_command
from qmml.potential import SNAPPotential


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
