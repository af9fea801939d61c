"""File I/O shared by every stage: atomic writes and extxyz frames with one-line errors.

Everything qmml writes goes through ``atomic_writer``: a temporary file in the same
folder, flushed and fsynced, then renamed over the target, so a process killed at any
moment leaves either the complete old file or the complete new one (never half a QM
result or half a potential).
"""
from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ase import Atoms

from qmml import QmmlError


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_writer(path) as fh:
        fh.write(text)
    return Path(path)


def _first_non_finite(obj, where: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN/inf number in a JSON-like object, or None."""
    import math

    if hasattr(obj, "tolist") and getattr(obj, "ndim", 0) > 0:
        obj = obj.tolist()  # numpy arrays
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
            obj = obj.item()  # numpy scalars
        if isinstance(obj, float) and not math.isfinite(obj):
            return where, obj
        return None
    for key, value in items:
        found = _first_non_finite(value, key)
        if found:
            return found
    return None


def json_text(obj, source: str | Path = "JSON", indent: int | None = 2,
              null_keys: Sequence[str] = ()) -> str:
    """``obj`` as strict JSON (no NaN/Infinity, which JSON readers reject).  A non-finite
    number under a top-level key in ``null_keys`` (where "no value" is meaningful)
    becomes null; any other is a one-line QmmlError naming ``source`` and its key."""
    import json
    import math

    if null_keys and isinstance(obj, dict):
        obj = {k: None if k in null_keys and isinstance(v, float) and not math.isfinite(v)
               else v for k, v in obj.items()}
    found = _first_non_finite(obj)
    if found:
        raise QmmlError(f"{source}: key '{found[0]}' is {found[1]}, not a finite number "
                        "(nothing written)")
    return json.dumps(obj, indent=indent, allow_nan=False, default=_json_default)


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj, indent: int | None = 2,
               null_keys: Sequence[str] = ()) -> Path:
    """Strict JSON (:func:`json_text`), atomically; the one JSON writer of qmml."""
    return write_text(path, json_text(obj, path, indent, null_keys) + "\n")


def write_pickle(path: str | Path, obj) -> Path:
    with atomic_writer(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return Path(path)


def read_checkpoint(path: Path | None, fingerprint: str, log=None) -> dict | None:
    """A run's pickled checkpoint, or None.

    A checkpoint of a different run (other input, potential, optimizer or settings) is
    never resumed: the run starts afresh and overwrites it.  Nothing expensive is lost —
    the QM results themselves live in the QM cache.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as fh:
            saved = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError):
        saved = {}
    if saved.get("fingerprint") != fingerprint:
        if log:
            log(f"{path}: checkpoint of a different run, starting afresh")
        return None
    return saved


def read_mapping(path: str | Path, required: Sequence[str] = ()) -> dict:
    """A YAML (or, by suffix, JSON) mapping file; an empty file is {}.  One-line QmmlError
    for a missing file, a parse error, a non-mapping or a missing ``required`` key."""
    import json

    import yaml

    path = Path(path)
    if not path.is_file():
        raise QmmlError(f"{path}: file not found")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:  # parser messages span lines: fold them
        raise QmmlError(f"{path}: cannot parse ({' '.join(str(err).split())})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise QmmlError(f"{path}: expected a mapping of keys to values")
    missing = [k for k in required if k not in data]
    if missing:
        raise QmmlError(f"{path}: required key '{missing[0]}' missing")
    return data


def write_frames(path: str | Path, frames: Sequence[Atoms]) -> Path:
    """extxyz, atomically (arrays, info and single-point forces are kept)."""
    from ase.io import write

    with atomic_writer(path) as fh:
        write(fh, list(frames), format="extxyz")
    return Path(path)


def _read_extxyz(path: str | Path, index: int | str):
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise QmmlError(f"{path}: file not found")
    try:
        return read(path, index=index, format="extxyz")
    except Exception as err:  # ASE raises many types for malformed files
        raise QmmlError(f"{path}: not a readable extxyz file "
                        f"({' '.join(str(err).split())})") from None


def read_frames(path: str | Path) -> list[Atoms]:
    """All frames of an extxyz file; one-line QmmlError for a missing/unreadable/empty file."""
    frames = _read_extxyz(path, ":")
    if not frames:
        raise QmmlError(f"{path}: contains no configurations")
    return frames


def read_frame(path: str | Path, index: int = -1) -> Atoms:
    """One frame (default: the last) of an extxyz file; one-line QmmlError as read_frames."""
    return _read_extxyz(path, index)
