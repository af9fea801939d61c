"""Each validated property's error against iteration
(qmml.steps.validation.validation_figure_file)."""
from qmml.steps import log_file
from qmml.steps.validation import validation_figure_file

with log_file(snakemake.log[0]) as log:
    validation_figure_file(list(zip(snakemake.params.iterations, snakemake.input)),
                           snakemake.output[0], log=log)
