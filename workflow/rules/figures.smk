rule figures:
    """Every figure as PNG (in the report, grouped by task and model) and PDF (for papers)."""
    input:
        tables=TABLES,
        runs=RUN_OUTPUTS,
        code=crisp_sources(
            "figures", "tables", "comparisons", "pooling", "stats", "runs", "metrics"
        ),
    output:
        [figure_report(name) for name in FIGURES],
        [f"{R}/figures/{name}.pdf" for name in FIGURES],
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=as_json(figures_settings(config)),
        runs=RUN_DIRS,
        tables=lambda w, input: Path(input.tables[0]).parent,
        # the first output is figures/sparsity_effects.png
        out=lambda w, output: Path(output[0]).parent,
    shell:
        "python -m crisp figures --settings - --tables {params.tables:q}"
        " --runs {params.runs:q} --out {params.out:q} > {log:q} 2>&1 <<< {params.settings:q}"
