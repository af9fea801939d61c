"""Pipeline configuration: which settings a run uses, JSON-schema validation, one-line errors.

``config/schema.yaml`` documents every key.  ``pipeline_config`` is the one function that
decides what the pipeline runs; the Snakefile and ``qmml check-config --show`` both call it:

* the settings come from the user's config files (``snakemake --configfile a.yaml [b.yaml]``),
  or, when none is given, from the embedded default ``config/config.yaml`` (the laptop
  demo); a user's file is never merged with the default;
* ``snakemake --config KEY=VALUE`` overrides key KEY of those settings (mappings are merged
  key by key; a ``qm`` override naming another engine replaces the whole ``qm`` section,
  engine settings of one engine mean nothing to another); several config files combine
  the same way, later ones overriding earlier ones;
* the schema's documented defaults fill in every key still missing; the engine settings
  under ``qm`` get their defaults later, from ``qmml.engines`` for the chosen engine.

Then everything is checked: the schema, finite numbers (no NaN/inf anywhere), references
between sections, and the buffers against the start potential's ML cutoff.  Errors are
``QmmlError`` with one line naming the file and the key path (``qmml.fmax``).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from qmml import QmmlError
from qmml.io import read_mapping

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
DEFAULT_CONFIG_PATH = SCHEMA_PATH.parent / "config.yaml"


def load_schema(path: Path | None = None) -> dict:
    path = Path(path or SCHEMA_PATH)
    if not path.is_file():
        from importlib.resources import files

        path = Path(str(files("qmml") / "data" / "schema.yaml"))
    return yaml.safe_load(path.read_text())


def read_config_file(path: str | Path) -> dict:
    """The settings in one config file; one-line QmmlError when missing, unparsable or empty."""
    settings = read_mapping(path)
    if not settings:
        raise QmmlError(f"{path}: file is empty (no settings)")
    return settings


def merge_config(base: Mapping, override: Mapping) -> dict:
    """``base`` with ``override`` on top, mappings merged key by key; a ``qm`` section that
    names another engine than ``base``'s replaces it whole."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = merged.get(key)
        other_engine = (key == "qm" and isinstance(value, Mapping) and isinstance(old, Mapping)
                        and "engine" in value and value["engine"] != old.get("engine"))
        if isinstance(value, Mapping) and isinstance(old, Mapping) and not other_engine:
            merged[key] = merge_config(old, value)
        else:
            merged[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return merged


def pipeline_config(configfiles: Sequence[str | Path] = (), overrides: Mapping | None = None,
                    default: str | Path = DEFAULT_CONFIG_PATH,
                    check_potential: bool = True) -> dict:
    """The validated settings the pipeline runs (rules in the module docstring).

    ``configfiles``: the user's files (``--configfile``), in order; none = ``default``.
    ``overrides``: ``--config KEY=VALUE`` settings.  ``check_potential``: also read the start
    potential to check the buffers against its ML cutoff.
    """
    files = [Path(f) for f in configfiles] or [Path(default)]
    settings: dict = {}
    for path in files:
        settings = merge_config(settings, read_config_file(path))
    source = " + ".join(str(f) for f in files)
    if overrides:
        settings = merge_config(settings, {key: _yaml_scalars(value, nested=False)
                                           for key, value in overrides.items()})
        source += " + --config"
    return validate_config(settings, source=source, check_potential=check_potential)


def _yaml_scalars(value, nested: bool = True):
    """``--config`` values as a config file would give them: Snakemake parses nested
    values with YAML's base loader, which leaves every scalar a string ('0.02')."""
    if isinstance(value, Mapping):
        return {key: _yaml_scalars(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_scalars(item) for item in value]
    if nested and isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, (int, float, bool)) else value
    return value


def load_config(path: str | Path, check_potential: bool = True) -> dict:
    """The validated settings of one config file (what ``--configfile path`` runs)."""
    return pipeline_config([path], check_potential=check_potential)


def _fill_defaults(instance: dict, schema: dict) -> None:
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict):
            _fill_defaults(instance[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in props and isinstance(value, dict):
                _fill_defaults(value, extra)


def _where(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "(top level)"


def _check_finite(value, where: str, source: str) -> None:
    """NaN and ±inf pass JSON-schema bounds (every comparison with NaN is false): refuse
    them anywhere, engine settings included."""
    if isinstance(value, float) and not math.isfinite(value):
        raise QmmlError(f"{source}: key '{where}': {value} is not a finite number")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}" if where else str(key), source)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}.{i}", source)


def validate_config(config: dict, schema: dict | None = None, source: str = "config",
                    check_potential: bool = True) -> dict:
    """Validated copy of ``config`` with the schema's defaults; QmmlError (one line naming
    ``source`` and the key) when invalid.  ``check_potential``: read the start potential
    and check the buffers against its ML cutoff."""
    schema = schema or load_schema()
    if not isinstance(config, Mapping):
        raise QmmlError(f"{source}: expected a mapping of settings")
    config = copy.deepcopy(dict(config))
    _check_finite(config, "", source)
    _fill_defaults(config, schema)
    errors = list(Draft202012Validator(schema).iter_errors(config))
    # a wrong value the user wrote first, then what is missing
    error = best_match([e for e in errors if e.validator != "required"] or errors)
    if error is not None:
        where = _where(error)
        prefix = "" if where == "(top level)" else f"{where}."
        if error.validator == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            unknown = sorted(set(error.instance) - set(known))
            raise QmmlError(f"{source}: key '{prefix}{unknown[0]}': unknown key "
                            f"(known: {', '.join(known)})")
        if error.validator == "required":
            missing = [k for k in error.validator_value if k not in error.instance]
            raise QmmlError(f"{source}: key '{prefix}{missing[0]}': required key missing")
        raise QmmlError(f"{source}: key '{where}': {' '.join(error.message.split())}")
    _check_cross_references(config, source)
    if check_potential:
        _check_buffers(config, source)
    return config


def _check_cross_references(config: dict, source: str) -> None:
    for name, defect in config.get("defects", {}).items():
        if defect["dislocation"] not in config["dislocations"]:
            raise QmmlError(f"{source}: key 'defects.{name}.dislocation': "
                            f"'{defect['dislocation']}' is not a configured dislocation "
                            f"({', '.join(config['dislocations'])})")


def ml_cutoff(start_potential: str | Path) -> float:
    """ML cutoff (Å) of a potential name or prefix; retraining keeps it (same snapparam)."""
    from qmml.potential import SNAPPotential, resolve_prefix

    return SNAPPotential.read(resolve_prefix(start_potential)).cutoff


def _check_buffers(config: dict, source: str) -> None:
    """Force mixing needs every buffer at least as wide as the ML cutoff (the QM atoms'
    ML environments must be complete), and a He defect needs every W atom within the
    cutoff of the He inside the QM sphere: the ML potential has no He."""
    name = config["start_potential"]
    try:
        cutoff = ml_cutoff(name)
    except QmmlError as err:
        raise QmmlError(f"{source}: key 'start_potential': {err}") from None
    of = f"the ML cutoff {cutoff:g} Å of start_potential '{name}'"
    for key in ("qmml.buffer", "three_d.buffer"):
        section, field = key.split(".")
        width = config[section][field]
        if width < cutoff:
            raise QmmlError(f"{source}: key '{key}': {width:g} Å is narrower than {of}")
    helium = [n for n, d in config["defects"].items() if "He" in d["defect"]]
    qm_radius = config["three_d"]["qm_radius"]
    if helium and qm_radius < cutoff:
        raise QmmlError(f"{source}: key 'three_d.qm_radius': {qm_radius:g} Å is smaller than "
                        f"{of}: He defects (defects.{helium[0]}) need every W atom within "
                        "the cutoff of the He in the QM region")
