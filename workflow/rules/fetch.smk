# The only jobs that may use the network: a localrule, so that under SLURM they run on the
# submitting host (the login node), where the Hub is reachable. Everything downstream runs with
# HF_HUB_OFFLINE=1 and loads the commit these records name.
localrules:
    fetch,


rule fetch:
    """Put one Hub model or data set into the Hugging Face cache (served from it when it is there
    already) and record its resolved commit, files and sizes."""
    input:
        code=crisp_sources("fetch"),
    output:
        f"{R}/fetch/{{source}}.json",
    log:
        f"{R}/logs/fetch/{{source}}.log",
    benchmark:
        f"{R}/benchmarks/fetch/{{source}}.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        settings=lambda w: as_json(FETCHES[w.source]),
    shell:
        "python -m crisp fetch --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"
