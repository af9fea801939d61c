"""Stopping on SIGTERM (what SLURM sends at the time limit) without losing anything.

Inside :func:`stop_on_sigterm` the signal raises :class:`Terminated` in the main thread.
It is a ``BaseException``: the ``except Exception`` blocks around engines and optimisers
let it through, while ``finally`` blocks still release QM-cache locks and remove
temporary files (every file is written atomically, so none is left half-written).
On its way up, :func:`checkpoint_on_stop` records the QM-call counts in the run's last
checkpoint and adds a note; the top level (``qmml`` main, ``qmml.steps.log_file``) prints
one line saying what was kept and how to resume, and exits with status 143.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

EXIT_STATUS = 128 + signal.SIGTERM  # the shell's status of a process ended by SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived; ``notes`` say what the interrupted steps kept."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"signal {signum}")
        self.notes: list[str] = []


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside (main thread only: Python runs signal
    handlers there); a second SIGTERM while the first is handled is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def sigterm_held() -> Iterator[None]:
    """SIGTERM waits until the end of the block (then it is delivered): for steps that
    must happen together, such as storing a QM result and counting it as paid."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stopped_message(err: Terminated, resume: str) -> str:
    """The one line printed when a run stops on SIGTERM (``resume``: how to continue)."""
    kept = "; ".join(err.notes) if err.notes else "no checkpoint yet (no step completed)"
    return (f"stopped by SIGTERM: {kept}; every completed QM call is kept in the QM cache; "
            f"{resume} to resume")


@contextmanager
def checkpoint_on_stop(checkpoint: Path | None, fingerprint: str, stats, qm) -> Iterator[None]:
    """On :class:`Terminated`: the run's last checkpoint gets the QM-call counts up to
    now (its positions and optimiser state stay those of the last completed step)."""
    try:
        yield
    except Terminated as err:
        from qmml.io import read_checkpoint, write_pickle

        stats.count(qm)
        saved = read_checkpoint(checkpoint, fingerprint) if checkpoint else None
        if saved:
            saved["qm_counts"] = stats.checkpoint_counts()
            write_pickle(checkpoint, saved)
            err.notes.append(f"checkpoint {checkpoint} kept ({stats.n_qm_real_calls} real "
                             f"QM calls so far)")
        raise


@contextmanager
def log_file(path: str | Path) -> Iterator[Callable[[str], None]]:
    """A ``log`` callable writing lines to ``path`` (flushed); an error that ends the step
    is written there too before it propagates (a workflow job's log says why it failed).
    SIGTERM (a scheduler's time limit) inside ends the process with status 143 after one
    line, in the log and on stderr, saying what is kept and how to resume."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        def log(line: str) -> None:
            print(line, file=fh, flush=True)

        try:
            with stop_on_sigterm():
                yield log
        except Terminated as err:
            line = stopped_message(err, "rerun snakemake")
            log(line)
            print(line, file=sys.stderr, flush=True)
            raise SystemExit(EXIT_STATUS) from None
        except Exception as err:
            log(f"error: {err}")
            raise
