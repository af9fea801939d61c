"""What every step shares: the ``log`` callable type, path type and the log helper."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from qmml.interrupt import log_file  # noqa: F401  (the workflow scripts' log, with SIGTERM)

Log = Callable[[str], None] | None


PathLike = str | Path


def _say(log: Log, line: str) -> None:
    if log:
        log(line)
