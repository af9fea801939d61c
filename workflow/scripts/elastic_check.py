"""a0, C11, C12, C44 of the iteration's potential, measured once per iteration
(qmml.steps.elastic_check_file); the iteration's structures are built with them."""
from qmml.steps import elastic_check_file, log_file

with log_file(snakemake.log[0]) as log:
    elastic_check_file(snakemake.params.prefix, snakemake.output[0], log=log)
