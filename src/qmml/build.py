"""Dislocation cases (cylinder or glide end points, optional point defect,
QM/buffer/MM regions) written as extended XYZ with ``region`` and ``fix_mask`` arrays.

Settings: a mapping of SETTINGS keys (:func:`load_settings`: defaults < a YAML/JSON file
< explicit values), e.g. ``fixed_width``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from qmml import QmmlError
from qmml.io import read_mapping
from qmml.potential import resolve_prefix
from qmml.regions import cylinder_region, sphere_region
from qmml.structures import add_point_defect, dislocation_cylinder, glide_endpoints

DEFAULT_POTENTIAL = "W_milady_lml"  # Θ0 of the paper: its cutoff sets the minimum buffer
REFERENCE_ZBL = {"W_2940_2017_2": (4.0, 4.8)}  # this SNAP needs its ZBL overlay

# key -> (type, default); None default = not set
SETTINGS: dict[str, tuple[type, object]] = {
    "kind": (str, None), "radius": (float, None), "fixed_width": (float, 10.0),
    "n_line": (int, 1), "symbol": (str, "W"),
    "potential": (str, None), "zbl": (list, None),
    "a0": (float, None), "C11": (float, None), "C12": (float, None), "C44": (float, None),
    "qm_radius": (float, None), "buffer": (float, 12.0), "region": (str, "auto"),
    "defect": (str, None), "distance": (float, 0.0), "direction": (list, [1.0, 0.0]),
    "z": (float, None), "glide": (bool, False), "output": (str, None),
}


def default_settings(**overrides) -> dict:
    """The settings ``build_case`` takes: the SETTINGS defaults, updated with ``overrides``."""
    settings = {key: default for key, (_, default) in SETTINGS.items()}
    settings.update(overrides)
    return settings


def load_settings(config: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults < ``config`` file (YAML/JSON mapping) < ``overrides`` (None values are
    not given), with types checked."""
    settings = default_settings()
    if config:
        settings.update(_read_config(Path(config)))
    for key in SETTINGS:
        value = (overrides or {}).get(key)
        if value is not None:
            settings[key] = value
    for key in ("kind", "radius", "output"):
        if settings[key] is None:
            raise QmmlError(f"{key}: required (flag --{key.replace('_', '-')} or config key)")
    return settings


def _read_config(path: Path) -> dict:
    data = read_mapping(path)
    out = {}
    for key, value in data.items():
        if key not in SETTINGS:
            raise QmmlError(f"{path}: unknown key '{key}' (known: {', '.join(SETTINGS)})")
        kind, _ = SETTINGS[key]
        if value is None:
            continue
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                out[key] = value
            elif kind is list:
                out[key] = [float(v) for v in value]
            elif kind is int:
                if float(value) != int(value):
                    raise TypeError
                out[key] = int(value)
            else:
                out[key] = kind(value)
        except (TypeError, ValueError):
            raise QmmlError(f"{path}: key '{key}': expected {kind.__name__}, "
                            f"got {value!r}") from None
    return out


def elastic_constants(settings: dict, prefix: Path) -> dict:
    """a0, C11, C12, C44 from the settings, or measured with the potential."""
    keys = ("a0", "C11", "C12", "C44")
    given = {k: settings[k] for k in keys if settings[k] is not None}
    if len(given) == 4:
        return {k: float(v) for k, v in given.items()}
    if given:
        missing = [k for k in keys if k not in given]
        raise QmmlError(f"{', '.join(missing)}: give all of a0, C11, C12, C44 or none "
                        "(none: measured with --potential)")
    from qmml.elastic import A0_GUESS, measure_cubic_elastic
    from qmml.potential import SNAPPotential

    zbl = settings["zbl"] or REFERENCE_ZBL.get(prefix.name)
    calc = SNAPPotential.read(prefix).calculator(zbl=tuple(zbl) if zbl else None)
    return measure_cubic_elastic(calc, A0_GUESS, symbol=settings["symbol"])


def build_case(settings: dict) -> tuple[list[Atoms], dict]:
    """Build the configured structures (1 or 2 states) and their regions."""
    from qmml.potential import SNAPPotential

    prefix = resolve_prefix(settings["potential"] or DEFAULT_POTENTIAL)
    elastic = elastic_constants(settings, prefix)
    geometry = dict(kind=settings["kind"], **elastic, radius=settings["radius"],
                    fixed_width=settings["fixed_width"], n_line=settings["n_line"],
                    symbol=settings["symbol"])
    if settings["glide"]:
        if settings["defect"]:
            raise QmmlError("defect: a point defect with --glide is not supported (build "
                            "the defect case without --glide)")
        states = list(glide_endpoints(**geometry))
        for state, label in zip(states, ("initial", "final")):
            state.info["state"] = label
    else:
        states = [dislocation_cylinder(**geometry)]
        if settings["defect"]:
            states = [add_point_defect(states[0], settings["defect"], settings["distance"],
                                       direction=settings["direction"], z=settings["z"])]
    summary = {"atoms": len(states[0]), "fixed": int(states[0].arrays["fix_mask"].sum()),
               **{k: float(v) for k, v in elastic.items()}}
    if settings["defect"]:
        summary["defect_distance"] = float(states[0].info["defect_distance"])
    if settings["qm_radius"] is not None:
        ml_cutoff = SNAPPotential.read(prefix).cutoff
        shape = settings["region"]
        if shape == "auto":
            shape = "sphere" if settings["defect"] else "cylinder"
        for state in states:
            if shape == "sphere":
                counts = sphere_region(state, None, settings["qm_radius"], settings["buffer"],
                                       ml_cutoff)
            else:
                path = state.info.get("glide_path")
                counts = cylinder_region(state, None, settings["qm_radius"],
                                         settings["buffer"], ml_cutoff,
                                         path=None if path is None else
                                         np.reshape(path, (-1, 2)))
            state.info.update(qm_radius=settings["qm_radius"], buffer_width=settings["buffer"],
                              ml_cutoff=ml_cutoff, region_shape=shape)
        summary.update(counts, region_shape=shape, ml_cutoff=ml_cutoff)
    return states, summary
