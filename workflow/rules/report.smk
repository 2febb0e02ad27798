rule aggregate:
    """Per-run and per-experiment tables (mean +- std over seeds, paired tests) and FLOPs tables."""
    input:
        runs=[f"{run}/{file}" for run in RUN_DIRS for file in RUN_FILES],
        flops=FLOPS,
        code=crisp_sources("tables", "flops"),
    output:
        TABLES,
    params:
        baseline=config["baseline"],
        runs=RUN_DIRS,
        out=f"{R}/tables",
    log:
        f"{R}/logs/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m crisp tables --config {CONFIG_FILE} --runs {params.runs} --flops {input.flops} --out {params.out} > {log} 2>&1"


rule figures:
    """Every figure, as PNG (in the report) and PDF (for papers)."""
    input:
        tables=TABLES,
        runs=[f"{run}/{file}" for run in RUN_DIRS for file in RUN_FILES],
        code=crisp_sources("figures", "tables"),
    output:
        [
            report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in FIGURES
        ],
        [f"{R}/figures/{name}.pdf" for name in FIGURES],
    params:
        runs=RUN_DIRS,
        tables=f"{R}/tables",
        out=f"{R}/figures",
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
    shell:
        "python -m crisp figures --tables {params.tables} --runs {params.runs} --out {params.out} > {log} 2>&1"
