"""One of the paper's figures from the pipeline's outputs, its numbers to the log
(qmml.steps.figure_file)."""
from qmml.steps import figure_file, log_file

inputs = {name: list(files) for name, files in snakemake.input.items()}
with log_file(snakemake.log[0]) as log:
    figure_file(snakemake.params.figure, inputs, dict(snakemake.params.iterations),
                snakemake.output[0], log=log)
