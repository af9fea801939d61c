# Dislocation cylinders (and glide end points) with QM/buffer/MM regions, per iteration:
# elastic constants are the iteration potential's, measured once (elastic_check) and read
# here (they are the same in every iteration: retraining keeps them exactly).


rule build_dislocation:
    input:
        potential_files("{i}"),
        elastic=f"{R}/iter_{{i}}/elastic.json",
    output:
        f"{R}/iter_{{i}}/structures/{{case}}_{{state}}.xyz",
    params:
        case=lambda w: config["dislocations"][w.case],
        qmml=config["qmml"],
        prefix=lambda w: potential(w.i),
    priority: glide_first
    conda:
        ENV
    log:
        f"{R}/logs/iter_{{i}}/build_{{case}}_{{state}}.log",
    benchmark:
        f"{R}/benchmarks/iter_{{i}}/build_{{case}}_{{state}}.tsv"
    script:
        "../scripts/build_dislocation.py"
