"""An iteration's QM/ML frames into its retraining targets (qmml.steps.extract_forces_file)."""
from qmml.steps import extract_forces_file, log_file

with log_file(snakemake.log[0]) as log:
    extract_forces_file(list(snakemake.input.frames), snakemake.params.prefix,
                        snakemake.output.targets, snakemake.output.summary,
                        heldout=snakemake.output.heldout,
                        heldout_fraction=snakemake.params.heldout_fraction, log=log)
