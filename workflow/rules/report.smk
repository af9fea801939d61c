# Figures (matplotlib) and the HTML report; figures are also registered for `snakemake --report`.


def figure_inputs(w=None):
    iters = range(N + 1)
    inputs = {
        "elastic": [f"{R}/iter_{i}/elastic.json" for i in iters],
        "potentials": [f"{potential(i)}.snapcoeff" for i in iters],
        "targets": [f"{R}/iter_{i}/targets.xyz" for i in range(N)],
        "targets_summary": [f"{R}/iter_{i}/targets.json" for i in range(N)],
        "retrain": [f"{R}/iter_{j}/retrain.json" for j in range(1, N + 1)],
        "relaxed": [f"{R}/iter_{i}/qmml/{case}_initial.xyz" for i in range(N) for case in CASES],
        # unrelaxed inputs of "relaxed" (same order): the DD maps' perfect reference lattice
        # comes from their structure info, which the QM/ML outputs do not carry
        "structures": [f"{R}/iter_{i}/structures/{case}_initial.xyz" for i in range(N)
                       for case in CASES],
        "neb": [f"{R}/iter_{i}/qmml/{case}_neb.xyz" for i in range(N) for case in CASES
                if glide(case)],
        "binding": [f"{R}/iter_{N}/binding.csv"] if DEFECTS else [],
    }
    return inputs


FIGURES = ["force_parity", "force_rmse", "elastic_constants", "glide_barriers",
           "dd_maps", "binding_energy"]


rule figures:
    input:
        unpack(figure_inputs),
    output:
        **{
            name: report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst",
                         category="qmml")
            for name in FIGURES
        },
    conda:
        ENV
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    script:
        "../scripts/figures.py"


rule report:
    input:
        unpack(figure_inputs),
        figures=rules.figures.output,
    output:
        f"{R}/report.html",
    params:
        config=config,
    conda:
        ENV
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    script:
        "../scripts/report.py"
