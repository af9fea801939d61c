"""Write the QM engine config (config key `qm`) for `qmml relax/neb --engine-config`."""
import yaml
from qmml.engines import engine_label, resolved_settings

qm = dict(snakemake.params.qm)
resolved_settings(qm)  # unknown engine / missing key -> one-line error before any QM work
with open(snakemake.output[0], "w") as fh:
    yaml.safe_dump(qm, fh, sort_keys=True)
with open(snakemake.log[0], "w") as fh:
    print(f"QM engine: {engine_label(qm)}", file=fh)
