"""One dislocation state (relaxed-core start or a glide end point) with its QM region."""
import json
from pathlib import Path
from qmml.build import build_case, default_settings
from qmml.io import write_frames

case, q, state = snakemake.params.case, snakemake.params.qmml, snakemake.wildcards.state
settings = default_settings(kind=case["kind"], radius=case["radius"],
                            fixed_width=case["fixed_width"], potential=snakemake.params.prefix,
                            qm_radius=q["qm_radius"], buffer=q["buffer"],
                            glide=case["glide_images"] > 0, output=snakemake.output[0])
states, summary = build_case(settings)
write_frames(Path(snakemake.output[0]), [states[0 if state == "initial" else 1]])
Path(snakemake.log[0]).write_text(json.dumps(summary, indent=2))
