"""Virtual-work path of one binding segment: distance k <- the next farther distance."""
import json
from pathlib import Path
from qmml.binding import compute
from qmml.engines import read_engine_config
from qmml.io import write_frames

inp, p = snakemake.input, snakemake.params
engine_cfg = read_engine_config(inp.engine)
with open(snakemake.log[0], "w") as log:
    result = compute(inp.far, inp.near, inp.far_structure, inp.near_structure, p.prefix,
                     engine_cfg, p.cache, int(p.three_d["path_images"]),
                     float(p.three_d["buffer"]), vacuum=float(p.vacuum),
                     log=lambda line: print(line, file=log, flush=True))
    write_frames(snakemake.output[0], result.frames)  # atomic (tmp + rename)
    print(json.dumps(result.summary, default=str), file=log)
