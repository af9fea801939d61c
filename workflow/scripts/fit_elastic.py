"""Θ0: the starting potential refitted to the bulk targets (hard rows exact)."""
import json
from qmml.bulk import read_targets
from qmml.constraints import md_snapshots
from qmml.elastic import fit_elastic
from qmml.potential import SNAPPotential, resolve_prefix
from pathlib import Path

start = snakemake.params.start
prefix = resolve_prefix(start)
pot = SNAPPotential.read(prefix)
t = read_targets(snakemake.input.reference)
e, c = snakemake.params.elastic, snakemake.params.c
md = md_snapshots(pot, temperatures=c["md_temperatures"], n_steps=c["md_steps"],
                  n_cells=c["strain_cells"])
fitted, res = fit_elastic(pot, t["a0"], t["C11"], t["C12"], t["C44"], md,
                          lambda0=e["lambda0"], lambda_soft=e["lambda_soft"])
fitted.write(snakemake.params.prefix, comment=f"qmml Θ0: {start} fitted to {t}")
report = {"start": str(prefix), "targets": t, "hard_residual_max": res.hard_residual_max,
          **res.diagnostics}
Path(snakemake.output.report).write_text(json.dumps(report, indent=2))
Path(snakemake.log[0]).write_text(json.dumps(report, indent=2))
