"""Hard rows and soft normal equations of the constraint sets, into the descriptor cache."""
import json
import time

from qmml.descriptors import DescriptorCache, close_workers
from qmml.io import read_frames, write_text
from qmml.potential import SNAPPotential
from qmml.retrain import constraint_sums

# the descriptor worker processes re-import this file (spawn): only the job itself runs it
if __name__ == "__main__":
    inp = snakemake.input
    pot = SNAPPotential.read(snakemake.params.prefix)
    space = pot.to_quadratic() if snakemake.params.quadratic else pot
    start = time.perf_counter()
    # the same frames, in the same order, as `qmml retrain --hard strain neb --soft md` reads
    hard, soft = read_frames(inp.strain) + read_frames(inp.neb), read_frames(inp.md)
    hard_rows, soft_normal, _ = constraint_sums(hard, soft, space, workers=snakemake.threads,
                                                cache=DescriptorCache(snakemake.params.cache))
    close_workers()
    summary = {"n_hard_rows": int(hard_rows.shape[0]), "n_soft_rows": soft_normal.n_rows,
               "n_coefficients": space.n_coefficients, "cache": snakemake.params.cache,
               "seconds": time.perf_counter() - start}
    write_text(snakemake.output[0], json.dumps(summary, indent=2) + "\n")
    write_text(snakemake.log[0], json.dumps(summary) + "\n")
