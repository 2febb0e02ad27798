rule train:
    """Fine-tune one (task, model, experiment, seed). Resume checkpoints live outside the outputs
    (<results>/checkpoints/..., crisp.layout.checkpoint_dir), so Snakemake's clean-up before a
    rerun does not delete them."""
    input:
        data=lambda w: data_dir(R, w.task, tokenizer_of(MODELS[w.model])),
        model=local_model_files,
        fetched=model_fetches,
        code=crisp_sources(
            "train",
            "checkpoints",
            "runs",
            "attention",
            "kept_attention",
            "patterns",
            "modeling",
            "data",
            "metrics",
            "devices",
            "flops",
            "fetch",
        ),
    output:
        [
            f"{R}/runs/{{task}}/{{model}}/{{experiment}}/seed{{seed}}/{name}"
            for name in RUN_FILES
        ],
    log:
        f"{R}/logs/train/{{task}}/{{model}}/{{experiment}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{task}}/{{model}}/{{experiment}}/seed{{seed}}.tsv"
    conda:
        "../../envs/crisp.yaml"
    threads: config["training"]["threads"]
    resources:
        # A retry (after an out-of-memory kill or a time limit) asks for more; training resumes
        # from its last checkpoint either way.
        mem_mb=lambda wildcards, attempt: config["training"]["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: config["training"]["runtime_min"] * attempt,
        gpu=0 if config["training"]["device"] == "cpu" else 1,
    params:
        settings=lambda w: as_json(
            train_settings(config, w.task, MODELS[w.model], w.experiment, int(w.seed))
        ),
        run_dir=lambda w: run_dir(R, w.task, MODELS[w.model], w.experiment, w.seed),
        checkpoints=lambda w: checkpoint_dir(
            R, w.task, MODELS[w.model], w.experiment, w.seed
        ),
        keep="--keep-checkpoints" if config["training"]["keep_checkpoints"] else "",
    shell:
        "HF_HUB_OFFLINE=1 python -m crisp train --settings - --fetched {input.fetched:q}"
        " --data {input.data:q} --out {params.run_dir:q}"
        " --checkpoints {params.checkpoints:q} --threads {threads} {params.keep} > {log:q} 2>&1"
        " <<< {params.settings:q}"
