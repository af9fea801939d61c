# Config validation (qmml.config: JSON schema + defaults, one-line errors) and path helpers.
import os
from pathlib import Path

# jobs (local, SLURM, or in the conda env of --sdm conda) import qmml from this checkout;
# envs/qmml.yaml installs it (editable) from QMML_ROOT
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(workflow.basedir) / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ["QMML_ROOT"] = str(Path(workflow.basedir).resolve())
ENV = "../../envs/qmml.yaml"  # relative to workflow/rules/

from qmml import QmmlError
from qmml.config import pipeline_config

# The settings qmml.config.pipeline_config decides on (also `qmml check-config --show`):
# the --configfile files (else the embedded config/config.yaml), --config overrides on
# top, schema defaults; Snakemake's own merge into `config` is replaced.
try:
    _validated = pipeline_config(
        workflow.config_settings.configfiles,
        dict(workflow.config_settings.config),
        default=Path(workflow.basedir) / "config" / "config.yaml")
except QmmlError as err:
    raise WorkflowError(str(err))
config.clear()
config.update(_validated)

R = config["results"]
N = config["iterations"]
CASES = list(config["dislocations"])
DEFECTS = config["defects"]
QM_CACHE = f"{R}/qm_cache"  # every QM result ever computed, shared by all rules/iterations
DESCRIPTOR_CACHE = f"{R}/descriptor_cache"  # descriptor sums of sets, by content


wildcard_constraints:
    i=r"\d+",
    j=r"[1-9]\d*",
    case="|".join(CASES),
    state="initial|final",
    k=r"\d+",
    name="|".join(DEFECTS) or "(?!x)x",


# light rules run on the login node under the SLURM profile
localrules:
    all,
    run_config,
    engine_config,
    elastic_check,
    build_dislocation,
    build_defect,
    extract_forces,
    binding_energies,
    report,


def potential(i):
    """Prefix of the potential of iteration i."""
    return f"{R}/iter_{i}/potential"


def potential_files(i):
    return [f"{potential(i)}.snapcoeff", f"{potential(i)}.snapparam"]


def glide(case):
    return config["dislocations"][case]["glide_images"] > 0


def glide_first(w):
    """Job priority: the glide cases' structures and relaxations feed the NEB, the longest
    chain of an iteration, so they go first when cores are short."""
    return 1 if glide(w.case) else 0


# The accelerated optimiser's surrogates are trained on the true QM/ML forces of every
# QM-called geometry; each relaxation writes them next to its output (FRAME.qm_frames.xyz,
# final point included) and retraining reads those instead of the final frames alone: the
# QM calls are paid for, and the probes off the minimum carry the core's QM stiffness.
ACCELERATED = config["qmml"]["optimizer"] == "accelerated"


def qm_frames_of(path):
    return path.removesuffix(".xyz") + ".qm_frames.xyz"


def qmml_rule_output(path):
    """Named outputs of a QM/ML rule writing ``path``: ``frame``, and ``qm_frames`` with
    the accelerated optimiser."""
    return {"frame": path, **({"qm_frames": qm_frames_of(path)} if ACCELERATED else {})}


def seed_frames(path, earlier_iterations_run=True):
    """Input function: the previous iteration's QM points of the same relaxation
    (``path`` with {i} and other wildcards), whose cached QM results seed this one
    (``seed_frames`` of qmml.steps.relax_file/neb_file: none recomputed, the run starts
    from the best).
    Only with the accelerated optimiser, and only where the previous iteration runs this
    relaxation anyway (``earlier_iterations_run``): seeding must never add QM work."""

    def previous(w):
        i = int(w.i)
        if not (ACCELERATED and earlier_iterations_run and i > 0):
            return []
        return [qm_frames_of(path.format(**dict(w.items(), i=i - 1)))]

    return previous


def training_frames(files):
    """The QM/ML files retraining reads for these outputs (see ACCELERATED)."""
    return [qm_frames_of(f) for f in files] if ACCELERATED else files


def qmml_outputs(i):
    """All QM/ML frames of iteration i: relaxed states and glide NEB images."""
    files = []
    for case in CASES:
        files.append(f"{R}/iter_{i}/qmml/{case}_initial.xyz")
        if glide(case):
            files += [f"{R}/iter_{i}/qmml/{case}_final.xyz", f"{R}/iter_{i}/qmml/{case}_neb.xyz"]
    return files


def defect_outputs(i):
    return [f"{R}/iter_{i}/3d/{name}_{k}.xyz" for name, d in DEFECTS.items()
            for k in range(len(d["distances"]))]


def accelerated_hard_sets(w):
    """The iteration's hard constraint sets, for the accelerated optimiser's surrogates;
    their rows are read from the descriptor cache when constraint_descriptors (or another
    relaxation) has already computed them."""
    if config["qmml"]["optimizer"] != "accelerated":
        return []
    return [f"{R}/iter_{w.i}/constraints/strain.xyz", f"{R}/iter_{w.i}/constraints/neb.xyz"]


def final_targets():
    targets = potential_files(N) + [f"{R}/report.html", f"{R}/config.yaml"]
    if DEFECTS:
        targets.append(f"{R}/iter_{N}/binding.csv")
    return targets
