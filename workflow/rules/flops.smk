rule flops:
    """FLOPs of one model under one experiment: as executed, ideal sparse kernel, the paper's
    accounting, and a measured count."""
    input:
        code=crisp_sources("flops", "attention", "patterns", "modeling"),
    output:
        f"{R}/flops/{{model}}/{{experiment}}.json",
    log:
        f"{R}/logs/flops/{{model}}/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/flops/{{model}}/{{experiment}}.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=lambda w: as_json(
            flops_settings(config, MODELS[w.model], w.experiment)
        ),
    shell:
        "python -m crisp flops --settings {params.settings:q} --out {output} > {log} 2>&1"
