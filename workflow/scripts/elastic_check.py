"""a0, C11, C12, C44 of the iteration's potential, measured by finite differences."""
import json
from qmml.elastic import measure_cubic_elastic
from qmml.potential import SNAPPotential

pot = SNAPPotential.read(snakemake.params.prefix)
m = {k: float(v) for k, v in measure_cubic_elastic(pot.calculator(), 3.18).items()}
for path in (snakemake.output[0], snakemake.log[0]):
    with open(path, "w") as fh:
        json.dump(m, fh, indent=2)
