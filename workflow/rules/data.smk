rule prepare_data:
    """Load, validate and tokenise the dataset once; every experiment and seed reuses it."""
    input:
        files=local_data_files(),
        code=crisp_sources("data", "modeling"),
    output:
        directory(DATA),
    params:
        dataset=config["dataset"],
        tokenizer=tokenizer_spec(config),
        max_length=config["max_length"],
    log:
        f"{R}/logs/prepare_data.log",
    benchmark:
        f"{R}/benchmarks/prepare_data.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m crisp prepare --config {CONFIG_FILE} --out {output} > {log} 2>&1"
