# qmml: synergistic QM/ML coupling pipeline (Grigorev et al., Acta Mater. 247, 118734, 2023).
#   make demo                                   # the embedded default (laptop, tblite)
#   snakemake --profile slurm --configfile my.yaml  # my.yaml + schema defaults, nothing else
#   snakemake results/iter_1/potential.snapcoeff   # only what that needs
#   snakemake --report results/report.zip
from snakemake.utils import min_version

min_version("9.0")

# No `configfile:` directive: Snakemake would merge the user's --configfile into the
# default config key by key.  workflow/rules/common.smk picks the settings instead
# (qmml.config.pipeline_config: the user's files, else config/config.yaml).

include: "workflow/rules/common.smk"
include: "workflow/rules/potential.smk"
include: "workflow/rules/structures.smk"
include: "workflow/rules/qmml.smk"
include: "workflow/rules/defects3d.smk"
include: "workflow/rules/validation.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
