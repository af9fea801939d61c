"""Never lose a QM call: an on-disk cache in front of every QM engine.

Key = SHA-256 of the QM cluster's species, positions (rounded to ``POSITION_TOL`` Å),
cell (same rounding), pbc and the engine settings hash.  Each result is one small
``.npz`` (forces, energy, and the cluster itself) written to a temporary file and
renamed, so a process killed at any moment leaves either the complete entry or none.
A restarted relaxation therefore repeats no completed QM call.

Entries live in ``<dir>/<bucket>/<key>.npz`` where the bucket hashes species, pbc and
settings only.  On an exact-key miss the bucket is searched for a cluster whose positions
and cell agree within ``MATCH_TOL`` Å: structures that went through an extxyz file
(8 decimals) land a few 1e-9 Å off the rounding grid, and e.g. a relaxed end point
reused as an NEB end image must still find its QM result.
"""
from __future__ import annotations

import hashlib
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError
from qmml.engines import engine_settings_hash, is_retryable, make_qm_calculator
from qmml.io import atomic_writer

POSITION_TOL = 1e-8  # Å: rounding grid of the exact cache key
MATCH_TOL = 1e-7     # Å: fallback match (extxyz round trips are off by <= 5e-9 Å)
# Test hook for crash-resume tests: SIGKILL this process right after the N-th real QM call
# has been stored (simulates a job killed by the scheduler at the worst moment).
KILL_ENV = "QMML_TEST_KILL_AFTER_QM_CALLS"


def cluster_key(atoms: Atoms, settings_hash: str) -> str:
    """Cache key of a QM cluster under given engine settings."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.rint(np.asarray(atoms.positions) / POSITION_TOL).astype(np.int64).tobytes())
    h.update(np.rint(np.asarray(atoms.cell) / POSITION_TOL).astype(np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    h.update(settings_hash.encode())
    return h.hexdigest()


def bucket_key(atoms: Atoms, settings_hash: str) -> str:
    """Species + pbc + settings: the clusters that may match each other."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    h.update(settings_hash.encode())
    return h.hexdigest()[:16]


class QMCache:
    """A directory of cached QM results (``<dir>/<bucket>/<key>.npz``)."""

    def __init__(self, directory: str | Path, settings_hash: str):
        self.directory = Path(directory)
        self.settings_hash = settings_hash
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def path(self, atoms: Atoms) -> Path:
        return (self.directory / bucket_key(atoms, self.settings_hash)
                / f"{cluster_key(atoms, self.settings_hash)}.npz")

    def _read(self, path: Path) -> dict | None:
        try:
            with np.load(path) as data:
                return {"forces": data["forces"].copy(), "energy": float(data["energy"])}
        except (OSError, ValueError, KeyError):  # unreadable entry: recompute, never trust it
            return None

    def _nearby(self, atoms: Atoms) -> Path | None:
        """An entry of the same bucket within MATCH_TOL Å (positions and cell)."""
        folder = self.path(atoms).parent
        if not folder.is_dir():
            return None
        index = self._index.setdefault(folder.name, {})
        for path in folder.glob("*.npz"):  # index entries written since the last look
            if path.name not in index:
                try:
                    with np.load(path) as data:
                        index[path.name] = (data["positions"].copy(), data["cell"].copy())
                except (OSError, ValueError, KeyError):
                    continue
        pos, cell = np.asarray(atoms.positions), np.asarray(atoms.cell)
        for name, (p, c) in index.items():
            if (p.shape == pos.shape and np.abs(p - pos).max() <= MATCH_TOL
                    and np.abs(c - cell).max() <= MATCH_TOL):
                return folder / name
        return None

    def load(self, atoms: Atoms) -> dict | None:
        path = self.path(atoms)
        if not path.is_file():
            path = self._nearby(atoms)
            if path is None:
                return None
        return self._read(path)

    def store(self, atoms: Atoms, forces: np.ndarray, energy: float) -> Path:
        path = self.path(atoms)
        with atomic_writer(path, "wb") as fh:
            np.savez(fh, forces=forces, energy=energy, numbers=atoms.numbers,
                     positions=atoms.positions, cell=np.asarray(atoms.cell), pbc=atoms.pbc,
                     settings_hash=self.settings_hash)
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.npz"))


class NotCached(Exception):
    """A QM cluster asked for inside :meth:`CachedQMCalculator.cached_only` is not cached."""


class CachedQMCalculator(Calculator):
    """Consults the cache before calling the engine; counts real engine calls.

    ``n_real_calls``: engine calls made by this object; ``n_cache_hits``: answered from
    disk; ``qm_seconds``: wall time spent inside the engine.  SCF failures are retried
    ``retries`` times (the engine's ``adjust_for_retry`` softens SCF settings), then a
    QmmlError with the engine's message is raised; all earlier results stay on disk.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, engine: Calculator, cache: QMCache, retries: int = 1,
                 log=None) -> None:
        super().__init__()
        self.engine = engine
        self.cache = cache
        self.retries = int(retries)
        self.n_real_calls = 0
        self.n_cache_hits = 0
        self.qm_seconds = 0.0
        self.log = log
        self._cached_only = False
        kill_after = os.environ.get(KILL_ENV)
        self._kill_after = int(kill_after) if kill_after else None

    @classmethod
    def from_config(cls, cfg: dict, directory: str | Path, log=None) -> CachedQMCalculator:
        """The engine of an engine config behind its cache in ``directory``.

        The cache is keyed by the config's settings hash; ``cfg['retries']`` (default 1)
        sets the SCF retries.
        """
        return cls(make_qm_calculator(cfg), QMCache(directory, engine_settings_hash(cfg)),
                   retries=int(cfg.get("retries", 1)), log=log)

    @property
    def n_calls(self) -> int:
        """QM evaluations requested (real + cached)."""
        return self.n_real_calls + self.n_cache_hits

    @contextmanager
    def cached_only(self) -> Iterator[None]:
        """Inside, a cluster missing from the cache raises :class:`NotCached` instead of
        calling the engine: replaying another run's QM points must cost no QM call."""
        self._cached_only = True
        try:
            yield
        finally:
            self._cached_only = False

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        cluster = self.atoms.copy()
        cluster.calc = None
        cached = self.cache.load(cluster)
        if cached is not None:
            self.n_cache_hits += 1
            self.results.update(cached, free_energy=cached["energy"])
            return
        if self._cached_only:
            self.reset()
            raise NotCached(f"{len(cluster)}-atom cluster not in {self.cache.directory}")
        forces, energy = self._call_engine(cluster)
        self.cache.store(cluster, forces, energy)
        self.n_real_calls += 1
        self.results.update(forces=forces, energy=energy, free_energy=energy)
        if self._kill_after is not None and self.n_real_calls >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def _call_engine(self, cluster: Atoms) -> tuple[np.ndarray, float]:
        name = getattr(self.engine, "engine_name", type(self.engine).__name__)
        for attempt in range(self.retries + 1):
            start = time.perf_counter()
            try:
                self.engine.reset()
                self.engine.calculate(cluster.copy(), ["forces"], all_changes)
                forces = np.array(self.engine.results["forces"], dtype=float)
                energy = float(self.engine.results.get("energy", 0.0))
            except Exception as err:  # engines raise their own types; keep the message
                if not is_retryable(err):  # a command that cannot run, a user error
                    raise
                message = " ".join(str(err).split()) or type(err).__name__
                if attempt == self.retries:
                    raise (type(err) if isinstance(err, QmmlError) else QmmlError)(
                        f"QM engine '{name}' failed after {attempt + 1} attempt(s) on a "
                        f"{len(cluster)}-atom cluster: {message} (all {self.n_real_calls} "
                        f"earlier QM results are kept in {self.cache.directory})") from None
                change = getattr(self.engine, "adjust_for_retry", lambda a: "plain retry")(
                    attempt + 1)
                if self.log:
                    self.log(f"QM engine '{name}' failed ({message}); retry "
                             f"{attempt + 1}/{self.retries}: {change}")
                continue
            finally:
                self.qm_seconds += time.perf_counter() - start
            if not np.all(np.isfinite(forces)):
                raise QmmlError(f"QM engine '{name}' returned non-finite forces")
            return forces, energy
        raise AssertionError("unreachable")
