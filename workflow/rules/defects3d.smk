# 3D QM/ML: point defects on a long dislocation line with a spherical QM region, and
# binding energies E_b = E(far) - E(at distance d) by virtual work (method.md, step 5).


rule build_defect:
    input:
        potential_files("{i}"),
        elastic=f"{R}/iter_{{i}}/elastic.json",
    output:
        f"{R}/iter_{{i}}/3d/structures/{{name}}_{{k}}.xyz",
    params:
        defect=lambda w: DEFECTS[w.name],
        dislocation=lambda w: config["dislocations"][DEFECTS[w.name]["dislocation"]],
        three_d=config["three_d"],
        prefix=lambda w: potential(w.i),
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/build_defect_{{name}}_{{k}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/build_defect_{{name}}_{{k}}.tsv"
    script:
        "../scripts/build_defect.py"


rule qmml_3d_defect:
    input:
        structure=f"{R}/iter_{{i}}/3d/structures/{{name}}_{{k}}.xyz",
        engine=rules.engine_config.output[0],
        potential=potential_files("{i}"),
        hard=accelerated_hard_sets,
        # earlier iterations relax 3D configurations only when retraining uses them
        seeds=seed_frames(f"{R}/iter_{{i}}/3d/{{name}}_{{k}}.xyz",
                          config["retrain"]["use_3d"]),
    output:
        **qmml_rule_output(f"{R}/iter_{{i}}/3d/{{name}}_{{k}}.xyz"),
    params:
        prefix=lambda w: potential(w.i),
        q=config["qmml"],
        buffer=config["three_d"]["buffer"],
        cache=QM_CACHE,
        descriptor_cache=DESCRIPTOR_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/qmml_3d_defect_{{name}}_{{k}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/qmml_3d_defect_{{name}}_{{k}}.tsv"
    script:
        "../scripts/qmml_relax.py"


def path_start(name, k):
    """Distance index the binding path of (name, k) starts from: the next farther
    configured distance (the farthest maps to itself); qmml.binding sums the chain."""
    from qmml.binding import reference_index

    return reference_index(DEFECTS[name]["distances"], int(k))


rule qmml_binding_path:
    input:
        near=f"{R}/iter_{{i}}/3d/{{name}}_{{k}}.xyz",
        far=lambda w: f"{R}/iter_{w.i}/3d/{w.name}_{path_start(w.name, w.k)}.xyz",
        near_structure=f"{R}/iter_{{i}}/3d/structures/{{name}}_{{k}}.xyz",
        far_structure=lambda w: (f"{R}/iter_{w.i}/3d/structures/"
                                 f"{w.name}_{path_start(w.name, w.k)}.xyz"),
        engine=rules.engine_config.output[0],
        potential=potential_files("{i}"),
    output:
        f"{R}/iter_{{i}}/3d/paths/{{name}}_{{k}}.xyz",
    params:
        prefix=lambda w: potential(w.i),
        three_d=config["three_d"],
        vacuum=config["qmml"]["vacuum"],
        ml_ranks=config["qmml"]["ml_ranks"],
        cache=QM_CACHE,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/qmml_binding_path_{{name}}_{{k}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/qmml_binding_path_{{name}}_{{k}}.tsv"
    script:
        "../scripts/binding_path.py"


rule binding_energies:
    input:
        paths=lambda w: [f"{R}/iter_{w.i}/3d/paths/{name}_{k}.xyz"
                         for name, d in DEFECTS.items() for k in range(len(d["distances"]))],
    output:
        f"{R}/iter_{{i}}/binding.csv",
    params:
        defects=DEFECTS,
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/binding_energies.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/binding_energies.tsv"
    script:
        "../scripts/binding_energies.py"
