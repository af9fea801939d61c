"""The paper's six figures from the pipeline's outputs, numbers to the log
(qmml.steps.figures_file)."""
from qmml.figures import FIGURES
from qmml.steps import figures_file, log_file

inputs = {name: list(files) for name, files in snakemake.input.items()}
with log_file(snakemake.log[0]) as log:
    figures_file(inputs, dict(snakemake.params.iterations),
                 {name: getattr(snakemake.output, name) for name in FIGURES}, log=log)
