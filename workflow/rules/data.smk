rule data:
    """Load, check and tokenise one task's data once per tokenizer; every run reuses it."""
    input:
        files=local_data_files,
        fetched=data_fetches,
        code=crisp_sources("data", "tabular", "synthetic", "modeling", "fetch"),
    output:
        directory(f"{R}/data/{{task}}/{{tokenizer}}"),
    log:
        f"{R}/logs/data/{{task}}/{{tokenizer}}.log",
    benchmark:
        f"{R}/benchmarks/data/{{task}}/{{tokenizer}}.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=lambda w: as_json(
            data_settings(config, w.task, TOKENIZERS[w.tokenizer])
        ),
    shell:
        "HF_HUB_OFFLINE=1 python -m crisp data --settings - --fetched {input.fetched:q}"
        " --out {output:q} > {log:q} 2>&1 <<< {params.settings:q}"
