# Force-mixed QM/ML: the DFT-heavy rules. Every QM call goes through the shared cache
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
        hard=hard_flag,
        qm_frames=qm_frames_flag,
        seeds=seed_flag,
        q=config["qmml"],
        cache=QM_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/qmml_relax_{{case}}_{{state}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/qmml_relax_{{case}}_{{state}}.tsv"
    shell:
        "{QMML} relax --input {input.structure} --potential {params.prefix} "
        "--engine-config {input.engine} --optimizer {params.q[optimizer]} "
        "--fmax {params.q[fmax]} --buffer {params.q[buffer]} --vacuum {params.q[vacuum]} "
        "--steps {params.q[max_steps]} --cache {params.cache} "
        "{params.hard} {params.qm_frames} {params.seeds} {ALLOW_UNCONVERGED} "
        "--output {output.frame} "
        "> {log} 2>&1"


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
        hard=hard_flag,
        qm_frames=qm_frames_flag,
        seeds=seed_flag,
        q=config["qmml"],
        images=lambda w: config["dislocations"][w.case]["glide_images"],
        cache=QM_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/qmml_neb_{{case}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/qmml_neb_{{case}}.tsv"
    shell:
        "{QMML} neb --initial {input.initial} --final {input.final} --images {params.images} "
        "--potential {params.prefix} --engine-config {input.engine} "
        "--optimizer {params.q[optimizer]} --fmax {params.q[neb_fmax]} "
        "--buffer {params.q[buffer]} --vacuum {params.q[vacuum]} "
        "--steps {params.q[max_steps]} --cache {params.cache} "
        "{params.hard} {params.qm_frames} {params.seeds} {ALLOW_UNCONVERGED} "
        "--output {output.frame} "
        "> {log} 2>&1"


rule extract_forces:
    input:
        frames=lambda w: training_frames(qmml_outputs(w.i)),
        potential=potential_files("{i}"),
    output:
        targets=f"{R}/iter_{{i}}/targets.xyz",
        summary=f"{R}/iter_{{i}}/targets.json",
    params:
        prefix=lambda w: potential(w.i),
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/extract_forces.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/extract_forces.tsv"
    shell:
        "{QMML} extract-forces {input.frames} --potential {params.prefix} "
        "--output {output.targets} --summary {output.summary} > {log} 2>&1"
