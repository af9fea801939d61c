"""Self-contained HTML report (qmml.report): embedded figures, tables, provenance."""
from pathlib import Path
from qmml.figures import FIGURES
from qmml.report import read_captions, write_report

inp = snakemake.input
figures = {Path(p).stem: p for p in inp.figures}
figures = {name: figures[name] for name in FIGURES}
captions = read_captions(Path(snakemake.scriptdir).parent / "report", FIGURES)
write_report(snakemake.output[0], figures, elastic=list(inp.elastic),
             retrain=list(inp.retrain), targets_summary=list(inp.targets_summary),
             binding=(list(inp.binding) or [None])[0],
             frames=list(inp.relaxed) + list(inp.neb), config=dict(snakemake.params.config),
             captions=captions)
with open(snakemake.log[0], "w") as fh:
    print(f"wrote {snakemake.output[0]} with {len(figures)} figures", file=fh)
