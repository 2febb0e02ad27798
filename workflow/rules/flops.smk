rule flops:
    """FLOPs of one model under each experiment: as executed, ideal sparse kernel, the paper's
    accounting, and a measured count. One job per model: each account takes about a second,
    loading the libraries longer."""
    input:
        fetched=model_fetches,
        code=crisp_sources(
            "flops", "attention", "kept_attention", "patterns", "modeling", "fetch"
        ),
    output:
        [f"{R}/flops/{{model}}/{experiment}.json" for experiment in EXPERIMENTS],
    log:
        f"{R}/logs/flops/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/flops/{{model}}.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=lambda w: as_json(flops_settings(config, MODELS[w.model])),
        out=lambda w, output: Path(output[0]).parent,
    shell:
        "HF_HUB_OFFLINE=1 python -m crisp flops --settings - --fetched {input.fetched:q}"
        " --out {params.out:q} > {log:q} 2>&1 <<< {params.settings:q}"
