"""Hard (strain set, vacancy NEB) and soft (NVE MD) constraint sets of the current potential."""
from qmml.constraints import lattice_constant, md_snapshots, strain_set, vacancy_neb, write_set
from qmml.potential import SNAPPotential

c = snakemake.params.c
pot = SNAPPotential.read(snakemake.params.prefix)
a0 = lattice_constant(pot)
write_set(snakemake.output.strain, strain_set(pot, a0=a0, n_cells=c["strain_cells"],
                                              n_strains=c["n_strains"],
                                              max_strain=c["max_strain"]))
images = vacancy_neb(pot, a0=a0, n_cells=c["neb_cells"], n_images=c["neb_images"])
write_set(snakemake.output.neb, images)
write_set(snakemake.output.md, md_snapshots(pot, temperatures=c["md_temperatures"], a0=a0,
                                            n_cells=c["strain_cells"], n_steps=c["md_steps"]))
with open(snakemake.log[0], "w") as fh:
    print(f"a0 {a0:.6f} Å; vacancy migration barrier {images[0].info['barrier']:.4f} eV", file=fh)
