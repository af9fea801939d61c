"""Force-mixed QM/ML relaxation of one structure (qmml.steps.relax_file); rules qmml_relax
and qmml_3d_defect.  A run that ends above fmax fails the job when
qmml.require_convergence is true (its output is written, so a rerun resumes)."""
from qmml.steps import log_file, relax_file

inp, out, p = snakemake.input, snakemake.output, snakemake.params
q = p.q
with log_file(snakemake.log[0]) as log:
    relax_file(inp.structure, out.frame, p.prefix, inp.engine, p.cache,
               optimizer=q["optimizer"], fmax=q["fmax"], buffer=p.buffer, vacuum=q["vacuum"],
               steps=q["max_steps"], hard=list(inp.hard) or None,
               descriptor_cache=p.descriptor_cache if inp.hard else None,
               qm_frames=getattr(out, "qm_frames", None), seed_frames=list(inp.seeds) or None,
               require_convergence=q["require_convergence"], ml_ranks=q["ml_ranks"], log=log)
