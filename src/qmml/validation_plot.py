"""The validation figure: each property's error against iteration (``validation.csv``
of every potential, :mod:`qmml.validation`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on compute nodes
import matplotlib.pyplot as plt  # noqa: E402

PathLike = str | Path
# what each panel shows: relative error (%) where the reference is a value, else the
# absolute error in the property's unit
UNITS = {"vacancy_formation_energy": "eV", "vacancy_migration_barrier": "eV",
         "peierls_barrier": "eV", "path_barrier": "eV", "path_profile_rmse": "eV",
         "screw_core_offset": "Å", "force_rmse_heldout": "eV/Å", "screw_core": "mismatch"}
ABSOLUTE = ("path_profile_rmse", "screw_core_offset", "force_rmse_heldout", "screw_core")


def read_tables(tables: Sequence[tuple[int, PathLike]]):
    """One frame of every (iteration, validation.csv), with an ``iteration`` column."""
    import pandas as pd

    frames = []
    for i, path in tables:
        frame = pd.read_csv(path)
        frame.insert(0, "iteration", int(i))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def plot(tables: Sequence[tuple[int, PathLike]], output: PathLike) -> dict:
    """Panels per property, a line per case; returns {property: {case: (iterations,
    errors)}} as drawn (relative errors in %, absolute ones in their unit)."""
    data = read_tables(tables)
    properties = list(dict.fromkeys(data["property"]))
    n_cols = min(4, len(properties))
    n_rows = -(-len(properties) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 2.8 * n_rows),
                             squeeze=False)
    numbers = {}
    for ax, prop in zip(axes.flat, properties):
        absolute = prop in ABSOLUTE
        numbers[prop] = {}
        for case, group in data[data["property"] == prop].groupby("case", sort=True):
            group = group.sort_values("iteration")
            values = group["error"] if absolute else 100 * group["relative_error"]
            values = values.astype(float).to_numpy()
            numbers[prop][case] = (group["iteration"].tolist(), values.tolist())
            ax.plot(group["iteration"], values, "o-", label=str(case))
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(prop, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"error ({UNITS.get(prop, 'GPa' if prop.startswith('C') else 'Å')})"
                      if absolute else "relative error (%)", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(properties):]:
        ax.axis("off")
    fig.suptitle("Validation of each iteration's potential against the QM reference")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return numbers
