"""Θ_{j} retrained on iteration j-1's QM/ML forces (qmml.steps.retrain_file)."""
from qmml.steps import log_file, retrain_file

# the descriptor worker processes re-import this file (spawn): only the job itself runs it
if __name__ == "__main__":
    inp, p, r = snakemake.input, snakemake.params, snakemake.params.r
    with log_file(snakemake.log[0]) as log:
        retrain_file(p.previous, list(inp.targets), [inp.strain, inp.neb], [inp.md], p.prefix,
                     snakemake.output.report, lambda0=r["lambda0"], lambda_soft=r["lambda_soft"],
                     quadratic=r["quadratic"], workers=snakemake.threads,
                     descriptor_cache=p.descriptor_cache, paths=list(inp.paths),
                     lambda_path=r["lambda_path"], log=log)
