"""Self-contained HTML report of a qmml run: figures embedded as base64 PNG, tables from
the pipeline's JSON/CSV outputs, QM engine and run provenance.

One file, no external resources: it can be mailed or archived next to the results.  Numbers
are printed with 6 significant digits (``format_value``).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import platform
import re
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from qmml import QmmlError, __version__
from qmml.figures import ELASTIC_KEYS, Keyed, by_iteration, keyed, read_binding
from qmml.io import atomic_writer, read_mapping

PathLike = str | Path

RETRAIN_COLUMNS = ("qm_force_rmse_before", "qm_force_rmse_after", "target_force_rmse_before",
                   "target_force_rmse_after", "hard_residual_max", "soft_force_change_rmse",
                   "hard_rank", "n_target_atoms", "n_qm_atoms", "n_coefficients", "quadratic",
                   "seconds")
TARGET_COLUMNS = ("qm_force_rmse", "qm_force_max_error", "qm_force_rms", "n_qm_atoms",
                  "n_frames")
BINDING_SHOWN = ("defect", "defect_type", "dislocation", "distance", "E_b_qmml",
                 "E_b_qmml_path_error", "E_b_ml", "qm_calls", "engine")
RUN_KEYS = ("qm_engine", "optimizer", "converged", "fmax", "fmax_target", "steps",
            "n_qm_calls", "n_qm_real_calls", "neb_barrier_virtual_work")

_STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right;font-size:90%}
th{background:#eee}td.text{text-align:left}
figure{margin:1em 0 2em}img{max-width:100%}
figcaption{font-size:90%;color:#444}.warn{color:#a00;font-weight:bold}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:85%}
"""


def format_value(value) -> str:
    """Cell text: floats with 6 significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def html_table(table_id: str, header: Sequence[str], rows: Iterable[Sequence]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        tds = "".join(
            f'<td class="text">{html.escape(format_value(v))}</td>' if isinstance(v, str)
            else f"<td>{html.escape(format_value(v))}</td>" for v in row)
        body.append(f"<tr>{tds}</tr>")
    return (f'<table id="{table_id}"><thead><tr>{cells}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def embedded_image(png: PathLike, alt: str) -> str:
    """``<img>`` with the PNG inlined as a data URI."""
    png = Path(png)
    if not png.is_file():
        raise QmmlError(f"{png}: figure not found")
    data = png.read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise QmmlError(f"{png}: not a PNG file")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img id="img-{html.escape(alt)}" alt="{html.escape(alt)}" ' \
           f'src="data:image/png;base64,{encoded}">'


def read_captions(directory: PathLike, names: Iterable[str]) -> dict[str, str]:
    """Plain-text captions from ``<name>.rst`` files (reST markup stripped); missing = ''."""
    captions = {}
    for name in names:
        path = Path(directory) / f"{name}.rst"
        text = path.read_text() if path.is_file() else ""
        text = re.sub(r":\w+:`([^`]*)`", r"\1", text)  # :math:`x` -> x
        captions[name] = " ".join(text.replace("``", "").replace("*", "").split())
    return captions


# ---- tables ----------------------------------------------------------------------------
def elastic_rows(paths: Keyed) -> list[list]:
    rows, first = [], None
    for i, path in sorted(by_iteration(paths, "elastic").items()):
        values = read_mapping(path, ELASTIC_KEYS)
        first = first or values
        deviation = max(abs(float(values[k]) - float(first[k])) / abs(float(first[k]))
                        for k in ELASTIC_KEYS)
        rows.append([i, *(float(values[k]) for k in ELASTIC_KEYS), deviation * 1e6])
    return rows


def retrain_rows(paths: Keyed) -> list[list]:
    """One row per retraining, keyed by the iteration of the potential it wrote."""
    rows = []
    for j, path in by_iteration(paths, "retrain").items():
        report = read_mapping(path, ("qm_force_rmse_before", "qm_force_rmse_after"))
        rows.append([j, *(report.get(c) for c in RETRAIN_COLUMNS)])
    return sorted(rows, key=lambda r: r[0])


def target_rows(paths: Keyed) -> list[list]:
    rows = []
    for i, path in by_iteration(paths, "targets_summary").items():
        summary = read_mapping(path, ("qm_force_rmse",))
        rows.append([i, *(summary.get(c) for c in TARGET_COLUMNS)])
    return sorted(rows, key=lambda r: r[0])


def run_infos(frames: Keyed) -> dict[tuple[int, Path], dict]:
    """The provenance each QM/ML output records (info of its last frame), by
    (iteration, file)."""
    from qmml.frames import read_run_info

    return {(i, path): read_run_info(path) for i, path in keyed(frames)}


def run_rows(infos: dict[tuple[int, Path], dict]) -> list[list]:
    """One row of recorded provenance per QM/ML output (``infos`` of :func:`run_infos`)."""
    return [[f"iter_{i}/{path.name}", *(info.get(k) for k in RUN_KEYS)]
            for (i, path), info in infos.items()]


def qm_engine_name(config: dict | None, infos: Iterable[dict] = ()) -> tuple[str, list[str]]:
    """The engine label from the config (the classical stand-in is labelled as such) and
    the distinct labels the QM/ML outputs recorded (``infos``: their frame info)."""
    from qmml.engines import engine_label

    label = engine_label(config["qm"]) if config and "qm" in config else "not given"
    recorded = sorted({str(info.get("qm_engine", "?")) for info in infos})
    return label, recorded


def provenance(config: dict | None) -> list[list[str]]:
    import ase
    import matplotlib
    import numpy

    rows = [["generated (UTC)", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")],
            ["qmml", __version__], ["git commit", _git_commit()],
            ["python", platform.python_version()], ["numpy", numpy.__version__],
            ["ase", ase.__version__], ["matplotlib", matplotlib.__version__],
            ["host", platform.node()]]
    try:
        import lammps

        rows.append(["lammps (python module)", str(getattr(lammps, "__version__", "?"))])
    except ImportError:
        pass
    if config:
        for key in ("start_potential", "iterations", "results"):
            if key in config:
                rows.append([f"config: {key}", str(config[key])])
    return rows


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                              "--abbrev=12"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown (not a git checkout)"


def validation_table(tables: Keyed) -> str:
    """Every potential's validation.csv rows (qmml.validation) as one table."""
    from qmml.validation_plot import read_tables

    data = read_tables(keyed(tables))
    rows = [[v.item() if hasattr(v, "item") else v for v in row]
            for row in data.itertuples(index=False)]
    return html_table("validation", list(data.columns), rows)


# ---- the report --------------------------------------------------------------------------
def write_report(output: PathLike, figures: dict[str, PathLike], *,
                 elastic: Keyed = (), retrain: Keyed = (), targets_summary: Keyed = (),
                 binding: PathLike | None = None, frames: Keyed = (),
                 validation: Keyed = (),
                 config: dict | None = None,
                 captions: dict[str, str] | None = None, title: str = "qmml run report"
                 ) -> Path:
    """Write the HTML report; `figures` maps figure name -> PNG, `frames` are the QM/ML
    outputs (relaxations, NEBs) whose recorded provenance is tabulated.  `elastic`,
    `retrain` (by the iteration it wrote), `targets_summary` and `frames` are
    iteration-keyed (:data:`qmml.figures.Keyed`)."""
    captions = captions or {}
    runs = run_infos(frames)  # each output file read once
    engine, recorded = qm_engine_name(config, runs.values())
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<h2>QM engine</h2>",
             f'<p id="qm-engine">QM engine: <b>{html.escape(engine)}</b></p>']
    if recorded:
        parts.append(f"<p>Engine recorded in the QM/ML outputs: "
                     f"{html.escape(', '.join(recorded))}</p>")
        if config and any(r != engine for r in recorded):
            parts.append('<p class="warn">The QM/ML outputs were computed with a different '
                         "engine than the configured one.</p>")

    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        caption = html.escape(captions.get(name, ""))
        parts.append(f'<figure id="fig-{html.escape(name)}"><h3>{html.escape(name)}</h3>'
                     f"{embedded_image(png, name)}<figcaption>{caption}</figcaption></figure>")

    parts.append("<h2>Elastic constants per iteration</h2>")
    parts.append(html_table("elastic", ["iteration", "a0 (Å)", "C11 (GPa)", "C12 (GPa)",
                                        "C44 (GPa)", "max |Δ|/value vs iter 0 (ppm)"],
                            elastic_rows(elastic)))
    parts.append("<h2>QM-atom force errors of each iteration's potential</h2>")
    parts.append("<p>RMSE of force components (eV/Å) on the free QM atoms of the iteration's "
                 "QM/ML frames (targets.json).</p>")
    parts.append(html_table("qm-force-errors", ["iteration", *TARGET_COLUMNS],
                            target_rows(targets_summary)))
    parts.append("<h2>Retraining reports</h2>")
    parts.append(html_table("retrain", ["new iteration", *RETRAIN_COLUMNS],
                            retrain_rows(retrain)))
    if validation:
        parts.append("<h2>Validation against the QM reference</h2>")
        parts.append(validation_table(validation))
    parts.append("<h2>Binding energies</h2>")
    if binding is not None:
        table = read_binding(binding)
        shown = [c for c in BINDING_SHOWN if c in table.columns]
        table = table[shown]  # path files and segment details stay in the CSV
        rows = [[v.item() if hasattr(v, "item") else v for v in row]
                for row in table.itertuples(index=False)]
        parts.append(html_table("binding", list(table.columns), rows))
    else:
        parts.append('<p id="binding">No point defects configured.</p>')
    parts.append("<h2>QM/ML runs</h2>")
    parts.append(html_table("runs", ["file", *RUN_KEYS], run_rows(runs)))
    parts.append("<h2>Provenance</h2>")
    parts.append(html_table("provenance", ["item", "value"], provenance(config)))
    if config:
        parts.append("<h3>Configuration</h3><pre>"
                     f"{html.escape(json.dumps(config, indent=2, default=str))}</pre>")

    document = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
                f"<body>{''.join(parts)}</body></html>\n")
    with atomic_writer(output, "wb") as fh:
        fh.write(document.encode("utf-8"))
    return Path(output)
