# Θ0 (elastic fit to the QM engine's bulk properties), constraint sets, retraining.


rule run_config:
    output:
        f"{R}/config.yaml",
    params:
        settings=config,
    conda:
        ENV
    log:
        f"{R}/logs/run_config.log",
    script:
        "../scripts/run_config.py"


rule engine_config:
    output:
        f"{R}/engine.yaml",
    params:
        qm=config["qm"],
    conda:
        ENV
    log:
        f"{R}/logs/engine_config.log",
    benchmark:
        f"{R}/benchmarks/engine_config.tsv"
    script:
        "../scripts/engine_config.py"


rule qm_bulk_reference:
    input:
        engine=rules.engine_config.output[0],
    output:
        f"{R}/qm_bulk/reference.json",
    params:
        elastic=config["elastic"],
        cache=QM_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/qm_bulk_reference.log",
    benchmark:
        f"{R}/benchmarks/qm_bulk_reference.tsv"
    script:
        "../scripts/qm_bulk_reference.py"


rule fit_elastic:
    input:
        reference=rules.qm_bulk_reference.output[0],
    output:
        coeff=f"{R}/iter_0/potential.snapcoeff",
        param=f"{R}/iter_0/potential.snapparam",
        report=f"{R}/iter_0/fit_elastic.json",
    params:
        start=config["start_potential"],
        elastic=config["elastic"],
        c=config["constraints"],
        prefix=potential(0),
    conda:
        ENV
    log:
        f"{R}/logs/fit_elastic.log",
    benchmark:
        f"{R}/benchmarks/fit_elastic.tsv"
    script:
        "../scripts/fit_elastic.py"


rule constraint_sets:
    input:
        potential_files("{i}"),
    output:
        strain=f"{R}/iter_{{i}}/constraints/strain.xyz",
        neb=f"{R}/iter_{{i}}/constraints/neb.xyz",
        md=f"{R}/iter_{{i}}/constraints/md.xyz",
    params:
        c=config["constraints"],
        prefix=lambda w: potential(w.i),
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/constraint_sets.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/constraint_sets.tsv"
    script:
        "../scripts/constraint_sets.py"


# The retraining's hard rows and soft normal equations depend only on these sets, so they
# are computed here, alongside the QM/ML relaxations, into the descriptor cache; the
# retrain job then finds them there and computes only its targets' descriptors.
rule constraint_descriptors:
    input:
        strain=rules.constraint_sets.output.strain,
        neb=rules.constraint_sets.output.neb,
        md=rules.constraint_sets.output.md,
    threads: 2
    output:
        f"{R}/iter_{{i}}/constraints/descriptors.json",
    params:
        prefix=lambda w: potential(w.i),
        quadratic=config["retrain"]["quadratic"],
        cache=DESCRIPTOR_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/constraint_descriptors.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/constraint_descriptors.tsv"
    script:
        "../scripts/constraint_descriptors.py"


rule elastic_check:
    input:
        potential_files("{i}"),
    output:
        f"{R}/iter_{{i}}/elastic.json",
    params:
        prefix=lambda w: potential(w.i),
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/elastic_check.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/elastic_check.tsv"
    script:
        "../scripts/elastic_check.py"


def path_targets(i):
    """Ordered QM/ML paths of iteration i whose virtual-work energies retraining fits
    (retrain.lambda_path): the glide NEBs, and with use_3d the binding paths (but the
    farthest distance's, which starts and ends at the same state)."""
    paths = [f"{R}/iter_{i}/qmml/{case}_neb.xyz" for case in CASES if glide(case)]
    if config["retrain"]["use_3d"]:
        paths += [f"{R}/iter_{i}/3d/paths/{name}_{k}.xyz" for name, d in DEFECTS.items()
                  for k in range(len(d["distances"])) if path_start(name, k) != k]
    return paths


def retrain_inputs(w):
    i = int(w.j) - 1
    targets = [f"{R}/iter_{i}/targets.xyz"]
    if config["retrain"]["use_3d"] and DEFECTS:
        targets += training_frames(defect_outputs(i))
    return {
        "potential": potential_files(i),
        "targets": targets,
        "paths": path_targets(i),
        "strain": f"{R}/iter_{i}/constraints/strain.xyz",
        "neb": f"{R}/iter_{i}/constraints/neb.xyz",
        "md": f"{R}/iter_{i}/constraints/md.xyz",
        "constraint_descriptors": f"{R}/iter_{i}/constraints/descriptors.json",
    }


rule retrain:
    input:
        unpack(retrain_inputs),
    threads: 2
    output:
        coeff=f"{R}/iter_{{j}}/potential.snapcoeff",
        param=f"{R}/iter_{{j}}/potential.snapparam",
        report=f"{R}/iter_{{j}}/retrain.json",
    params:
        previous=lambda w: potential(int(w.j) - 1),
        prefix=lambda w: potential(w.j),
        r=config["retrain"],
        descriptor_cache=DESCRIPTOR_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{j}}/retrain.log",
    benchmark:
        f"{R}/benchmarks/iter_{{j}}/retrain.tsv"
    script:
        "../scripts/retrain.py"
