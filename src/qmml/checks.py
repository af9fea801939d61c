"""Input checks every step runs before any QM call or long computation: numbers in range,
output paths writable, and structures the ML potential can treat.  Each failure is a
one-line :class:`~qmml.QmmlError` naming the option, file or atoms."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms

from qmml import QmmlError

PathLike = str | Path


def _number(name: str, value, expected: str) -> float:
    """``value`` as a float, or a one-line error saying what ``name`` expected."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise QmmlError(f"{name}: expected {expected}, got {value!r}") from None


def positive(name: str, value: float) -> float:
    """``value`` as a positive finite float (``name``: the option, for the message)."""
    x = _number(name, value, "a number")
    if not (math.isfinite(x) and x > 0):
        raise QmmlError(f"{name}: must be a positive finite number, got {value!r}")
    return x


def positive_int(name: str, value: int) -> int:
    """``value`` as a positive integer (a float with an integral value is accepted)."""
    x = _number(name, value, "a positive integer")
    if not (math.isfinite(x) and x == int(x) and x >= 1):
        raise QmmlError(f"{name}: must be a positive integer, got {value!r}")
    return int(x)


def nonnegative(name: str, value: float) -> float:
    """``value`` as a finite float >= 0."""
    x = _number(name, value, "a number")
    if not (math.isfinite(x) and x >= 0):
        raise QmmlError(f"{name}: must be a finite number >= 0, got {value!r}")
    return x


def writable_dir(path: PathLike, what: str = "folder") -> Path:
    """Create folder ``path`` if needed and prove a file can be created in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".qmml-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise QmmlError(f"{path}: {what} is not writable ({err.strerror or err})") from None
    return path


def writable(*paths: PathLike | None, what: str = "output") -> None:
    """Every given file path can be written (atomically: a sibling file is created and
    renamed over it, so its folder must accept new files); None entries are skipped."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise QmmlError(f"{path}: {what} path is a folder, not a file")
        writable_dir(path.parent, f"folder of {what} {path.name}")


def foreign_species_errors(atoms: Atoms, elements: Iterable[str], cutoff: float) -> list[str]:
    """Atoms whose species the ML potential lacks (``elements``) and that the ML part
    would see: such an atom must be QM and every atom within ``cutoff`` Å of it QM too
    (the QM engine treats it; no ML environment contains it).  One entry per bad atom."""
    symbols = np.array(atoms.get_chemical_symbols())
    foreign = np.flatnonzero(~np.isin(symbols, list(elements)))
    if not len(foreign):
        return []
    region = np.asarray(atoms.arrays["region"]).astype(str)
    bad = []
    for i in foreign:
        if region[i] != "QM":
            bad.append(f"{i} ({symbols[i]}, {region[i]})")
            continue
        d = atoms.get_distances(i, np.arange(len(atoms)), mic=True)
        near = np.flatnonzero((d <= cutoff) & (region != "QM"))
        if len(near):
            j = near[np.argmin(d[near])]
            bad.append(f"{i} ({symbols[i]}, QM, but atom {j} ({symbols[j]}, {region[j]}) "
                       f"is {d[j]:.2f} Å away)")
    return bad


def check_ml_species(atoms: Atoms, elements: Iterable[str], cutoff: float,
                     source: PathLike, potential: PathLike) -> None:
    """One-line error unless :func:`foreign_species_errors` finds nothing."""
    elements = list(elements)
    bad = foreign_species_errors(atoms, elements, cutoff)
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} atoms)" if len(bad) > 5 else "")
        raise QmmlError(f"{source}: atoms {shown}: species not in the ML potential "
                        f"{potential} ({', '.join(elements)}) must be QM with every atom "
                        f"within its cutoff {cutoff:.2f} Å QM too")


def check_buffer(buffer: float, cutoff: float, potential: PathLike) -> float:
    """The buffer must hold the ML cutoff: QM forces of the QM atoms need every neighbour
    an ML environment would see."""
    buffer = positive("--buffer", buffer)
    if buffer < cutoff:
        raise QmmlError(f"--buffer {buffer:g} Å is smaller than the cutoff {cutoff:.3f} Å "
                        f"of the ML potential {potential}: the buffer must be at least "
                        "the cutoff")
    return buffer


def finite(name: str, value: float) -> float:
    """``value`` as a finite float."""
    x = _number(name, value, "a number")
    if not math.isfinite(x):
        raise QmmlError(f"{name}: must be a finite number, got {value!r}")
    return x


def check_qmml_run(structures: dict, potential: PathLike, *, buffer: float, fmax: float,
                   steps: int, vacuum: float, outputs: Iterable[PathLike | None],
                   cache: PathLike, folders: Iterable[PathLike | None] = ()):
    """Everything a QM/ML relaxation or NEB needs before its first QM call: ``fmax``,
    ``steps``, ``vacuum`` in range, the buffer at least the ML cutoff, every atom of
    ``structures`` (source -> Atoms) treatable (:func:`check_ml_species`), the
    ``outputs`` (files) and the ``cache`` and ``folders`` writable.  Returns the potential
    (a :class:`~qmml.potential.SNAPPotential`)."""
    from qmml.potential import SNAPPotential

    positive("fmax", fmax)
    positive_int("steps", steps)
    nonnegative("vacuum", vacuum)
    pot = SNAPPotential.read(potential)
    check_buffer(buffer, pot.cutoff, potential)
    for source, atoms in structures.items():
        check_ml_species(atoms, pot.elements, pot.cutoff, source, potential)
    writable(*outputs)
    writable_dir(cache, "QM cache folder")
    for folder in folders:
        if folder is not None:
            writable_dir(folder)
    return pot


def potential_outputs(prefix: PathLike) -> tuple[Path, Path]:
    """The two files a potential prefix is written to (P.snapcoeff, P.snapparam)."""
    from qmml.potential import _strip_suffix

    prefix = _strip_suffix(prefix)
    return Path(f"{prefix}.snapcoeff"), Path(f"{prefix}.snapparam")


_BUILD_NUMBERS = {"radius": positive, "fixed_width": nonnegative, "n_line": positive_int,
                  "a0": positive, "C11": positive, "C12": positive, "C44": positive,
                  "qm_radius": positive, "buffer": positive, "distance": nonnegative,
                  "z": finite}


def check_build_settings(settings: dict) -> None:
    """Numbers of ``qmml build`` settings in range; the host ``symbol`` in the potential
    whenever the potential is used on it (elastic constants not all given)."""
    from qmml.build import DEFAULT_POTENTIAL
    from qmml.potential import SNAPPotential

    for key, check in _BUILD_NUMBERS.items():
        if settings.get(key) is not None:
            check(key, settings[key])
    for key in ("direction", "zbl"):
        for value in settings.get(key) or ():
            finite(key, value)
    if any(settings.get(k) is None for k in ("a0", "C11", "C12", "C44")):
        prefix = settings.get("potential") or DEFAULT_POTENTIAL
        elements = SNAPPotential.read(prefix).elements
        symbol = settings.get("symbol") or "W"
        if symbol not in elements:
            raise QmmlError(f"symbol {symbol}: the potential {prefix} has no {symbol} "
                            f"(only {', '.join(elements)}): give a potential with "
                            f"{symbol}, or all of a0, C11, C12, C44")
