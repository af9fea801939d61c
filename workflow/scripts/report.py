"""Self-contained HTML report: embedded figures, tables, provenance
(qmml.steps.report_file)."""
from pathlib import Path

from qmml.figures import FIGURES
from qmml.steps import log_file, report_file

inputs = {name: list(files) for name, files in snakemake.input.items()
          if name not in ("figures", "validation_figure")}
figures = {Path(p).stem: p for p in snakemake.input.figures}
shown = {name: figures[name] for name in FIGURES}
shown["validation"] = snakemake.input.validation_figure
with log_file(snakemake.log[0]) as log:
    report_file(snakemake.output[0], shown, inputs,
                dict(snakemake.params.iterations), config=dict(snakemake.params.config),
                captions=Path(snakemake.scriptdir).parent / "report", log=log)
