"""a0, C11, C12, C44 targets: from the config, or measured with the QM engine."""
import json
from qmml.bulk import qm_bulk_reference
from qmml.engines import read_engine_config

qm = read_engine_config(snakemake.input.engine)
with open(snakemake.log[0], "w") as log:
    ref = qm_bulk_reference(snakemake.params.elastic, qm, snakemake.params.cache,
                            log=lambda line: print(line, file=log, flush=True))
    print(json.dumps(ref, indent=2), file=log)
with open(snakemake.output[0], "w") as fh:
    json.dump(ref, fh, indent=2)
