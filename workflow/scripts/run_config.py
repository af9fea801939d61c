"""The settings this run uses, next to its results (qmml.steps.run_config_file)."""
from qmml.steps import log_file, run_config_file

with log_file(snakemake.log[0]) as log:
    run_config_file(dict(snakemake.params.settings), snakemake.output[0], log=log)
