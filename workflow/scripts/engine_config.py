"""The QM engine config (config key `qm`) as a file (qmml.steps.engine_config_file)."""
from qmml.steps import engine_config_file, log_file

with log_file(snakemake.log[0]) as log:
    engine_config_file(dict(snakemake.params.qm), snakemake.output[0], log=log)
