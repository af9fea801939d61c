"""One configured point defect at distance index k on a long 3D dislocation line."""
import json
from pathlib import Path
from qmml.binding import build_defect
from qmml.io import write_frames

p, w = snakemake.params, snakemake.wildcards
atoms, summary = build_defect(w.name, p.defect, p.dislocation, p.three_d, p.prefix, int(w.k))
write_frames(Path(snakemake.output[0]), [atoms])
Path(snakemake.log[0]).write_text(json.dumps(summary, indent=2))
