"""QM/ML NEB of one glide path (qmml.steps.neb_file); fails the job when it ends above
qmml.neb_fmax and qmml.require_convergence is true (output written, a rerun resumes)."""
from qmml.steps import log_file, neb_file

inp, out, p = snakemake.input, snakemake.output, snakemake.params
q = p.q
with log_file(snakemake.log[0]) as log:
    neb_file(inp.initial, inp.final, out.frame, p.prefix, inp.engine, p.cache,
             images=p.images, optimizer=q["optimizer"], fmax=q["neb_fmax"],
             climb=q.get("neb_climb", False),
             buffer=q["buffer"], vacuum=q["vacuum"], steps=q["max_steps"],
             hard=list(inp.hard) or None,
             descriptor_cache=p.descriptor_cache if inp.hard else None,
             qm_frames=getattr(out, "qm_frames", None), seed_frames=list(inp.seeds) or None,
             require_convergence=q["require_convergence"], ml_ranks=q["ml_ranks"], log=log)
