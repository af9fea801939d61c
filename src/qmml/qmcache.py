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

Every entry read is verified: it must load completely (zip CRCs included) and the cluster
stored in it must hash to its file name under this cache's settings.  An entry that fails
is moved, never deleted, to ``<dir>/quarantine/<bucket>/<key>.npz`` with a one-line
warning naming it, and its cluster is recomputed.

Processes sharing a cache compute each cluster once: the computing process holds an
exclusive ``flock`` on ``<dir>/<bucket>/<key>.lock``; another process asking for the same
cluster waits for that lock and then reads the stored result.  The kernel releases a
flock when its holder dies (even by SIGKILL), so a killed job never blocks the others.
"""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError
from qmml.engines import engine_settings_hash, is_retryable, make_qm_calculator
from qmml.interrupt import sigterm_held
from qmml.io import atomic_writer

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process locking (results stay correct)
    fcntl = None

POSITION_TOL = 1e-8  # Å: rounding grid of the exact cache key
MATCH_TOL = 1e-7     # Å: fallback match (extxyz round trips are off by <= 5e-9 Å)
QUARANTINE = "quarantine"  # <dir>/quarantine/<bucket>/<key>.npz: entries that failed to read
# Test hook for crash-resume tests: SIGKILL this process right after the N-th real QM call
# has been stored (simulates a job killed by the scheduler at the worst moment).
KILL_ENV = "QMML_TEST_KILL_AFTER_QM_CALLS"
_ENTRY_FIELDS = ("forces", "energy", "numbers", "positions", "cell", "pbc", "settings_hash")


class CacheEntryWarning(UserWarning):
    """A QM cache entry could not be used and was moved to the quarantine folder."""


class _BadEntry(Exception):
    """An entry that loads but is not what its name promises."""


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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, _BadEntry):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class QMCache:
    """A directory of cached QM results (``<dir>/<bucket>/<key>.npz``).

    ``log`` (a callable taking one line) receives the quarantine and waiting messages;
    quarantine messages are also issued as :class:`CacheEntryWarning`.
    """

    def __init__(self, directory: str | Path, settings_hash: str, log=None):
        self.directory = Path(directory)
        self.settings_hash = settings_hash
        self.log = log
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self._held: dict[str, int] = {}  # key -> descriptor of a lock this object holds
        self._locking = fcntl is not None

    def path(self, atoms: Atoms) -> Path:
        return (self.directory / bucket_key(atoms, self.settings_hash)
                / f"{cluster_key(atoms, self.settings_hash)}.npz")

    # -- reading and verifying entries ------------------------------------------------

    def _entry(self, path: Path) -> dict:
        """The verified content of an entry; raises if it is unusable."""
        with open(path, "rb") as fh, np.load(fh) as data:  # our handle: closed on any error
            entry = {name: data[name].copy() for name in _ENTRY_FIELDS}
        stored = Atoms(numbers=entry["numbers"], positions=entry["positions"],
                       cell=entry["cell"], pbc=entry["pbc"])
        if str(entry["settings_hash"]) != self.settings_hash:
            raise _BadEntry(f"stored for engine settings {str(entry['settings_hash'])[:12]}..., "
                            f"not this cache's {self.settings_hash[:12]}...")
        if cluster_key(stored, self.settings_hash) != path.stem:
            raise _BadEntry("the stored cluster (species/positions/cell/pbc) does not match "
                            "the entry's key")
        forces = np.asarray(entry["forces"], dtype=float)
        if forces.shape != (len(stored), 3) or not np.all(np.isfinite(forces)):
            raise _BadEntry(f"forces of shape {forces.shape} (or non-finite) for a "
                            f"{len(stored)}-atom cluster")
        if entry["energy"].shape != () or not np.isfinite(float(entry["energy"])):
            raise _BadEntry("energy is not one finite number")
        return {"forces": forces, "energy": float(entry["energy"]),
                "positions": stored.positions, "cell": np.asarray(stored.cell)}

    def _read(self, path: Path) -> dict | None:
        """A verified entry, or None (missing, or unusable and now quarantined)."""
        return self.read_verified(path, self._entry)

    def read_verified(self, path: Path, verify) -> dict | None:
        """``verify(path)`` (the content of a file under this cache, raising if it is
        unusable), or None: missing, or unusable and now quarantined."""
        try:
            return verify(path)
        except FileNotFoundError:  # moved aside or never written: a miss
            return None
        except PermissionError as err:  # the user's to fix; moving it would not help
            raise QmmlError(f"cannot read QM cache entry {path}: {err.strerror}") from None
        except Exception as err:  # truncated, empty, garbled, bad CRC, wrong cluster, ...
            self._quarantine(path, _one_line(err), verify)
            return None

    def _quarantine(self, path: Path, reason: str, verify=None) -> None:
        """Move an unusable entry to ``quarantine/<bucket>/`` (under its key's lock)."""
        verify = verify or self._entry
        folder, key = path.parent, path.stem
        with self._locked(folder, key, blocking=False) as owned:
            if not owned:  # another process holds the key: it is recomputing this entry
                return
            try:  # verify under the lock: the entry may have been rewritten meanwhile
                verify(path)
                return
            except FileNotFoundError:
                return
            except Exception:
                pass
            target = self.directory / QUARANTINE / folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            n = 1
            while target.exists():  # keep every earlier quarantined copy too
                n += 1
                target = target.with_name(f"{key}.{n}{path.suffix}")
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return
            except OSError as err:
                self._warn(f"QM cache entry {path} is unusable ({reason}) and could not be "
                           f"moved to {target} ({err.strerror}); recomputing its cluster")
                return
        self._index.get(folder.name, {}).pop(path.name, None)
        self._warn(f"QM cache entry {path} is unusable ({reason}); moved to {target}, "
                   f"its cluster will be recomputed")

    def _warn(self, message: str) -> None:
        warnings.warn(message, CacheEntryWarning, stacklevel=2)
        if self.log:
            self.log(message)

    def _nearby(self, atoms: Atoms) -> Path | None:
        """An entry of the same bucket within MATCH_TOL Å (positions and cell)."""
        folder = self.path(atoms).parent
        if not folder.is_dir():
            return None
        index = self._index.setdefault(folder.name, {})
        for path in folder.glob("*.npz"):  # index entries written since the last look
            if path.name not in index:
                entry = self._read(path)
                if entry is not None:
                    index[path.name] = (entry["positions"], entry["cell"])
        pos, cell = np.asarray(atoms.positions), np.asarray(atoms.cell)
        for name, (p, c) in index.items():
            if (p.shape == pos.shape and np.abs(p - pos).max() <= MATCH_TOL
                    and np.abs(c - cell).max() <= MATCH_TOL):
                return folder / name
        return None

    def load(self, atoms: Atoms) -> dict | None:
        """The cached ``{"forces", "energy"}`` of a cluster, or None."""
        path = self.path(atoms)
        entry = self._read(path) if path.is_file() else None
        if entry is None:
            path = self._nearby(atoms)
            entry = self._read(path) if path is not None else None
        if entry is None:
            return None
        return {"forces": entry["forces"], "energy": entry["energy"]}

    def store(self, atoms: Atoms, forces: np.ndarray, energy: float) -> Path:
        path = self.path(atoms)
        with atomic_writer(path, "wb") as fh:
            np.savez(fh, forces=forces, energy=energy, numbers=atoms.numbers,
                     positions=atoms.positions, cell=np.asarray(atoms.cell), pbc=atoms.pbc,
                     settings_hash=self.settings_hash)
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.npz"))

    # -- one computing process per cluster --------------------------------------------

    @contextmanager
    def computing(self, atoms: Atoms) -> Iterator[None]:
        """Hold the cluster's lock: other processes wanting it wait, then read the result.

        Load the cluster again inside: another process may have stored it meanwhile.
        """
        path = self.path(atoms)
        with self._locked(path.parent, path.stem, blocking=True):
            yield

    @contextmanager
    def _locked(self, folder: Path, key: str, blocking: bool) -> Iterator[bool]:
        """Exclusive flock on ``<folder>/<key>.lock``; yields False if not ``blocking``
        and another process holds it.  Reentrant within this object.

        Shared file systems: Linux NFS clients (NFSv4, or v3 with lockd) turn flock into
        server-side byte-range locks, so this works across nodes; a crashed node's locks
        are dropped when its lease expires (about 90 s on NFSv4).  Mounted with ``nolock``
        or ``local_lock=flock`` the lock is node-local; Lustre needs ``-o flock``, without
        it flock fails and we continue unlocked.  Unlocked, two processes may compute the
        same cluster (paying twice); results stay correct since every write is atomic.
        """
        if key in self._held or not self._locking:
            yield True
            return
        fd = self._acquire(folder, key, blocking)
        if fd is None:  # busy (non-blocking), or locks turned out unsupported here
            yield not self._locking
            return
        self._held[key] = fd
        try:
            yield True
        finally:
            del self._held[key]
            try:  # unlink before unlocking: waiters holding the old file retry (_acquire)
                os.unlink(folder / f"{key}.lock")
            except OSError:
                pass
            os.close(fd)

    def _acquire(self, folder: Path, key: str, blocking: bool) -> int | None:
        lock = folder / f"{key}.lock"
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not blocking:
                        os.close(fd)
                        return None
                    if self.log:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        self.log(f"QM cluster {key[:12]} is being computed by "
                                 f"{holder or 'another process'}; waiting for its result")
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                                     errno.EINVAL):
                    raise
                self._locking = False
                warnings.warn(f"QM cache {self.directory}: file locks unsupported here "
                              f"({err.strerror}); concurrent processes may repeat QM calls",
                              CacheEntryWarning, stacklevel=3)
                return None
            try:  # the previous holder unlinks the file before unlocking: lock a live name
                live = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                live = False
            if live:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
                return fd
            os.close(fd)


class NotCached(Exception):
    """A QM cluster asked for inside :meth:`CachedQMCalculator.cached_only` is not cached."""


class CachedQMCalculator(Calculator):
    """Consults the cache before calling the engine; counts real engine calls.

    ``n_real_calls``: engine calls made by this object; ``n_cache_hits``: answered from
    disk, of which ``n_waited`` were computed by another process sharing the cache while
    this one waited for them (or stored between this one's look and its lock);
    ``qm_seconds``: wall time spent inside the engine.  SCF failures are retried
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
        self.n_waited = 0
        self.qm_seconds = 0.0
        self.log = log
        if log is not None and cache.log is None:
            cache.log = log
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
        with self.cache.computing(cluster):
            cached = self.cache.load(cluster)
            if cached is not None:  # another process computed it while we waited
                self.n_cache_hits += 1
                self.n_waited += 1
                self.results.update(cached, free_energy=cached["energy"])
                return
            forces, energy = self._call_engine(cluster)
            with sigterm_held():  # a stored result is always a counted one
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
