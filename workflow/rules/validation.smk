# Validation of every iteration's potential as a potential (qmml.validation): elastic
# constants, vacancy formation and migration energies against the QM engine's own (same
# periodic cell, computed once), the Peierls barrier and energy profile against the QM/ML
# glide NEB, the screw core structure against the QM/ML one, force errors on held-out
# QM/ML frames; one validation.csv per potential and the figure of the errors.
VALIDATION = config["validation"]


rule qm_vacancy_reference:
    input:
        engine=rules.engine_config.output[0],
        reference=rules.qm_bulk_reference.output[0],
    output:
        f"{R}/qm_bulk/vacancy.json",
    params:
        v=VALIDATION,
        cache=QM_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/qm_vacancy_reference.log",
    benchmark:
        f"{R}/benchmarks/qm_vacancy_reference.tsv"
    script:
        "../scripts/qm_vacancy_reference.py"


def qmml_iteration(i):
    """The iteration whose QM/ML runs validate potential i: its own, or for the last
    potential (no QM/ML run of its own) the latest; None without iterations."""
    return min(int(i), N - 1) if N > 0 else None


def validate_inputs(w):
    i, k = int(w.i), qmml_iteration(w.i)
    inputs = {
        "potential": potential_files(i),
        "elastic": f"{R}/iter_{i}/elastic.json",
        "bulk_reference": rules.qm_bulk_reference.output[0],
        "vacancy_reference": rules.qm_vacancy_reference.output[0],
        "nebs": [], "relaxed": [], "structures": [], "heldout": [],
    }
    if k is not None:
        inputs["nebs"] = [f"{R}/iter_{k}/qmml/{case}_neb.xyz" for case in CASES if glide(case)]
        screws = [case for case in CASES if config["dislocations"][case]["kind"] == "screw111"]
        inputs["relaxed"] = [f"{R}/iter_{k}/qmml/{case}_initial.xyz" for case in screws]
        inputs["structures"] = [f"{R}/iter_{k}/structures/{case}_initial.xyz" for case in screws]
        # held-out frames: those of the iteration that trained potential i, and its own
        inputs["heldout"] = [f"{R}/iter_{m}/heldout.xyz" for m in (i - 1, i) if 0 <= m < N]
    return inputs


rule validate:
    input:
        unpack(validate_inputs),
    # the ML-only glide NEBs and core relaxation run on the QM/ML jobs' ML ranks
    threads: config["qmml"]["ml_ranks"]
    output:
        table=f"{R}/iter_{{i}}/validation.csv",
        # the ML-only glide NEB of each case, drawn by the glide_barriers figure
        profiles=f"{R}/iter_{{i}}/ml_neb_profiles.json",
    params:
        prefix=lambda w: potential(w.i),
        neb_cases=[case for case in CASES if glide(case)],
        screw_cases=[case for case in CASES
                     if config["dislocations"][case]["kind"] == "screw111"],
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/validate.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/validate.tsv"
    script:
        "../scripts/validate.py"


rule validation_figure:
    input:
        [f"{R}/iter_{i}/validation.csv" for i in range(N + 1)],
    output:
        report(f"{R}/figures/validation.png", caption="../report/validation.rst",
               category="qmml"),
    params:
        iterations=list(range(N + 1)),
    conda:
        ENV
    log:
        f"{R}/logs/validation_figure.log",
    benchmark:
        f"{R}/benchmarks/validation_figure.tsv"
    script:
        "../scripts/validation_figure.py"
