"""One adapter for every program-backed engine: boxes the cluster, picks k-points,
restarts from the previous call's wavefunction, and turns failures into one-line errors."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError
from qmml.engines.cluster import cluster_kpts, vacuum_box
from qmml.engines.errors import EngineFailed, check_command, output_tail

KEEP_LIMIT = 50 * 2 ** 20  # bytes: bigger files (wavefunctions) are not copied on failure


@dataclass
class EngineSpec:
    """How qmml drives one program through its ASE calculator.

    ``build(settings, kpts)``: the ASE calculator; ``box``: 'periodic' (plane-wave codes:
    fully periodic cell with vacuum), 'open' (vacuum box, pbc kept) or None (as given);
    ``prepare(calc, restart)``: set restart flags (``restart``: same cluster identity as
    the previous call, whose wavefunction/density is on disk or in memory) or clean them;
    ``outputs(calc)``: the program's output files, newest-relevant first;
    ``check(calc)``: raise EngineFailed if the run is not converged.
    """

    build: Callable
    box: str | None = None
    prepare: Callable = lambda calc, restart: None
    outputs: Callable = lambda calc: []
    check: Callable = lambda calc: None
    run_dir: Callable = lambda calc: None


def _identity(atoms, kpts) -> str:
    """Species, cell, pbc and k-mesh: what a wavefunction restart must share."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.cell), 6).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    h.update(str(kpts).encode())
    return h.hexdigest()


class Adapter(Calculator):
    """Wraps an engine's ASE calculator for QM clusters (see :class:`EngineSpec`).

    The calculator is (re)built whenever the cluster identity (species, cell, pbc,
    k-mesh) changes or after a failure; between calls on the same identity (the steps of
    one relaxation) the program restarts from its previous wavefunction/density.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, spec: EngineSpec, name: str, kpts_line: int, settings: dict,
                 command_source: str = "key 'command'"):
        super().__init__()
        self.command_source = command_source
        self.spec, self.engine_name, self.kpts_line = spec, name, kpts_line
        self.settings = dict(settings)
        self.vacuum = float(self.settings.get("vacuum", 0.0))
        self.calc: Calculator | None = None
        self._identity: str | None = None
        self.n_restarts = 0  # calls that started from the previous call's wavefunction
        self.last_input = None  # the cluster as the program saw it (boxed)

    def program_atoms(self, atoms):
        """(cluster as the program sees it, k-point mesh)."""
        kpts = cluster_kpts(atoms.pbc, self.kpts_line)
        if self.spec.box is not None:
            atoms = vacuum_box(atoms, self.vacuum, periodic=self.spec.box == "periodic")
        return atoms, kpts

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if "command" in self.settings:  # gone since start-up: say so once, never retry
            check_command(self.engine_name, self.settings["command"], self.command_source)
        cluster, kpts = self.program_atoms(self.atoms.copy())
        identity = _identity(cluster, kpts)
        restart = self.calc is not None and identity == self._identity
        if not restart:
            self.calc = self.spec.build(self.settings, kpts, pbc=tuple(bool(p) for p in
                                                                   self.atoms.pbc))
            self._identity = identity
        self.spec.prepare(self.calc, restart)
        self.n_restarts += int(restart)
        self.last_input = cluster.copy()
        cluster.calc = self.calc
        try:
            forces = np.array(cluster.get_forces())
            energy = float(cluster.get_potential_energy())
            self.spec.check(self.calc)
        except QmmlError as err:
            if isinstance(err, EngineFailed):
                self._fail(str(err))
            raise
        except Exception as err:  # the program's own failure: quote it, keep its folder
            self._fail(" ".join(str(err).split())[:300] or type(err).__name__)
        self.results["forces"] = forces
        self.results["energy"] = energy

    def _fail(self, message: str):
        calc, self.calc, self._identity = self.calc, None, None  # next attempt starts clean
        tail = output_tail(self.spec.outputs(calc)) if calc is not None else ""
        kept = keep_run_folder(self.spec.run_dir(calc)) if calc is not None else None
        where = f"; run folder kept in {kept}" if kept else ""
        if "last lines of" in message:
            raise EngineFailed(f"{message}{where}") from None
        raise EngineFailed(f"engine '{self.engine_name}' failed: {message}; {tail}{where}") \
            from None

    def adjust_for_retry(self, attempt: int) -> str:
        """Softer SCF settings for the next attempt (same converged physics)."""
        self.calc, self._identity = None, None
        if self.engine_name == "gpaw":
            self.settings["maxiter"] = int(self.settings["maxiter"]) * 2
            self.settings["mixer"] = {"beta": 0.02, "nmaxold": 5, "weight": 100.0}
            return f"mixer beta 0.02, maxiter {self.settings['maxiter']}"
        if self.engine_name == "vasp":
            self.settings.update(algo="All", nelm=200 * (attempt + 1))
            return "ALGO=All, more NELM"
        if self.engine_name == "cp2k":
            self.settings["max_scf"] = int(self.settings["max_scf"]) * 2
            self.settings["mixing_alpha"] = float(self.settings["mixing_alpha"]) / 2
            return (f"MAX_SCF {self.settings['max_scf']}, Broyden alpha "
                    f"{self.settings['mixing_alpha']}")
        return "plain retry"


def keep_run_folder(folder) -> Path | None:
    """A copy of a failed run's folder (``<folder>.failed-<n>``, n = 1, 2, ...), so a retry
    in the same folder does not overwrite the evidence; files over KEEP_LIMIT are left out."""
    if folder is None or not Path(folder).is_dir():
        return None
    folder = Path(folder).resolve()
    n = 1 + len(list(folder.parent.glob(f"{folder.name}.failed-*")))
    target = folder.with_name(f"{folder.name}.failed-{n:03d}")

    def big(directory, names):
        return [n for n in names if (Path(directory) / n).is_file()
                and (Path(directory) / n).stat().st_size > KEEP_LIMIT]

    shutil.copytree(folder, target, ignore=big, symlinks=True)
    return target
