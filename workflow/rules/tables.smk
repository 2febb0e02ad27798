rule tables:
    """One row per run, the summary per (task, model, experiment) with comparisons to the
    baseline of the same task and model, and the FLOPs tables."""
    input:
        runs=RUN_OUTPUTS,
        flops=FLOPS,
        code=crisp_sources(
            "tables", "runs", "stats", "comparisons", "pooling", "metrics", "flops"
        ),
    output:
        [table_report(path) for path in TABLES],
    log:
        f"{R}/logs/tables.log",
    benchmark:
        f"{R}/benchmarks/tables.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        settings=as_json(tables_settings(config)),
        runs=RUN_DIRS,
        out=lambda w, output: Path(output[0]).parent,
    shell:
        "python -m crisp tables --settings - --runs {params.runs:q}"
        " --flops {input.flops:q} --out {params.out:q} > {log:q} 2>&1 <<< {params.settings:q}"
