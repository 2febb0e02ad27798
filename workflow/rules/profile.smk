rule profile_flops:
    """Analytic FLOPs (as executed, ideal sparse, the paper's accounting) plus a measured count."""
    input:
        code=crisp_sources("flops", "attention", "modeling"),
    output:
        f"{R}/flops/{{experiment}}.json",
    params:
        model=config["model"],
        attention=lambda w: config["experiments"][w.experiment],
        profiling=config["profiling"],
    log:
        f"{R}/logs/profile_flops/{{experiment}}.log",
    benchmark:
        f"{R}/benchmarks/profile_flops/{{experiment}}.tsv"
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m crisp profile --config {CONFIG_FILE} --experiment {wildcards.experiment} --out {output} > {log} 2>&1"
