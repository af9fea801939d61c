"""The QM engine's vacancy formation energy and migration barrier on a small periodic cell
(qmml.steps.validation.qm_vacancy_reference_file)."""
from qmml.steps import log_file
from qmml.steps.validation import qm_vacancy_reference_file

v = snakemake.params.v
with log_file(snakemake.log[0]) as log:
    qm_vacancy_reference_file(snakemake.input.engine, snakemake.params.cache,
                              snakemake.input.reference, snakemake.output[0],
                              n_cells=v["vacancy_cells"], fmax=v["vacancy_fmax"], log=log)
