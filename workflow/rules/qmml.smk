# Force-mixed QM/ML: the DFT-heavy rules (qmml.steps.relax_file / neb_file). Every QM call goes through the shared cache
# (results/qm_cache) and every optimiser step is checkpointed, so a killed or rerun job
# repeats no QM call.


rule qmml_relax:
    input:
        structure=f"{R}/iter_{{i}}/structures/{{case}}_{{state}}.xyz",
        engine=rules.engine_config.output[0],
        potential=potential_files("{i}"),
        hard=accelerated_hard_sets,
        seeds=seed_frames(f"{R}/iter_{{i}}/qmml/{{case}}_{{state}}.xyz"),
    output:
        **qmml_rule_output(f"{R}/iter_{{i}}/qmml/{{case}}_{{state}}.xyz"),
    params:
        prefix=lambda w: potential(w.i),
        q=config["qmml"],
        buffer=config["qmml"]["buffer"],
        cache=QM_CACHE,
        descriptor_cache=DESCRIPTOR_CACHE,
    priority: glide_first
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/qmml_relax_{{case}}_{{state}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/qmml_relax_{{case}}_{{state}}.tsv"
    script:
        "../scripts/qmml_relax.py"


rule qmml_neb:
    input:
        initial=f"{R}/iter_{{i}}/qmml/{{case}}_initial.xyz",
        final=f"{R}/iter_{{i}}/qmml/{{case}}_final.xyz",
        engine=rules.engine_config.output[0],
        potential=potential_files("{i}"),
        hard=accelerated_hard_sets,
        seeds=seed_frames(f"{R}/iter_{{i}}/qmml/{{case}}_neb.xyz"),
    output:
        **qmml_rule_output(f"{R}/iter_{{i}}/qmml/{{case}}_neb.xyz"),
    params:
        prefix=lambda w: potential(w.i),
        q=config["qmml"],
        images=lambda w: config["dislocations"][w.case]["glide_images"],
        cache=QM_CACHE,
        descriptor_cache=DESCRIPTOR_CACHE,
    priority: 1
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/qmml_neb_{{case}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/qmml_neb_{{case}}.tsv"
    script:
        "../scripts/qmml_neb.py"


rule extract_forces:
    input:
        frames=lambda w: training_frames(qmml_outputs(w.i)),
        potential=potential_files("{i}"),
    output:
        targets=f"{R}/iter_{{i}}/targets.xyz",
        summary=f"{R}/iter_{{i}}/targets.json",
        heldout=f"{R}/iter_{{i}}/heldout.xyz",
    params:
        prefix=lambda w: potential(w.i),
        heldout_fraction=config["validation"]["heldout_fraction"],
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/extract_forces.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/extract_forces.tsv"
    script:
        "../scripts/extract_forces.py"
