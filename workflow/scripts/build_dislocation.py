"""One dislocation state (relaxed-core start or a glide end point) with its QM region
(qmml.steps.build_file), with the iteration's measured elastic constants."""
from qmml.steps import build_dislocation_file, log_file

p = snakemake.params
with log_file(snakemake.log[0]) as log:
    build_dislocation_file(p.case, p.qmml, p.prefix, snakemake.input.elastic,
                           snakemake.wildcards.state, snakemake.output[0], log=log)
