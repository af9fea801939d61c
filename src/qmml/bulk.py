"""The QM engine's own bulk properties (a0, C11, C12, C44): targets of the elastic fit.

Periodic n×n×n conventional bcc cells, stresses by the QM engine, the same finite-difference
recipe as ``qmml.elastic.measure_cubic_elastic`` (zero-pressure root for a0, central
differences of the stress for Cij) with a strain step suited to SCF noise.  Every QM
energy+stress is kept on disk under the QM cache (keyed like the QM/ML cluster cache), so
a rerun repeats no QM call.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from qmml import QmmlError
from qmml.elastic import measure_cubic_elastic
from qmml.io import json_text, read_mapping, write_text
from qmml.engines import (BUILDERS, SPECS, NO_KPOINTS, engine_label, engine_settings_hash,
                          resolved_settings)
from qmml.qmcache import QMCache, cluster_key

QM_STRAIN_STEP = 5e-3  # SCF noise (~1e-6 eV) rules out the 1e-4 step used for potentials
TARGET_KEYS = ("a0", "C11", "C12", "C44")


def bulk_calculator(cfg: dict, n_cells: int) -> Calculator:
    """The engine as an energy+stress calculator for periodic bulk cells.

    DFT engines get a Monkhorst-Pack mesh of ``bulk_kpts`` (default 8) k-points per
    conventional-cell reciprocal length divided by n; tblite runs at Γ of the n³ cell.
    """
    s = resolved_settings(cfg)
    name = s.pop("engine")
    s.pop("kpts_line")
    k = bulk_kpoints(cfg, n_cells)
    if name == "gpaw" and s.get("mode") == "lcao":
        s["mode"] = "pw"  # GPAW has no stress in LCAO mode (setup notes)
    # not make_qm_calculator: its adapters return no stress and tblite's replicates clusters
    calc = BUILDERS[name](s, (k, k, k))
    if name in SPECS:  # every strained cell starts from atoms, never from another cell's
        SPECS[name].prepare(calc, False)  # wavefunction (VASP would read WAVECAR)
    return calc


def bulk_kpoints(cfg: dict, n_cells: int) -> int:
    """k-points per direction of an n³ conventional-cell supercell (``bulk_kpts`` / n)."""
    return max(1, round(int(cfg.get("bulk_kpts", 8)) / n_cells))


def bulk_settings_hash(cfg: dict, n_cells: int) -> str:
    """Cache key part of bulk results: the engine's settings plus, for engines with
    k-points, the bulk k-mesh (which the clusters' settings hash leaves out)."""
    h = engine_settings_hash(cfg)
    return h if cfg["engine"] in NO_KPOINTS else f"{h}-k{bulk_kpoints(cfg, n_cells)}"


class CachedStressCalculator(Calculator):
    """Energy+stress from disk when this exact cell was computed before."""

    implemented_properties = ["energy", "free_energy", "stress"]

    def __init__(self, engine: Calculator, directory: str | Path, settings_hash: str,
                 log=None):
        super().__init__()
        self.engine, self.settings_hash, self.log = engine, settings_hash, log
        # the QM cache's reading rules: an unusable entry is quarantined and recomputed
        self.cache = QMCache(directory, settings_hash, log=log)
        self.store_dir = Path(directory) / "bulk"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.n_real_calls = self.n_cache_hits = 0

    @staticmethod
    def _entry(path: Path) -> dict:
        """A stored energy+stress, verified (raises if unusable)."""
        data = json.loads(path.read_text())
        energy, stress = float(data["energy"]), np.asarray(data["stress"], dtype=float)
        if stress.shape != (6,) or not (np.isfinite(stress).all() and np.isfinite(energy)):
            raise ValueError(f"stress of shape {stress.shape} (or non-finite values)")
        return {"energy": energy, "stress": stress.tolist()}

    def calculate(self, atoms=None, properties=("stress",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        path = self.store_dir / f"{cluster_key(self.atoms, self.settings_hash)}.json"
        data = self.cache.read_verified(path, self._entry) if path.is_file() else None
        if data is not None:
            self.n_cache_hits += 1
        else:
            atoms = self.atoms.copy()
            atoms.calc = self.engine
            start = time.perf_counter()
            try:
                data = {"energy": float(atoms.get_potential_energy()),
                        "stress": [float(x) for x in atoms.get_stress()]}
            except Exception as err:  # engines raise their own types; keep the message
                raise QmmlError(f"QM bulk calculation failed: {' '.join(str(err).split())}") \
                    from None
            self.n_real_calls += 1
            write_text(path, json_text(data, path, indent=None))
            if self.log:
                self.log(f"QM bulk call {self.n_real_calls}: {len(atoms)} atoms, "
                         f"{time.perf_counter() - start:.1f} s")
        self.results.update(energy=data["energy"], free_energy=data["energy"],
                            stress=np.array(data["stress"]))


def qm_bulk_reference(elastic_cfg: dict, qm_cfg: dict, cache_dir: str | Path,
                      a0_guess: float = 3.18, log=None) -> dict:
    """Targets for the elastic fit: numbers from the config, "qm" ones measured."""
    wanted = [k for k in TARGET_KEYS if elastic_cfg.get(k, "qm") == "qm"]
    result = {k: float(elastic_cfg[k]) for k in TARGET_KEYS if k not in wanted}
    source = {k: "config" for k in result}
    if wanted:
        n = int(elastic_cfg.get("qm_cell", 3))
        calc = CachedStressCalculator(bulk_calculator(qm_cfg, n), cache_dir,
                                      bulk_settings_hash(qm_cfg, n), log=log)
        measured = measure_cubic_elastic(calc, a0_guess, n=n, h=QM_STRAIN_STEP)
        result.update({k: float(measured[k]) for k in wanted})
        source.update({k: f"qm: {engine_label(qm_cfg)}, {n}x{n}x{n} cell" for k in wanted})
        result["qm_calls"] = calc.n_real_calls
        result["qm_cache_hits"] = calc.n_cache_hits
    result["source"] = source
    return result


def read_targets(path: str | Path) -> dict:
    return read_mapping(path, TARGET_KEYS)

