"""a0, C11, C12, C44 targets: from the config, or measured with the QM engine
(qmml.steps.qm_bulk_reference_file)."""
from qmml.steps import log_file, qm_bulk_reference_file

p = snakemake.params
with log_file(snakemake.log[0]) as log:
    qm_bulk_reference_file(dict(p.elastic), snakemake.input.engine, p.cache,
                           snakemake.output[0], log=log)
