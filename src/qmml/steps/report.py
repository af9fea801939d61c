"""Result steps: the binding table, the figures and the HTML report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from qmml import QmmlError
from qmml.steps.common import Log, PathLike, _say


def binding_table_file(paths: Sequence[PathLike], output: PathLike,
                       configured: dict | None = None, log: Log = None):
    """binding.csv: one row per configured (defect, dislocation, distance) from the path
    files (:func:`qmml.binding.binding_table`), E_b > 0 = attraction."""
    from qmml.binding import binding_table
    from qmml.io import atomic_writer

    table = binding_table(list(paths), configured=configured)
    with atomic_writer(output) as fh:  # no half-written table
        table.to_csv(fh, index=False)
    _say(log, table.to_string())
    return table


def _keyed_inputs(inputs: dict, iterations: dict) -> dict:
    """Figure inputs with their iterations: each name in ``iterations`` becomes a list of
    (iteration, path) pairs (the workflow gives both lists in the same order)."""
    out = {}
    for name, files in inputs.items():
        files = list(files)
        if name in iterations:
            its = list(iterations[name])
            if len(its) != len(files):
                raise QmmlError(f"figure input {name}: {len(files)} files but "
                                f"{len(its)} iterations")
            files = list(zip(its, files))
        out[name] = files
    return out


def _plain(value):
    """numpy scalars and tuple keys (binding groups) -> JSON."""
    if isinstance(value, dict):
        return {" / ".join(k) if isinstance(k, tuple) else str(k): _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def figure_file(name: str, inputs: dict, iterations: dict, output: PathLike,
                log: Log = None) -> object:
    """One of the paper's figures (:func:`qmml.figures.make_figure`) as PNG ``output``;
    ``inputs``: lists of paths by input name, ``iterations``: the iteration of each path
    of the iteration-keyed inputs.  Returns (and logs) its numbers."""
    from qmml.figures import make_figure

    numbers = make_figure(name, _keyed_inputs(inputs, iterations), output)
    _say(log, json.dumps(_plain(numbers), indent=2))
    return numbers


def report_file(output: PathLike, figures: dict, inputs: dict, iterations: dict,
                config: dict | None = None, captions: PathLike | None = None,
                log: Log = None) -> Path:
    """The self-contained HTML report (:func:`qmml.report.write_report`): ``figures`` by
    name, ``inputs``/``iterations`` as :func:`figure_file`, captions read from the
    ``captions`` folder (``<figure>.rst``)."""
    from qmml.report import read_captions, write_report

    keyed = _keyed_inputs(inputs, iterations)
    text = read_captions(captions, list(figures)) if captions else {}
    path = write_report(output, dict(figures), elastic=keyed.get("elastic", ()),
                        retrain=keyed.get("retrain", ()),
                        targets_summary=keyed.get("targets_summary", ()),
                        binding=(list(keyed.get("binding", ())) or [None])[0],
                        validation=keyed.get("validation", ()),
                        frames=list(keyed.get("relaxed", ())) + list(keyed.get("neb", ())),
                        config=config, captions=text)
    _say(log, f"wrote {output} with {len(figures)} figures")
    return path
