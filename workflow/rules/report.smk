# Figures (matplotlib) and the HTML report; figures are also registered for `snakemake --report`.


def keyed_figure_inputs():
    """Inputs of the figures and the report as (iteration, path) pairs by name; the
    iterations go to the jobs as params, so nothing is parsed back from paths."""
    iters = range(N + 1)
    return {
        "elastic": [(i, f"{R}/iter_{i}/elastic.json") for i in iters],
        "potentials": [(i, f"{potential(i)}.snapcoeff") for i in iters],
        "targets": [(i, f"{R}/iter_{i}/targets.xyz") for i in range(N)],
        "targets_summary": [(i, f"{R}/iter_{i}/targets.json") for i in range(N)],
        # retrain.json of the potential it wrote (iterations 1..N)
        "retrain": [(j, f"{R}/iter_{j}/retrain.json") for j in range(1, N + 1)],
        "relaxed": [(i, f"{R}/iter_{i}/qmml/{case}_initial.xyz") for i in range(N)
                    for case in CASES],
        # unrelaxed inputs of "relaxed" (same order): the DD maps' perfect reference lattice
        # comes from their structure info, which the QM/ML outputs do not carry
        "structures": [(i, f"{R}/iter_{i}/structures/{case}_initial.xyz") for i in range(N)
                       for case in CASES],
        "neb": [(i, f"{R}/iter_{i}/qmml/{case}_neb.xyz") for i in range(N) for case in CASES
                if glide(case)],
        "binding": [(N, f"{R}/iter_{N}/binding.csv")] if DEFECTS else [],
        # the ML-only glide NEBs of Θ0 and the last potential, run by their validation
        "ml_profiles": [(i, f"{R}/iter_{i}/ml_neb_profiles.json") for i in sorted({0, N})],
    }


def figure_inputs(w=None):
    return {name: [path for _, path in pairs] for name, pairs in keyed_figure_inputs().items()}


# the iteration of every figure input (same order); "structures" and "binding" are plain
FIGURE_ITERATIONS = {name: [i for i, _ in pairs] for name, pairs in keyed_figure_inputs().items()
                     if name not in ("structures", "binding")}


# one job per figure, each started as soon as its own inputs (qmml.figures.FIGURE_INPUTS)
# exist
from qmml.figures import FIGURE_INPUTS, FIGURES


def one_figure_inputs(figure):
    def inputs(w):
        every = figure_inputs()
        return {name: every[name] for name in FIGURE_INPUTS[figure]}

    return inputs


for _figure in FIGURES:

    rule:
        name:
            f"figure_{_figure}"
        localrule: True
        input:
            unpack(one_figure_inputs(_figure)),
        output:
            report(f"{R}/figures/{_figure}.png", caption=f"../report/{_figure}.rst",
                   category="qmml"),
        params:
            figure=_figure,
            iterations={name: FIGURE_ITERATIONS[name] for name in FIGURE_INPUTS[_figure]
                        if name in FIGURE_ITERATIONS},
        conda:
            ENV
        log:
            f"{R}/logs/figures/{_figure}.log",
        benchmark:
            f"{R}/benchmarks/figures/{_figure}.tsv"
        script:
            "../scripts/figure.py"


rule report:
    input:
        unpack(figure_inputs),
        figures=[f"{R}/figures/{name}.png" for name in FIGURES],
        validation=rules.validation_figure.input,
        validation_figure=rules.validation_figure.output[0],
    output:
        f"{R}/report.html",
    params:
        iterations=dict(FIGURE_ITERATIONS, validation=list(range(N + 1))),
        config=config,
    conda:
        ENV
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    script:
        "../scripts/report.py"
