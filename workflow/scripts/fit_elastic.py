"""Θ0: the starting potential refitted to the bulk targets (qmml.steps.fit_elastic_file)."""
from qmml.steps import fit_elastic_file, log_file

p, e, c = snakemake.params, snakemake.params.elastic, snakemake.params.c
with log_file(snakemake.log[0]) as log:
    fit_elastic_file(p.start, p.prefix, snakemake.input.reference, lambda0=e["lambda0"],
                     lambda_soft=e["lambda_soft"], md_temperatures=c["md_temperatures"],
                     md_steps=c["md_steps"], md_cells=c["strain_cells"],
                     report=snakemake.output.report, log=log)
