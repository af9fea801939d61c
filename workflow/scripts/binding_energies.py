"""binding.csv: one row per configured (defect, dislocation, distance), E_b > 0 = attraction
(qmml.steps.binding_table_file)."""
from qmml.steps import binding_table_file, log_file

with log_file(snakemake.log[0]) as log:
    binding_table_file(list(snakemake.input.paths), snakemake.output[0],
                       configured=dict(snakemake.params.defects), log=log)
