"""`crisp` command line: one sub-command per pipeline stage, named as its rule, module and folder.

    crisp config   print the resolved, validated configuration
    crisp fetch    put a Hub model or data set into the HF cache -> results/fetch/{models,datasets}/<name>.json
    crisp data     tokenise one task's data once        -> results/data/<task>/<tokenizer>/
    crisp train    fine-tune one run                    -> results/runs/<task>/<model>/<experiment>/seed<seed>/
    crisp flops    FLOP account of one model            -> results/flops/<model>/<experiment>.json
    crisp tables   aggregate runs and FLOPs             -> results/tables/
    crisp figures  draw the figures                     -> results/figures/
    crisp plan     seeds each comparison needs to detect a target difference (from results/tables/)
    crisp bench    speed and memory, as ratios measured side by side

A stage reads exactly its settings (crisp.settings): the Snakemake rules pass them as JSON on
standard input (`--settings -`: a long list of label names would not fit on a command line); by
hand, give `--config FILE` (repeatable, later files win, `--set key=value` overrides) and the
run's names (--task, --model, --experiment, --seed), and the same settings are computed from the
configuration. Every sub-command writes only into the paths it is given.
"""

from __future__ import annotations

import argparse
import sys


def _add_settings_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    group = parser.add_argument_group("settings (either --settings, or --config with the names below)")
    group.add_argument(
        "--settings",
        metavar="JSON",
        help="the stage's settings as JSON, or - to read them from standard input (what the Snakemake rules do: "
        "settings can be longer than a command line may be)",
    )
    group.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML configuration file; repeat to layer files (later wins)",
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one key, e.g. --set training.learning_rate=3e-5",
    )
    for name in names:
        group.add_argument(f"--{name}", type=int if name == "seed" else str, help=f"with --config: the {name}")


def _add_fetched_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fetched",
        nargs="*",
        default=[],
        metavar="JSON",
        help="fetch records (crisp fetch): Hub models and data sets are loaded at the commits they name",
    )


def _load_config(args) -> dict:
    from crisp.config import load_config
    from crisp.errors import ConfigError

    if not args.config:
        raise ConfigError("no configuration given: pass --config config.yaml (or --settings JSON)")
    return load_config(args.config, args.overrides)


def _settings(args, stage: str, names: tuple[str, ...]) -> dict:
    """The stage's settings: as given with --settings, or computed from --config and the names."""
    from crisp import settings as stage_settings
    from crisp.errors import ConfigError

    if args.settings:
        if args.config or args.overrides:
            raise ConfigError("give either --settings or --config/--set, not both")
        return stage_settings.from_json(sys.stdin.read() if args.settings == "-" else args.settings, stage)
    config = _load_config(args)
    missing = [f"--{name}" for name in names if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"crisp {stage} with --config needs {', '.join(missing)}")
    return getattr(stage_settings, f"{stage}_settings")(config, *(getattr(args, name) for name in names))


def cmd_config(args) -> None:
    import yaml

    print(yaml.safe_dump(_load_config(args), sort_keys=False), end="")


def cmd_fetch(args) -> None:
    from pathlib import Path

    from crisp.fetch import fetch

    if args.settings:
        if not args.out:
            from crisp.errors import ConfigError

            raise ConfigError("crisp fetch --settings needs --out FILE.json, where the record goes")
        fetches = {Path(args.out): _settings(args, "fetch", ())}
    else:  # every Hub input of the configuration, records under --out (default <results>/fetch)
        from crisp.settings import fetch_settings

        config = _load_config(args)
        folder = Path(args.out or f"{config['results']}/fetch")
        fetches = {folder / f"{name}.json": settings for name, settings in fetch_settings(config).items()}
    for out, settings in fetches.items():
        record = fetch(settings, out)
        size = sum(record["files"].values())
        print(f"{record['kind']} {record['id']} at {record['commit']} ({len(record['files'])} files, "
              f"{size / 2**20:.1f} MiB, from the {record['source']}) -> {out}")


def _fetched(args, kind: str, repo_id: str, requested: str | None, config: str | None = None) -> str | None:
    """The commit a fetch record given with --fetched names for (kind, id); else the requested revision."""
    from crisp.fetch import fetched_commit

    return fetched_commit(args.fetched, kind, repo_id, requested, config) or requested


def cmd_data(args) -> None:
    from crisp.data import prepare
    from crisp.tasks import hub_dataset

    if args.settings is None and args.tokenizer is None and args.model is not None:
        from crisp.layout import tokenizer_of

        args.tokenizer = tokenizer_of(args.model)
    settings = _settings(args, "data", ("task", "tokenizer"))
    dataset = dict(settings["dataset"])
    if (source := hub_dataset(dataset["name"])) is not None:
        dataset["revision"] = _fetched(args, "dataset", source[0], dataset["revision"], source[1])
    tokenizer_revision = _fetched(args, "model", settings["tokenizer"], settings["tokenizer_revision"])
    out = prepare(dataset, settings["tokenizer"], settings["max_length"], args.out,
                  tokenizer_revision=tokenizer_revision)
    print(f"Prepared task {settings['task']} in {out}")


def cmd_train(args) -> None:
    from crisp.devices import claim_device

    settings = _settings(args, "train", ("task", "model", "experiment", "seed"))
    # Claim a GPU before torch initialises CUDA: concurrent jobs on one workstation each get their own.
    with claim_device(wanted=settings["training"]["device"]) as device:
        print(f"Device: {device}", flush=True)
        from crisp.train import train_run

        metrics = train_run(
            settings,
            args.data,
            args.out,
            args.checkpoints,
            threads=args.threads,
            keep_checkpoints=args.keep_checkpoints,
            model_revision=_fetched(args, "model", settings["model"], settings["model_revision"]),
        )
    validation = metrics["validation"]
    print(
        f"{settings['task']} / {settings['model']} / {settings['experiment']} seed {settings['seed']}: "
        f"{metrics['metric']} {validation['primary']:.4f}, accuracy {validation['accuracy']:.4f} "
        f"({validation['correct']}/{validation['total']}), loss {validation['loss']:.4f}"
    )


def cmd_flops(args) -> None:
    from pathlib import Path

    from crisp.flops import run_profile

    settings = _settings(args, "flops", ("model",))
    for experiment, attention in settings["experiments"].items():
        out = Path(args.out) / f"{experiment}.json"
        run_profile(
            {
                "model": settings["model"],
                "model_revision": _fetched(args, "model", settings["model"], settings["model_revision"]),
                "experiment": experiment,
                "attention": attention,
                "profiling": settings["profiling"],
            },
            out,
        )
        print(f"Wrote {out}")


def cmd_tables(args) -> None:
    from crisp.tables import write_tables

    write_tables(args.runs, args.flops, args.out, _settings(args, "tables", ()))
    print(f"Wrote tables to {args.out}")


def cmd_figures(args) -> None:
    from crisp.figures import write_figures

    write_figures(args.tables, args.runs, args.out, _settings(args, "figures", ()))
    print(f"Wrote figures to {args.out}")


def cmd_plan(args) -> None:
    from pathlib import Path

    import pandas as pd

    from crisp.errors import RunFormatError
    from crisp.pooling import plan_table

    path = Path(args.tables) / "summary.csv"
    if not path.is_file():
        raise RunFormatError(f"{path}: no such file; run `crisp tables` (or the workflow's tables rule) first.")
    table = plan_table(pd.read_csv(path), target=args.target, power=args.power)
    if table.empty:
        print(f"{path}: no comparison with two or more paired seeds to plan from.")
        return
    print(table.to_markdown(index=False, disable_numparse=True))
    print(
        "\nSeeds needed: the fewest with which the paired t-test over seeds detects the target difference at "
        "this power, at level (1 - confidence) / family size (Holm's strictest step), if the per-seed "
        "differences spread as they did here (exact noncentral t)."
    )


def cmd_bench(args) -> None:
    from crisp.bench import main as bench_main

    bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crisp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="print the resolved, validated configuration as YAML")
    config.add_argument(
        "--config", action="append", default=[], metavar="FILE", help="YAML configuration file; repeat to layer files"
    )
    config.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help="override one key"
    )
    config.set_defaults(run=cmd_config)

    fetch = commands.add_parser(
        "fetch", help="put a Hub model or data set into the Hugging Face cache (cache first) and record its commit"
    )
    _add_settings_arguments(fetch)
    fetch.add_argument(
        "--out", help="with --settings: the record (.json); with --config: their folder (default <results>/fetch)"
    )
    fetch.set_defaults(run=cmd_fetch)

    data = commands.add_parser("data", help="load, check and tokenise one task's data once (Arrow cache + stats.json)")
    _add_settings_arguments(data, "task", "tokenizer")
    data.add_argument("--model", help="with --config: tokenise for this model's tokenizer (instead of --tokenizer)")
    data.add_argument("--out", required=True, help="folder for the tokenised data")
    _add_fetched_argument(data)
    data.set_defaults(run=cmd_data)

    train = commands.add_parser(
        "train", help="fine-tune one (task, model, experiment, seed); resumes from its last checkpoint"
    )
    _add_settings_arguments(train, "task", "model", "experiment", "seed")
    train.add_argument("--data", required=True, help="folder written by `crisp data`")
    train.add_argument(
        "--out", required=True, help="run folder for metrics.json, history.csv, predictions.csv, attention.json"
    )
    train.add_argument("--checkpoints", required=True, help="folder for resume checkpoints (outside the run folder)")
    train.add_argument("--threads", type=int, help="CPU threads for training (default: torch's choice)")
    train.add_argument(
        "--keep-checkpoints", action="store_true", help="keep the resume checkpoints after the run completes"
    )
    _add_fetched_argument(train)
    train.set_defaults(run=cmd_train)

    flops = commands.add_parser("flops", help="analytic and measured FLOPs of one model under every experiment")
    _add_settings_arguments(flops, "model")
    flops.add_argument("--out", required=True, help="folder for one <experiment>.json per experiment")
    _add_fetched_argument(flops)
    flops.set_defaults(run=cmd_flops)

    tables = commands.add_parser("tables", help="runs.csv, summary.{csv,md,tex}, flops.{csv,md}")
    _add_settings_arguments(tables)
    tables.add_argument("--runs", nargs="+", required=True, help="run folders")
    tables.add_argument("--flops", nargs="*", default=[], help="FLOPs JSON files")
    tables.add_argument("--out", required=True, help="folder for the tables")
    tables.set_defaults(run=cmd_tables)

    figures = commands.add_parser("figures", help="PNG and PDF figures from the tables and run folders")
    _add_settings_arguments(figures)
    figures.add_argument("--tables", required=True, help="folder written by `crisp tables`")
    figures.add_argument("--runs", nargs="+", required=True, help="run folders")
    figures.add_argument("--out", required=True, help="folder for the figures")
    figures.set_defaults(run=cmd_figures)

    plan = commands.add_parser("plan", help="seeds each comparison needs to detect a target difference")
    plan.add_argument("--tables", required=True, help="folder written by `crisp tables` (reads summary.csv)")
    plan.add_argument(
        "--target", type=float, help="difference to detect, in points of the primary metric (default: the summary's)"
    )
    plan.add_argument("--power", type=float, help="power to detect it with (default: the summary's)")
    plan.set_defaults(run=cmd_plan)

    bench = commands.add_parser(
        "bench", help="attention, training-step and throughput benchmarks, as ratios in one run"
    )
    from crisp.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crisp.errors import USER_ERRORS, exit_code

    try:
        args.run(args)
    except USER_ERRORS as error:
        print(f"crisp {args.command}: error: {error}", file=sys.stderr)
        return exit_code(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
