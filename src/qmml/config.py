"""Pipeline configuration: JSON-schema validation with one-line errors, defaults filled in.

``config/schema.yaml`` documents every key.  ``load_config`` is what the Snakefile and
``qmml check-config`` call; errors name the key path (``qmml.fmax``) and the reason.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from qmml import QmmlError
from qmml.io import read_mapping

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def load_schema(path: Path | None = None) -> dict:
    path = Path(path or SCHEMA_PATH)
    if not path.is_file():
        from importlib.resources import files

        path = Path(str(files("qmml") / "data" / "schema.yaml"))
    return yaml.safe_load(path.read_text())


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


def validate_config(config: dict, schema: dict | None = None, source: str = "config") -> dict:
    """Validated copy of ``config`` with defaults; QmmlError (one line) when invalid."""
    schema = schema or load_schema()
    if not isinstance(config, dict):
        raise QmmlError(f"{source}: expected a mapping of settings")
    config = copy.deepcopy(config)
    _fill_defaults(config, schema)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = _where(error)
        if error.validator == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            unknown = sorted(set(error.instance) - set(known))
            prefix = "" if where == "(top level)" else f"{where}."
            raise QmmlError(f"{source}: key '{prefix}{unknown[0]}': unknown key "
                            f"(known: {', '.join(known)})")
        raise QmmlError(f"{source}: key '{where}': {' '.join(error.message.split())}")
    _check_cross_references(config, source)
    return config


def _check_cross_references(config: dict, source: str) -> None:
    for name, defect in config.get("defects", {}).items():
        if defect["dislocation"] not in config["dislocations"]:
            raise QmmlError(f"{source}: key 'defects.{name}.dislocation': "
                            f"'{defect['dislocation']}' is not a configured dislocation "
                            f"({', '.join(config['dislocations'])})")


def load_config(path: str | Path) -> dict:
    return validate_config(read_mapping(path), source=str(path))
