"""Pipeline steps as file-level functions: the one entry into the library for each step.

Every ``qmml <command>`` (``qmml.cli``) and every workflow script (``workflow/scripts``)
calls exactly one of these functions; both pass the same values, so a step computes the
same thing whichever way it is run.  Each takes paths and values, writes its outputs and
returns a summary; ``log`` (a ``Callable[[str], None]``) receives progress lines.
Heavy modules are imported inside the functions: a job imports only what its step needs.

By concept: :mod:`.qmml_runs`, :mod:`.potential`, :mod:`.structures`, :mod:`.report`,
:mod:`.validation`; every step is importable from here.
"""
from qmml.steps.common import Log, PathLike, log_file
from qmml.steps.qmml_runs import (
    NotConverged, engine_settings, relax_file, neb_file, binding_path_file)
from qmml.steps.potential import (
    run_config_file, engine_config_file, qm_bulk_reference_file, fit_elastic_file,
    constraint_sets_file, constraint_descriptors_file, extract_forces_file, retrain_file,
    elastic_check_file)
from qmml.steps.structures import (
    ELASTIC_KEYS, read_elastic, build_file, build_dislocation_file, build_defect_file)
from qmml.steps.report import binding_table_file, figure_file, report_file
from qmml.steps.validation import (
    qm_vacancy_reference_file, validate_file, validation_figure_file)
