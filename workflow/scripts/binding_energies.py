"""binding.csv: one row per configured (defect, dislocation, distance), E_b > 0 = attraction."""
from pathlib import Path
from qmml.binding import binding_table
from qmml.io import atomic_writer

table = binding_table(list(snakemake.input.paths), configured=dict(snakemake.params.defects))
with atomic_writer(snakemake.output[0]) as fh:  # no half-written table
    table.to_csv(fh, index=False)
Path(snakemake.log[0]).write_text(table.to_string() + "\n")
