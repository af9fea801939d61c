"""binding.csv: one row per configured (defect, dislocation, distance), E_b > 0 = attraction."""
from pathlib import Path
from qmml.binding import binding_table

table = binding_table(list(snakemake.input.paths), configured=dict(snakemake.params.defects))
out = Path(snakemake.output[0])
tmp = out.with_name(f".{out.name}.tmp")
table.to_csv(tmp, index=False)
tmp.replace(out)  # atomic: no half-written table
Path(snakemake.log[0]).write_text(table.to_string() + "\n")
