"""Virtual-work path of one binding segment: distance k <- the next farther distance
(qmml.steps.binding_path_file)."""
from qmml.steps import binding_path_file, log_file

inp, p = snakemake.input, snakemake.params
with log_file(snakemake.log[0]) as log:
    binding_path_file(inp.far, inp.near, inp.far_structure, inp.near_structure, p.prefix,
                      inp.engine, p.cache, snakemake.output[0],
                      images=int(p.three_d["path_images"]), buffer=float(p.three_d["buffer"]),
                      vacuum=float(p.vacuum), ml_ranks=int(p.ml_ranks), log=log)
