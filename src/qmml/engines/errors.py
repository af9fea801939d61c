"""Errors of QM engines that run external programs: not runnable vs ran and failed."""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from qmml import QmmlError

# MPI/batch launchers: the program is the last plain word of the command after them
LAUNCHERS = ("srun", "mpirun", "mpiexec", "mpiexec.hydra", "aprun", "ibrun", "jsrun")


class EngineNotRunnable(QmmlError):
    """The engine's command is missing or not executable: retrying cannot help."""


class EngineFailed(QmmlError):
    """The engine's program ran and failed (its run folder is kept for inspection)."""


def is_retryable(err: BaseException) -> bool:
    """Whether a QM-call failure may succeed with softer SCF settings (the QM cache's
    retry loop asks this): not for a command that cannot run, nor for any other
    QmmlError (a user error); yes for a program that ran and failed, and for the
    exceptions engines raise themselves (SCF not converged, ...)."""
    if isinstance(err, EngineFailed):
        return True
    return not isinstance(err, QmmlError)


def program_words(command: str) -> list[str]:
    """The executables a command line starts: the first word and, after a launcher, the
    last plain (not an option, not a number) word."""
    words = shlex.split(command)
    if not words:
        return []
    found = [words[0]]
    if os.path.basename(words[0]) in LAUNCHERS:
        plain = [w for w in words[1:] if not w.startswith("-") and not w.isdigit()
                 and "=" not in w]
        if plain:
            found.append(plain[-1])
    return found


def check_command(engine: str, command: str, source: str) -> None:
    """One-line EngineNotRunnable unless every program of ``command`` is executable.

    ``source`` names where the command came from (config key or environment variable).
    """
    for word in program_words(command) or [""]:
        path = shutil.which(word) if word else None
        if path is None:
            raise EngineNotRunnable(
                f"engine '{engine}': command '{command}' from {source}: "
                f"'{word}' is not an executable on PATH")


def output_tail(paths, lines: int = 6, width: int = 400) -> str:
    """The last non-empty lines of the first existing file in ``paths``, ' | '-joined."""
    for path in paths:
        path = Path(path)
        if path.is_file():
            text = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
            tail = " | ".join([ln for ln in text if ln][-lines:])
            abort = _cp2k_abort(text)
            if abort:
                tail = f"{abort} | {tail}"
            return f"last lines of {path.name}: {tail[-width:]}"
    return "it wrote no output file"


def _cp2k_abort(lines: list[str]) -> str:
    """The message inside CP2K's last [ABORT] box (its stack trace follows it)."""
    starts = [i for i, ln in enumerate(lines) if "[ABORT]" in ln]
    if not starts:
        return ""
    words = []
    for ln in lines[starts[-1] + 1:starts[-1] + 8]:
        if set(ln) <= set("* "):
            break
        words.append(ln.strip("* ").replace("\\___/", "").strip(" |/O\\"))
    return "CP2K ABORT: " + " ".join(w for w in words if w)
