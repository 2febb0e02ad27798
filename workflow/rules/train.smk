rule finetune:
    """Fine-tune one experiment with one seed. Resume checkpoints live outside the outputs
    (<results>/checkpoints/<experiment>/seed<seed>/, crisp.config.checkpoint_dir), so Snakemake's
    clean-up before a rerun does not delete them."""
    input:
        data=DATA,
        code=crisp_sources("train", "attention", "modeling", "data", "devices"),
    output:
        [f"{R}/runs/{{experiment}}/seed{{seed}}/{file}" for file in RUN_FILES],
    params:
        settings=training_settings,
        run_dir=lambda w: f"{R}/runs/{w.experiment}/seed{w.seed}",
    log:
        f"{R}/logs/finetune/{{experiment}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{experiment}}/seed{{seed}}.tsv"
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
        seed=r"\d+",
    conda:
        "../../envs/crisp.yaml"
    threads: config["training"]["threads"]
    resources:
        # A retry (e.g. after an out-of-memory kill or a time limit) asks for more; training
        # resumes from its last checkpoint either way.
        mem_mb=lambda wildcards, attempt: config["training"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: config["training"]["runtime_min"] * attempt,
        gpu=0 if config["training"]["device"] == "cpu" else 1,
    shell:
        "python -m crisp train --config {CONFIG_FILE} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --data {input.data} --out {params.run_dir} > {log} 2>&1"
