"""Structure steps: dislocation cases and point defects, with their QM regions."""
from __future__ import annotations

import json

from qmml.steps.common import Log, PathLike, _say


ELASTIC_KEYS = ("a0", "C11", "C12", "C44")


def read_elastic(elastic: dict | PathLike | None) -> dict:
    """a0, C11, C12, C44 from a mapping or an elastic.json (:func:`elastic_check_file`);
    {} for None (then the builders measure them with the potential)."""
    if elastic is None:
        return {}
    if not isinstance(elastic, dict):
        from qmml.io import read_mapping

        elastic = read_mapping(elastic, ELASTIC_KEYS)
    return {k: float(elastic[k]) for k in ELASTIC_KEYS}


def build_file(settings: dict, output: PathLike, state: int | None = None,
               log: Log = None) -> dict:
    """The dislocation case of ``settings`` (:func:`qmml.build.load_settings`) as extxyz:
    every state, or only state ``state`` (0 initial, 1 final of a glide pair).  Elastic
    constants: ``settings`` a0/C11/C12/C44 when given, else measured with the potential."""
    from qmml.build import build_case
    from qmml.checks import check_build_settings, writable
    from qmml.io import write_frames

    check_build_settings(settings)
    writable(output)
    states, summary = build_case(settings)
    write_frames(output, states if state is None else [states[state]])
    summary.update(output=str(output), frames=len(states) if state is None else 1)
    _say(log, json.dumps(summary, indent=2))
    return summary


def build_dislocation_file(case: dict, qmml: dict, potential: PathLike,
                           elastic: dict | PathLike | None, state: str, output: PathLike,
                           log: Log = None) -> dict:
    """State ``state`` ("initial", or "final" of a glide case) of the configured
    dislocation ``case`` (config ``dislocations.<case>``) with the QM region of the
    ``qmml`` config section, built with the elastic constants ``elastic`` of
    ``potential`` (:func:`build_file`)."""
    from qmml.build import default_settings

    settings = default_settings(kind=case["kind"], radius=case["radius"],
                                fixed_width=case["fixed_width"], potential=str(potential),
                                qm_radius=qmml["qm_radius"], buffer=qmml["buffer"],
                                glide=case["glide_images"] > 0, output=str(output),
                                **read_elastic(elastic))
    return build_file(settings, output, state=0 if state == "initial" else 1, log=log)


def build_defect_file(name: str, defect: dict, dislocation: dict, three_d: dict,
                      potential: PathLike, k: int, output: PathLike,
                      elastic: dict | PathLike | None = None, log: Log = None) -> dict:
    """Distance index ``k`` of configured defect ``name`` on a long 3D dislocation
    (:func:`qmml.binding.build_defect`) as extxyz ``output``."""
    from qmml.binding import build_defect
    from qmml.checks import writable
    from qmml.io import write_frames

    writable(output)
    atoms, summary = build_defect(name, defect, dislocation, three_d, str(potential), int(k),
                                  elastic=read_elastic(elastic))
    write_frames(output, [atoms])
    _say(log, json.dumps(summary, indent=2))
    return summary
