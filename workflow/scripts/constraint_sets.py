"""Hard (strain set, vacancy NEB) and soft (NVE MD) constraint sets of the current potential
(qmml.steps.constraint_sets_file)."""
from qmml.steps import constraint_sets_file, log_file

c, out = snakemake.params.c, snakemake.output
with log_file(snakemake.log[0]) as log:
    constraint_sets_file(snakemake.params.prefix, strain=out.strain, neb=out.neb, md=out.md,
                         strain_cells=c["strain_cells"], n_strains=c["n_strains"],
                         max_strain=c["max_strain"], neb_cells=c["neb_cells"],
                         neb_images=c["neb_images"], md_temperatures=c["md_temperatures"],
                         md_steps=c["md_steps"], md_cells=c["strain_cells"], log=log)
