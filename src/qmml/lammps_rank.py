"""One MPI rank of a :class:`qmml.lammps_mpi.RankGroup`: ``python -m qmml.lammps_rank
ADDRESS`` under ``mpiexec``.  Every rank holds the same calculators (slots), each a
:class:`qmml.potential.SNAPCalculator` whose LAMMPS instance spans the ranks, and runs
every request the calling process sends; rank 0 answers with the results."""
from __future__ import annotations

import socket
import sys

from ase import Atoms

from qmml.lammps_mpi import recv, send
from qmml.lmp import new_lammps
from qmml.potential import SNAPCalculator


def serve(address: str) -> None:
    """Answer the requests on ``address`` until it closes."""
    probe = new_lammps()  # initialises MPI: this process's rank
    rank = probe.extract_setting("world_rank")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    send(sock, rank)
    calcs: dict[int, SNAPCalculator] = {}
    while True:
        try:
            kind, *args = recv(sock)
        except (EOFError, OSError):  # the calling process is gone
            break
        if kind == "close":
            break
        try:
            answer = None
            if kind == "potential":
                slot, potential, zbl = args
                if slot in calcs:
                    calcs[slot].set_potential(potential)
                else:
                    calcs[slot] = SNAPCalculator(potential, zbl=zbl)
            elif kind == "calculate":
                slot, numbers, positions, cell, pbc, properties, changes = args
                calc = calcs[slot]
                calc.calculate(Atoms(numbers, positions, cell=cell, pbc=pbc), properties,
                               changes)
                answer = dict(calc.results) if rank == 0 else None
            elif kind == "drop":
                calcs.pop(args[0], None)
            reply = ("ok", answer)
        except Exception as err:
            # LAMMPS' MPIAbortException prints its message as a repr
            text = str(getattr(err, "message", err))
            reply = ("error", " ".join(text.split()) or type(err).__name__)
        send(sock, reply)
    calcs.clear()
    sock.close()
    probe.finalize()


if __name__ == "__main__":
    serve(sys.argv[1])
