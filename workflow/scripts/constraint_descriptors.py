"""Hard rows and soft normal equations of the constraint sets, into the descriptor cache
(qmml.steps.constraint_descriptors_file)."""
from qmml.steps import constraint_descriptors_file, log_file

# the descriptor worker processes re-import this file (spawn): only the job itself runs it
if __name__ == "__main__":
    inp, p = snakemake.input, snakemake.params
    with log_file(snakemake.log[0]) as log:
        constraint_descriptors_file(inp.strain, inp.neb, inp.md, p.prefix, snakemake.output[0],
                                    p.cache, quadratic=p.quadratic, workers=snakemake.threads,
                                    log=log)
