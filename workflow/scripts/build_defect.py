"""One configured point defect at distance index k on a long 3D dislocation line
(qmml.steps.build_defect_file), with the iteration's measured elastic constants."""
from qmml.steps import build_defect_file, log_file

p, w = snakemake.params, snakemake.wildcards
with log_file(snakemake.log[0]) as log:
    build_defect_file(w.name, p.defect, p.dislocation, p.three_d, p.prefix, int(w.k),
                      snakemake.output[0], elastic=snakemake.input.elastic, log=log)
