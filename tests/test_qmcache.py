"""QM cache robustness: unusable entries are quarantined and recomputed; processes sharing
a cache compute each cluster once; a killed process never blocks the others.

The "engine" here is a Lennard-Jones pair potential with an optional sleep (a stand-in
for a slow QM engine, not QM): cache behaviour does not depend on the physics, and the
forces are deterministic, so every cached or shared result can be checked against a
direct evaluation.  Concurrency tests run this module as a script in real processes.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from qmml.qmcache import QUARANTINE, CacheEntryWarning, CachedQMCalculator, QMCache

SETTINGS = "lj-stand-in"


class SlowPairForces(Calculator):
    """Lennard-Jones forces after ``delay`` seconds; touches ``marker`` when a call starts."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, delay: float = 0.0, marker: str | None = None):
        super().__init__()
        self.delay, self.marker = delay, marker

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.marker:
            Path(self.marker).touch()
        time.sleep(self.delay)
        lj = LennardJones(sigma=2.5, epsilon=0.2, rc=7.0)
        lj.calculate(self.atoms, ["energy", "forces"], all_changes)
        self.results = {"energy": lj.results["energy"], "forces": lj.results["forces"]}


def cluster(i: int) -> Atoms:
    """The i-th of a family of 4-atom clusters (all in one cache bucket)."""
    rng = np.random.default_rng(100 + i)
    base = np.array([[0.0, 0.0, 0.0], [2.7, 0.0, 0.0], [0.0, 2.7, 0.0], [1.4, 1.4, 2.2]])
    return Atoms("W4", positions=base + rng.uniform(-0.2, 0.2, base.shape) + 5.0,
                 cell=[12.0, 12.0, 12.0], pbc=False)


def direct_forces(atoms: Atoms) -> np.ndarray:
    calc = SlowPairForces()
    return calc.get_forces(atoms.copy())


def cached_calc(directory: Path, lines: list | None = None, delay: float = 0.0,
                marker: str | None = None) -> CachedQMCalculator:
    log = lines.append if lines is not None else None
    return CachedQMCalculator(SlowPairForces(delay, marker), QMCache(directory, SETTINGS),
                              log=log)


# -- unusable entries ---------------------------------------------------------------

def _bad_crc(path: Path, data: bytes) -> bytes:
    """Flip one byte inside the stored forces array (np.savez does not compress)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("forces.npy")
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    offset = info.header_offset + 30 + name_len + extra_len + 128 + 8
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


def _restored(path: Path, **change) -> bytes:
    """The entry rewritten as a valid zip with some stored fields changed."""
    with np.load(path) as data:
        fields = {k: data[k] for k in data.files}
    fields.update(change)
    tmp = path.with_name("rewrite.npz")
    np.savez(tmp, **fields)
    out = tmp.read_bytes()
    tmp.unlink()
    return out


CORRUPTIONS = {
    "truncated": lambda path, data: data[: len(data) // 2],
    "empty": lambda path, data: b"",
    "garbage": lambda path, data: np.random.default_rng(5).bytes(len(data)),
    "bad_crc": _bad_crc,
    "moved_atom": lambda path, data: _restored(
        path, positions=cluster(1).positions + [[0.05, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]),
    "wrong_species": lambda path, data: _restored(path, numbers=np.array([74, 74, 74, 73])),
    "no_forces": lambda path, data: _restored(path, forces=np.zeros((3, 3))),
}
ERRORS = {"truncated": "BadZipFile", "empty": "EOFError", "garbage": "ValueError",
          "bad_crc": "Bad CRC-32 for file 'forces.npy'", "moved_atom": "does not match",
          "wrong_species": "does not match", "no_forces": "forces of shape (3, 3)"}


def _two_entries_one_corrupted(tmp_path: Path, kind: str) -> tuple[Path, Path, bytes, bytes]:
    qm = cached_calc(tmp_path)
    qm.get_forces(cluster(0))
    qm.get_forces(cluster(1))
    assert qm.n_real_calls == 2
    good, bad = qm.cache.path(cluster(0)), qm.cache.path(cluster(1))
    assert good.parent == bad.parent  # one bucket
    corrupted = CORRUPTIONS[kind](bad, bad.read_bytes())
    bad.write_bytes(corrupted)
    return good, bad, good.read_bytes(), corrupted


def _assert_quarantined(cache_dir: Path, bad: Path, corrupted: bytes, kind: str,
                        caught, lines: list) -> None:
    moved = cache_dir / QUARANTINE / bad.parent.name / bad.name
    assert moved.read_bytes() == corrupted  # kept byte for byte, under its bucket and name
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheEntryWarning)]
    assert len(messages) == 1 and messages == lines  # one warning, also in the log
    assert str(bad) in messages[0] and str(moved) in messages[0]
    assert ERRORS[kind] in messages[0] and "\n" not in messages[0]


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_unusable_entry_hit_by_its_key_is_quarantined_and_recomputed(tmp_path, kind):
    good, bad, good_bytes, corrupted = _two_entries_one_corrupted(tmp_path, kind)
    lines: list[str] = []
    qm = cached_calc(tmp_path, lines)  # a fresh process's view of the cache
    with pytest.warns(CacheEntryWarning) as caught:
        forces = qm.get_forces(cluster(1))
    _assert_quarantined(tmp_path, bad, corrupted, kind, caught, lines)
    np.testing.assert_allclose(forces, direct_forces(cluster(1)), atol=1e-12)
    assert qm.n_real_calls == 1 and qm.n_cache_hits == 0
    # the recomputed entry is in place and valid; the other entry was never touched
    again = cached_calc(tmp_path)
    np.testing.assert_array_equal(again.get_forces(cluster(1)), forces)
    np.testing.assert_allclose(again.get_forces(cluster(0)), direct_forces(cluster(0)),
                               atol=1e-12)
    assert again.n_real_calls == 0 and again.n_cache_hits == 2
    assert good.read_bytes() == good_bytes
    assert len(again.cache) == 2
    assert sorted(p.name for p in bad.parent.iterdir()) == sorted([good.name, bad.name])


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_unusable_entry_met_in_the_bucket_scan_does_not_block_other_clusters(tmp_path, kind):
    """A new cluster of the same bucket scans every entry there (fallback match)."""
    good, bad, good_bytes, corrupted = _two_entries_one_corrupted(tmp_path, kind)
    lines: list[str] = []
    qm = cached_calc(tmp_path, lines)
    new = cluster(2)
    with pytest.warns(CacheEntryWarning) as caught:
        forces = qm.get_forces(new)
    _assert_quarantined(tmp_path, bad, corrupted, kind, caught, lines)
    np.testing.assert_allclose(forces, direct_forces(new), atol=1e-12)
    assert qm.n_real_calls == 1
    # the quarantined cluster is a plain miss now, recomputed without a further warning
    np.testing.assert_allclose(qm.get_forces(cluster(1)), direct_forces(cluster(1)),
                               atol=1e-12)
    assert qm.n_real_calls == 2 and len(lines) == 1
    np.testing.assert_allclose(qm.get_forces(cluster(0)), direct_forces(cluster(0)),
                               atol=1e-12)
    assert qm.n_cache_hits == 1 and qm.n_real_calls == 2
    assert good.read_bytes() == good_bytes and len(qm.cache) == 3


def test_second_quarantine_of_one_key_keeps_the_first(tmp_path):
    qm = cached_calc(tmp_path)
    qm.get_forces(cluster(0))
    path = qm.cache.path(cluster(0))
    for n, junk in enumerate([b"first", b"second"]):
        path.write_bytes(junk)
        with pytest.warns(CacheEntryWarning):
            cached_calc(tmp_path).get_forces(cluster(0))
    folder = tmp_path / QUARANTINE / path.parent.name
    assert (folder / path.name).read_bytes() == b"first"
    assert (folder / f"{path.stem}.2.npz").read_bytes() == b"second"


# -- processes sharing a cache ------------------------------------------------------

def worker(job: dict) -> None:
    """Compute ``job['clusters']`` through the cache at ``job['cache']``; write counts and
    forces to ``job['out']`` and log lines, as they come, to ``<out>.log``.  Starts once
    every ``job['ready']`` file exists."""
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        with open(job["out"] + ".log", "a") as fh:
            fh.write(line + "\n")

    qm = CachedQMCalculator(SlowPairForces(job["delay"], job.get("marker")),
                            QMCache(job["cache"], SETTINGS), log=log)
    Path(job["ready"][job["index"]]).touch()
    while not all(os.path.exists(p) for p in job["ready"]):
        time.sleep(0.005)
    forces = [qm.get_forces(cluster(i)).tolist() for i in job["clusters"]]
    Path(job["out"]).write_text(json.dumps({
        "real": qm.n_real_calls, "hits": qm.n_cache_hits, "waited": qm.n_waited,
        "forces": forces, "log": lines}))


def _start(job: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, json.dumps(job)],
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def _wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_two_processes_compute_each_cluster_once(tmp_path):
    order = [0, 1, 2, 0, 3, 4, 1, 5]  # 6 unique clusters, 2 repeats
    ready = [str(tmp_path / "ready0"), str(tmp_path / "ready1")]
    jobs = [dict(cache=str(tmp_path / "cache"), clusters=order, delay=0.3, ready=ready,
                 index=k, out=str(tmp_path / f"out{k}.json")) for k in range(2)]
    procs = [_start(job) for job in jobs]
    for p in procs:
        assert p.wait(timeout=60) == 0
    out = [json.loads(Path(job["out"]).read_text()) for job in jobs]
    print("real calls", [o["real"] for o in out], "waited", [o["waited"] for o in out])
    assert sum(o["real"] for o in out) == 6  # every unique cluster computed exactly once
    assert all(o["real"] + o["hits"] == len(order) for o in out)
    assert sum(o["waited"] for o in out) >= 1  # started together: one waited for the other
    assert out[0]["forces"] == out[1]["forces"]  # identical, bit for bit
    for i, f in zip(order, out[0]["forces"]):
        np.testing.assert_allclose(f, direct_forces(cluster(i)), atol=1e-12)
    bucket = QMCache(tmp_path / "cache", SETTINGS).path(cluster(0)).parent
    assert sorted(p.suffix for p in bucket.iterdir()) == [".npz"] * 6  # no lock file left


def test_a_killed_holder_does_not_block_the_waiting_process(tmp_path):
    ready = [str(tmp_path / "ready0"), str(tmp_path / "ready1")]
    marker = tmp_path / "holder-in-engine"
    holder = dict(cache=str(tmp_path / "cache"), clusters=[3], delay=120.0, ready=ready,
                  index=0, out=str(tmp_path / "holder.json"), marker=str(marker))
    waiter = dict(holder, delay=0.0, index=1, out=str(tmp_path / "waiter.json"), marker=None)
    Path(ready[1]).touch()  # the holder starts alone
    first = _start(holder)
    try:
        _wait_for(marker.exists, 30, "the holder to enter its engine call")
        second = _start(waiter)
        waiter_log = Path(waiter["out"] + ".log")
        _wait_for(waiter_log.exists, 30, "the waiter to block on the holder's lock")
        assert second.poll() is None
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert second.wait(timeout=30) == 0
    out = json.loads(Path(waiter["out"]).read_text())
    assert out["real"] == 1 and out["hits"] == 0  # the holder stored nothing: computed here
    np.testing.assert_allclose(out["forces"][0], direct_forces(cluster(3)), atol=1e-12)
    assert any(f"pid {first.pid}" in line and "waiting" in line for line in out["log"])
    assert not Path(holder["out"]).exists()


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
