"""The paper's figures, one function per figure, from plain files (no Snakemake needed).

Every function takes input paths (or data) and an output PNG path, writes the figure with
the Agg backend and returns the numbers it drew, so callers (the HTML report, tests) can
show or check them.  Iteration numbers come from ``iter_<i>`` in the paths when present,
otherwise from the position in the list.

Figures: ``force_parity``, ``force_rmse``, ``elastic_constants``, ``glide_barriers``,
``dd_maps``, ``binding_energy``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.io import atomic_writer, read_mapping

PathLike = str | Path
# iteration-keyed inputs: {iteration: path}, or (iteration, path) pairs where an iteration
# has several files (one per dislocation case); the workflow gives the iterations
Keyed = Mapping[int, PathLike] | Sequence[tuple[int, PathLike]]
ELASTIC_KEYS = ("a0", "C11", "C12", "C44")
ELASTIC_UNITS = {"a0": "Å", "C11": "GPa", "C12": "GPa", "C44": "GPa"}
BINDING_COLUMNS = ("defect", "dislocation", "distance", "E_b_qmml", "E_b_ml")
DPI = 110
DD_PANEL_INCHES = 5.0
PROFILE_POINTS = 3  # binding energies: fewest distances drawn as a connected profile


# ---- small helpers ------------------------------------------------------------------------
def keyed(items: Keyed) -> list[tuple[int, Path]]:
    """(iteration, path) pairs of an iteration-keyed input, in the given order."""
    pairs = items.items() if isinstance(items, Mapping) else items
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise QmmlError(f"{pair}: expected an (iteration, path) pair")
        out.append((int(pair[0]), Path(pair[1])))
    return out


def by_iteration(items: Keyed, what: str = "inputs") -> dict[int, Path]:
    """{iteration: path} of an input with one file per iteration."""
    files: dict[int, Path] = {}
    for i, path in keyed(items):
        if i in files:
            raise QmmlError(f"{what}: two files for iteration {i} ({files[i]}, {path})")
        files[i] = path
    return files


def _pyplot():
    """matplotlib's pyplot with the file-only Agg backend (no display on compute nodes),
    imported with the first figure: the workflow imports this module for
    :data:`FIGURES` on every parse, which pyplot would make several times slower."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, output: PathLike) -> Path:
    output = Path(output)
    try:
        with atomic_writer(output, "wb") as fh:  # no half-written figure if the process dies
            fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return output


def _message_figure(output: PathLike, title: str, message: str) -> Path:
    fig, ax = _pyplot().subplots(figsize=(5, 3))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return _save(fig, output)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean square of force-component differences (the retrain report's definition)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(np.sqrt(np.mean(d ** 2))) if d.size else float("nan")


# ---- 1. force parity ----------------------------------------------------------------------
def qm_atom_forces(targets: PathLike, potential: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(QM/ML forces, ML forces of `potential`) on the free QM atoms of every target frame.

    Arrays are (n_atoms, 3) in eV/Å, frames concatenated in file order.
    """
    from qmml.extract import qm_atom_forces as forces_on_qm_atoms
    from qmml.frames import read_output_frames
    from qmml.potential import SNAPPotential

    frames = read_output_frames(targets, require_region=True)
    return forces_on_qm_atoms(frames, SNAPPotential.read(potential), str(targets))


def force_parity(targets: Keyed, potentials: Keyed, output: PathLike) -> dict[int, dict]:
    """ML vs QM/ML force components on the QM atoms of each iteration's targets.

    Iteration i's targets are evaluated with potential i (before retraining) and, when
    present, potential i+1 (after).  Returns {i: {"rmse_before", "rmse_after", "n_qm_atoms",
    "n_components"}} (3 force components per QM atom, each one point in the plot).
    """
    pots = by_iteration(potentials, "potentials")
    data = {}
    for i, path in sorted(by_iteration(targets, "targets").items()):
        if i not in pots:
            raise QmmlError(f"{path}: no potential of iteration {i} given")
        ref, before = qm_atom_forces(path, pots[i])
        entry = {"n_qm_atoms": int(len(ref)), "ref": ref, "before": before,
                 "rmse_before": rmse(before, ref), "after": None, "rmse_after": None}
        if i + 1 in pots:
            _, after = qm_atom_forces(path, pots[i + 1])
            entry.update(after=after, rmse_after=rmse(after, ref))
        data[i] = entry
    if not data:
        _message_figure(output, "QM-atom force parity", "no QM/ML target data")
        return {}
    fig, axes = _pyplot().subplots(1, len(data), figsize=(4.6 * len(data), 4.9),
                                   squeeze=False, layout="constrained")
    for ax, (i, e) in zip(axes[0], data.items()):
        ref = e["ref"].ravel()
        ax.scatter(ref, e["before"].ravel(), s=9, alpha=0.7, color="tab:blue",
                   label=f"potential {i} (before): RMSE {e['rmse_before']:.4f} eV/Å")
        if e["after"] is not None:
            ax.scatter(ref, e["after"].ravel(), s=9, alpha=0.7, color="tab:orange",
                       marker="s", label=f"potential {i + 1} (after): "
                       f"RMSE {e['rmse_after']:.4f} eV/Å")
        values = np.concatenate([ref, e["before"].ravel()])
        lim = 1.05 * float(np.abs(values).max() or 1.0)
        ax.plot([-lim, lim], [-lim, lim], color="0.4", lw=0.8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.locator_params(nbins=5)  # readable ticks on both axes of a square panel
        ax.set_xlabel("QM/ML force component (eV/Å)")
        ax.set_ylabel("ML force component (eV/Å)")
        # one point per Cartesian component: 3 per QM atom
        ax.set_title(f"iteration {i}\n{ref.size} force components on {e['n_qm_atoms']} QM "
                     "atoms (all frames)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, output)
    return {i: {**{k: e[k] for k in ("rmse_before", "rmse_after", "n_qm_atoms")},
                "n_components": int(e["ref"].size)} for i, e in data.items()}


# ---- 2. force RMSE per iteration ----------------------------------------------------------
def force_rmse(retrain: Keyed, targets_summary: Keyed, output: PathLike) -> dict:
    """QM-atom force RMSE per iteration from retrain.json (keyed by the iteration of the
    potential it wrote) and targets.json.

    Returns {"own": {i: rmse of potential i on iteration i's QM/ML data},
    "before": {j: retrain j's RMSE of potential j-1}, "after": {j: of potential j}}, both
    retrain values on the targets of iteration j-1.
    """
    own = {i: float(read_mapping(p, ["qm_force_rmse"])["qm_force_rmse"])
           for i, p in by_iteration(targets_summary, "targets_summary").items()}
    before, after = {}, {}
    for j, p in by_iteration(retrain, "retrain").items():
        r = read_mapping(p, ["qm_force_rmse_before", "qm_force_rmse_after"])
        before[j], after[j] = float(r["qm_force_rmse_before"]), float(r["qm_force_rmse_after"])
    if not (own or before):
        _message_figure(output, "QM-atom force RMSE", "no force data yet")
        return {"own": own, "before": before, "after": after}
    fig, ax = _pyplot().subplots(figsize=(5.5, 4))
    if own:
        # large circles: they coincide with "before" when retraining used only these data
        ax.plot(list(own), list(own.values()), "o-", color="tab:blue", ms=11,
                label="potential i on its own QM/ML data (targets.json)")
    if before:
        # retrain j: potential j-1 (before) and potential j (after) on the data of j-1
        for k, j in enumerate(sorted(before)):
            ax.plot([j - 1, j], [before[j], after[j]], "s--", color="tab:orange",
                    label="retraining: before → after (same data)" if k == 0 else None)
    ax.set_xlabel("potential iteration")
    ax.set_ylabel("QM-atom force RMSE (eV/Å)")
    ax.set_xticks(sorted(set(own) | set(before) | {j - 1 for j in before}))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, output)
    return {"own": own, "before": before, "after": after}


# ---- 3. elastic constants -----------------------------------------------------------------
def elastic_constants(elastic: Keyed, output: PathLike) -> dict:
    """a0, C11, C12, C44 per iteration and their relative deviation from iteration 0.

    Returns {"iterations": [...], "values": {key: [...]}, "relative_deviation": {key: [...]}}.
    """
    files = by_iteration(elastic, "elastic")
    if not files:
        raise QmmlError("elastic_constants: no elastic.json files given")
    iters = sorted(files)
    rows = [read_mapping(files[i], ELASTIC_KEYS) for i in iters]
    values = {k: [float(r[k]) for r in rows] for k in ELASTIC_KEYS}
    relative = {k: [(v - values[k][0]) / values[k][0] for v in values[k]] for k in ELASTIC_KEYS}
    # constrained layout: each panel's tick labels get their own room (no overlap with the
    # panel to the left)
    fig, axes = _pyplot().subplots(2, 4, figsize=(14, 6), sharex=True, layout="constrained")
    for col, key in enumerate(ELASTIC_KEYS):
        top, bottom = axes[0, col], axes[1, col]
        top.plot(iters, values[key], "o-", color="tab:blue")
        mean = np.mean(values[key])
        # a flat line must look flat: show at least ±1 % around the mean
        spread = max(0.01 * abs(mean), 1.2 * float(np.ptp(values[key])))
        top.set_ylim(mean - spread, mean + spread)
        top.set_title(f"{key} ({ELASTIC_UNITS[key]})")
        top.ticklabel_format(axis="y", useOffset=False)
        bottom.plot(iters, np.asarray(relative[key]) * 1e6, "o-", color="tab:red")
        bottom.axhline(0, color="0.5", lw=0.8)
        bottom.set_xlabel("iteration")
        bottom.set_xticks(iters)
        bottom.set_ylabel("deviation from iter 0 (ppm)" if col == 0 else "")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    fig.suptitle("Elastic properties per iteration (hard constraints keep them fixed)")
    _save(fig, output)
    return {"iterations": iters, "values": values, "relative_deviation": relative}


# ---- 4. glide barriers --------------------------------------------------------------------
def read_neb_profile(path: PathLike) -> tuple[list[Atoms], np.ndarray, np.ndarray]:
    """QM/ML NEB images and their virtual-work profile (s in [0, 1], energy in eV)."""
    from qmml.frames import read_output_frames

    images = read_output_frames(path)
    if len(images) < 3:
        raise QmmlError(f"{path}: an NEB needs ≥ 3 images, found {len(images)}")
    missing = [k for k, im in enumerate(images) if "neb_energy_virtual_work" not in im.info]
    if missing:
        raise QmmlError(f"{path} frame {missing[0]}: info key 'neb_energy_virtual_work' "
                        "missing (not a qmml neb output)")
    energy = np.array([float(im.info["neb_energy_virtual_work"]) for im in images])
    # qmml neb stores the virtual-work energy at s = k/(n-1) (qmml.steps.neb_file)
    s = np.linspace(0.0, 1.0, len(images))
    return images, s, energy - energy[0]


def glide_barriers(neb_files: Keyed, ml_profiles: Keyed, output: PathLike) -> dict:
    """QM/ML virtual-work glide profiles vs the ML-only NEBs of Θ0 and the last potential.

    ``neb_files``: the QM/ML NEBs (``<case>_neb.xyz``; files of one case share a panel).
    ``ml_profiles``: per potential, the JSON of its ML-only NEB profiles by case that the
    validation writes (:func:`qmml.validation.peierls_profile`; end states of the QM/ML
    NEB it validates against, relaxed with the potential); the first and last are drawn.
    Returns {case: {"qmml": {i: {"s", "energy", "barrier"}}, "ml": {label: {...,
    "converged"}}}}.
    """
    if not neb_files:
        _message_figure(output, "Glide barriers",
                        "no glide cases configured (glide_images = 0 for every dislocation)")
        return {}
    profiles = by_iteration(ml_profiles, "ml_profiles")
    if not profiles:
        raise QmmlError("glide_barriers: no ML NEB profiles given")
    first, last = min(profiles), max(profiles)
    labels = {first: f"ML Θ0 (iteration {first})"}
    if last != first:
        labels[last] = f"ML retrained (iteration {last})"
    ml = {i: read_mapping(profiles[i]) for i in labels}
    cases: dict[str, dict[int, Path]] = {}
    for i, path in keyed(neb_files):
        case = path.name.removesuffix(".xyz").removesuffix("_neb")
        cases.setdefault(case, {})[i] = path
    result = {}
    fig, axes = _pyplot().subplots(1, len(cases), figsize=(5.2 * len(cases), 4), squeeze=False)
    for ax, (case, files) in zip(axes[0], cases.items()):
        entry = {"qmml": {}, "ml": {}}
        for i, path in sorted(files.items()):
            images, s, e = read_neb_profile(path)
            entry["qmml"][i] = {"s": s.tolist(), "energy": e.tolist(), "barrier": float(e.max())}
            ax.plot(s, e * 1e3, "o-", label=f"QM/ML (virtual work), iteration {i}: "
                    f"{e.max() * 1e3:.1f} meV")
        for i, label in labels.items():
            if case not in ml[i]:
                raise QmmlError(f"{profiles[i]}: no ML NEB profile of case '{case}'")
            profile = {key: ml[i][case][key] for key in ("s", "energy", "barrier", "converged")}
            entry["ml"][label] = profile
            ax.plot(profile["s"], np.array(profile["energy"]) * 1e3, "s--",
                    label=f"{label}: {profile['barrier'] * 1e3:.1f} meV"
                    + ("" if profile["converged"] else " (NEB not converged)"))
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("reaction coordinate")
        ax.set_ylabel("energy (meV per cell)")
        ax.set_title(f"{case}: glide barrier")
        ax.legend(fontsize=7)
        result[case] = entry
    _save(fig, output)
    return result


# ---- 5. differential-displacement maps ----------------------------------------------------
_STRUCTURE_KEYS = ("kind", "a0", "C11", "C12", "C44", "core_position", "lattice_origin",
                   "burgers", "n_line")


def reference_bulk(atoms: Atoms, structure: Atoms | None = None) -> tuple[Atoms, dict]:
    """Perfect-crystal counterpart of a dislocation cylinder (same atoms, same order).

    The lattice sites come from ``qmml.structures.perfect_sites`` applied to `structure`
    (the unrelaxed input, whose atoms sit exactly on the elastic field) or, without it, to
    `atoms` itself; either must carry the structure info (kind, a0, C_ij, core_position…).
    Returns the bulk and the info used.
    """
    from qmml.structures import perfect_sites

    source = structure if structure is not None else atoms
    missing = [k for k in _STRUCTURE_KEYS if k not in source.info]
    if missing:
        raise QmmlError(f"dd_maps: structure info '{missing[0]}' missing (give the unrelaxed "
                        "structure built by qmml build)")
    if len(source) != len(atoms) or (source.numbers != atoms.numbers).any():
        raise QmmlError("dd_maps: relaxed and unrelaxed structures hold different atoms")
    sites, _ = perfect_sites(source)
    host = np.isfinite(sites).all(axis=1)
    bulk = Atoms(atoms.numbers[host], sites[host], cell=atoms.cell, pbc=atoms.pbc)
    return bulk, dict(source.info)


def differential_displacements(dislo: Atoms, bulk: Atoms, burgers: Sequence[float],
                               a0: float) -> tuple[np.ndarray, np.ndarray]:
    """Vitek differential displacements along b of first-neighbour pairs of `bulk`.

    Returns (pairs (n, 2), dd (n,) in Å wrapped into [-|b|/2, |b|/2]).  The same
    quantity the DD arrows show; for a compact ½⟨111⟩ screw core the three core pairs
    carry ≈ b/3.
    """
    from ase.neighborlist import neighbor_list

    b = np.asarray(burgers, float)
    blen = float(np.linalg.norm(b))
    i, j = neighbor_list("ij", bulk, 0.95 * a0)  # 1NN only (0.866·a0)
    keep = i < j
    i, j = i[keep], j[keep]
    u = dislo.positions - bulk.positions
    dd = (u[j] - u[i]) @ (b / blen)
    dd -= blen * np.round(dd / blen)
    return np.stack([i, j], axis=1), dd


def dd_maps(relaxed: Keyed, output: PathLike,
            structures: Sequence[PathLike | None] | None = None, window: float = 10.0,
            ) -> dict[str, dict]:
    """Differential-displacement (Vitek) maps of relaxed dislocation cores.

    Drawn here rather than with ``matscipy.dislocation.plot_vitek``: that wraps atomman,
    whose 1.5.4 release calls ``matplotlib.cm.get_cmap`` (removed in matplotlib 3.9), and
    it assumes b ∥ z (screw only).  Same convention (arrows along the neighbour pair,
    length ∝ DD along b).  `structures` (same order as
    `relaxed`) are the unrelaxed inputs providing the structure info when the relaxed
    frames do not carry it.  Returns {label: {"kind", "max_dd_over_b", "core_dd_over_b"}}:
    the largest DD within `window` Å of the core, in units of |b|.
    """
    from qmml.io import read_frame

    relaxed = keyed(relaxed)
    if not relaxed:
        _message_figure(output, "Differential-displacement maps", "no relaxed cores")
        return {}
    structures = list(structures) if structures else [None] * len(relaxed)
    if len(structures) != len(relaxed):
        raise QmmlError("dd_maps: give one unrelaxed structure per relaxed file")
    n = len(relaxed)
    ncol = min(n, 3)
    nrow = -(-n // ncol)
    fig, axes = _pyplot().subplots(nrow, ncol, figsize=(DD_PANEL_INCHES * ncol,
                                                        DD_PANEL_INCHES * nrow + 0.6),
                                   squeeze=False, layout="constrained")
    summary = {}
    heights = None
    for ax, (iteration, path), spath in zip(axes.ravel(), relaxed, structures):
        atoms = read_frame(path)
        structure = read_frame(spath) if spath else None
        bulk, info = reference_bulk(atoms, structure)
        host = np.array(atoms.get_chemical_symbols()) == info.get("symbol", "W")
        dislo = Atoms(atoms.numbers[host], atoms.positions[host], cell=atoms.cell,
                      pbc=atoms.pbc)
        a0, burgers = float(info["a0"]), np.asarray(info["burgers"], float)
        blen = float(np.linalg.norm(burgers))
        core = np.asarray(info["core_position"], float)
        label = f"{path.stem.removesuffix('_initial')} (iteration {iteration})"
        if label in summary:  # same case and iteration twice: keep both panels apart
            label += f" [{len(summary) + 1}]"
        pairs, dd = differential_displacements(dislo, bulk, burgers, a0)
        heights = _draw_dd(ax, dislo, bulk, info, window, pairs, dd)
        mid = 0.5 * (bulk.positions[pairs[:, 0], :2] + bulk.positions[pairs[:, 1], :2])
        near = np.linalg.norm(mid - core, axis=1) < window
        summary[label] = {"kind": info["kind"],
                          "max_dd_over_b": float(np.abs(dd[near]).max() / blen),
                          "core_dd_over_b": float(np.abs(dd[np.linalg.norm(
                              mid - core, axis=1) < a0]).max(initial=0.0) / blen)}
        ax.set_title(f"{label}\nmax DD {summary[label]['max_dd_over_b']:.2f} b", fontsize=9)
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    # one colour legend for every panel: same colour map and range (0 to 1)
    bar = fig.colorbar(heights, ax=axes[:, :n].ravel().tolist(), location="bottom",
                       shrink=min(0.6, 0.3 * n), aspect=30, pad=0.02)
    bar.set_label("atom height along the line (fraction of one period)")
    _save(fig, output)
    return summary


def _draw_dd(ax, dislo: Atoms, bulk: Atoms, info: dict, window: float,
             pairs: np.ndarray, dd: np.ndarray):
    """Vitek map: atoms projected on xy (coloured by height within one period along the
    line), one arrow per first-neighbour pair along the pair's projection, centred on its
    midpoint.  Arrow length: |DD|/(b/3) times the pair separation for a screw (DD = b/3
    spans the pair), |DD|/(b/2) for an edge (its core DDs reach b/2).  Pairs with
    |DD| < 2 % of b (elastic far field) get no arrow.  Returns the atoms' scatter (for
    the colour bar)."""
    b = float(np.linalg.norm(info["burgers"]))
    core = np.asarray(info["core_position"], float)
    period = float(bulk.cell[2, 2]) / int(info.get("n_line", 1))
    z0 = float(bulk.positions[:, 2].min())
    xy = bulk.positions[:, :2]
    layer = ((bulk.positions[:, 2] - z0) % period) / period
    inside = np.all(np.abs(xy - core) < window + 0.5, axis=1)
    first_period = (bulk.positions[:, 2] - z0) < period - 1e-6
    shown = inside & first_period
    # markers smaller than the closest projected columns (dense for edges along <112>)
    points_per_angstrom = 0.8 * 72 * DD_PANEL_INCHES / (2 * window)  # axes ≈ 80 % of a panel
    spacing = _column_spacing(xy[shown])
    diameter = min(11.0, 0.55 * spacing * points_per_angstrom)
    heights = ax.scatter(xy[shown, 0], xy[shown, 1], c=layer[shown], cmap="viridis", vmin=0,
                         vmax=1, s=diameter ** 2, edgecolors="k",
                         linewidths=0.6 if diameter > 6 else 0.3, zorder=1)
    use = inside[pairs[:, 0]] & inside[pairs[:, 1]] & first_period[pairs[:, 0]]
    i, j = pairs[use, 0], pairs[use, 1]
    sep = xy[j] - xy[i]
    spans = 3.0 if str(info.get("kind", "")).startswith("screw") else 2.0
    arrow = sep * (spans * dd[use] / b)[:, None]  # sign of DD sets the arrow's direction
    mid = 0.5 * (xy[i] + xy[j])
    big = np.abs(dd[use]) > 0.02 * b
    ax.quiver(mid[big, 0] - 0.5 * arrow[big, 0], mid[big, 1] - 0.5 * arrow[big, 1],
              arrow[big, 0], arrow[big, 1], angles="xy", scale_units="xy", scale=1,
              width=0.005, headwidth=3.5, color="k", zorder=2)
    ax.plot(*core, "r+", ms=12, mew=2, zorder=3)
    ax.set_xlim(core[0] - window, core[0] + window)
    ax.set_ylim(core[1] - window, core[1] + window)
    ax.set_aspect("equal")
    return heights


def _column_spacing(xy: np.ndarray) -> float:
    """Smallest distance (Å) between distinct atom columns projected on xy."""
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(xy).query(xy, k=min(len(xy), 8))
    distinct = distance[distance > 0.1]
    return float(distinct.min()) if distinct.size else 1.0


# ---- 6. binding energies ------------------------------------------------------------------
def read_binding(path: PathLike):
    """binding.csv as a pandas DataFrame with the required columns checked."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise QmmlError(f"{path}: file not found")
    try:
        table = pd.read_csv(path)
    except Exception as err:  # pandas raises several parser error types
        raise QmmlError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in BINDING_COLUMNS if c not in table.columns]
    if missing:
        raise QmmlError(f"{path}: required column '{missing[0]}' missing "
                        f"(need {', '.join(BINDING_COLUMNS)})")
    for column in ("distance", "E_b_qmml", "E_b_ml"):
        if not np.issubdtype(table[column].dtype, np.number):
            raise QmmlError(f"{path}: column '{column}' is not numeric")
    return table


def binding_energy(binding: PathLike | None, output: PathLike) -> dict:
    """E_b (QM/ML and ML-only) vs distance from the core, one curve pair per defect.

    Returns {(defect, dislocation): {"distance", "E_b_qmml", "E_b_ml"[, "E_b_qmml_path_error"]}}
    sorted by distance; the path error (``qmml.binding``) is drawn as error bars.  Points of
    a defect are joined by lines only when it has ≥ 3 distances (a profile); fewer are
    markers alone.
    """
    if binding is None:
        _message_figure(output, "Binding energies", "no point defects configured")
        return {}
    table = read_binding(binding)
    groups = {}
    for (defect, disl), g in table.groupby(["defect", "dislocation"], sort=True):
        g = g.sort_values("distance")
        columns = ["distance", "E_b_qmml", "E_b_ml"]
        if "E_b_qmml_path_error" in g.columns:
            columns.append("E_b_qmml_path_error")
        groups[(str(defect), str(disl))] = {c: g[c].astype(float).tolist() for c in columns}
    if not groups:
        _message_figure(output, "Binding energies", f"{binding}: no rows")
        return {}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, ((defect, disl), g) in enumerate(groups.items()):
        c = colors[k % len(colors)]
        # lines only where >= 3 distances trace a profile; two points are two points
        profile = len(g["distance"]) >= PROFILE_POINTS
        qm_style, ml_style = ("o-", "s--") if profile else ("o", "s")
        if "E_b_qmml_path_error" in g:  # qmml.binding's quadrature-error estimate
            ax.errorbar(g["distance"], g["E_b_qmml"], yerr=np.abs(g["E_b_qmml_path_error"]),
                        fmt=qm_style, color=c, capsize=3, label=f"{defect} ({disl}) QM/ML")
        else:
            ax.plot(g["distance"], g["E_b_qmml"], qm_style, color=c,
                    label=f"{defect} ({disl}) QM/ML")
        ax.plot(g["distance"], g["E_b_ml"], ml_style, color=c, mfc="none", ms=8,
                label=f"{defect} ({disl}) ML only")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("distance from the dislocation line (Å)")
    ax.set_ylabel("binding energy E_b (eV), > 0 attractive")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, output)
    return groups


# every figure: the workflow's figure inputs it reads (their names, in its argument order)
# and how it draws them into ``output``; the workflow makes one job per entry
FIGURE_TABLE = {
    "force_parity": (("targets", "potentials"), force_parity),
    "force_rmse": (("retrain", "targets_summary"), force_rmse),
    "elastic_constants": (("elastic",), elastic_constants),
    "glide_barriers": (("neb", "ml_profiles"), glide_barriers),
    "dd_maps": (("relaxed", "structures"),
                lambda relaxed, structures, output: dd_maps(relaxed, output, structures or None)),
    "binding_energy": (("binding",),  # 0 or 1 path
                       lambda binding, output: binding_energy((list(binding) or [None])[0],
                                                              output)),
}
FIGURES = tuple(FIGURE_TABLE)
FIGURE_INPUTS = {name: names for name, (names, _) in FIGURE_TABLE.items()}


def make_figure(name: str, inputs: dict, output: PathLike) -> object:
    """Figure ``name`` (:data:`FIGURES`) from the workflow's figure inputs: iteration-keyed
    (:data:`Keyed`) ``elastic``, ``potentials``, ``targets``, ``targets_summary``,
    ``retrain``, ``relaxed``, ``neb``, ``ml_profiles``; ``structures`` (paths, parallel
    to ``relaxed``) and ``binding`` (0 or 1 path); a missing input is empty.  Returns the
    numbers it drew."""
    if name not in FIGURE_TABLE:
        raise QmmlError(f"figure '{name}': unknown (one of {', '.join(FIGURES)})")
    names, draw = FIGURE_TABLE[name]
    return draw(*(inputs.get(key, []) for key in names), output)
