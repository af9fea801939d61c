"""One potential against the QM reference: validation.csv
(qmml.steps.validation.validate_file)."""
from pathlib import Path

from qmml.steps import log_file
from qmml.steps.validation import validate_file

inp, p = snakemake.input, snakemake.params
with log_file(snakemake.log[0]) as log:
    validate_file(p.prefix, inp.elastic, inp.bulk_reference, inp.vacancy_reference,
                  snakemake.output.table, nebs=list(zip(p.neb_cases, inp.nebs)),
                  relaxed=list(zip(p.screw_cases, inp.relaxed, inp.structures)),
                  heldout=[(Path(f).parent.name, f) for f in inp.heldout],
                  profiles=snakemake.output.profiles, ml_ranks=snakemake.threads, log=log)
