"""The paper's six figures (qmml.figures) from the pipeline's outputs; numbers to the log."""
import json
from qmml.figures import FIGURES, make_all

inputs = {name: list(files) for name, files in snakemake.input.items()}
outputs = {name: getattr(snakemake.output, name) for name in FIGURES}
numbers = make_all(inputs, outputs)


def plain(value):
    # numpy scalars, tuple keys (binding groups) -> JSON
    if isinstance(value, dict):
        return {" / ".join(k) if isinstance(k, tuple) else str(k): plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


with open(snakemake.log[0], "w") as fh:
    json.dump(plain(numbers), fh, indent=2)
