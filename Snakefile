# qmml: synergistic QM/ML coupling pipeline (Grigorev et al., Acta Mater. 247, 118734, 2023).
#   make demo                                   # the embedded default (laptop, tblite)
#   snakemake --profile slurm --configfile my.yaml
#   snakemake results/iter_1/potential.snapcoeff   # only what that needs
#   snakemake --report results/report.zip
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/potential.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/qmml.smk"
include: "workflow/rules/defects3d.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
