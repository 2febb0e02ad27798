"""`crisp` command line: one sub-command per pipeline stage.

    crisp config   print the resolved, validated configuration
    crisp prepare  tokenise the dataset once            -> results/data/<dataset>/<tokenizer>/
    crisp train    fine-tune one (experiment, seed)     -> results/runs/<experiment>/seed<seed>/
    crisp profile  FLOP account of one experiment       -> results/flops/<experiment>.json
    crisp tables   aggregate runs and FLOPs             -> results/tables/
    crisp figures  draw the figures                     -> results/figures/

Each Snakemake rule is one of these calls. Every sub-command that needs the configuration reads
the same YAML format as config.yaml (`--config FILE`, repeatable, later files win), accepts
`--set key.path=value` overrides, and writes only into the paths it is given.
"""

from __future__ import annotations

import argparse
import sys


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML configuration file; repeat to layer files (later wins)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help="override one key, e.g. --set training.learning_rate=3e-5")


def _load_config(args) -> dict:
    from crisp.config import ConfigError, load_config

    if not args.config:
        raise ConfigError("no configuration given: pass --config config.yaml")
    return load_config(args.config, args.overrides)


def cmd_config(args) -> None:
    import yaml

    print(yaml.safe_dump(_load_config(args), sort_keys=False), end="")


def cmd_prepare(args) -> None:
    from crisp.config import tokenizer_spec
    from crisp.data import prepare

    config = _load_config(args)
    out = prepare(config["dataset"], tokenizer_spec(config), config["max_length"], args.out)
    print(f"Prepared data in {out}")


def cmd_train(args) -> None:
    from crisp.config import checkpoint_dir
    from crisp.devices import claim_device

    config = _load_config(args)
    checkpoints = args.checkpoints or checkpoint_dir(config, args.experiment, args.seed)
    # Claim a GPU before torch initialises CUDA: concurrent jobs on one workstation each get their own.
    with claim_device(wanted=config["training"]["device"]) as device:
        print(f"Device: {device}", flush=True)
        from crisp.train import train_run

        metrics = train_run(config, args.experiment, args.seed, args.data, args.out, checkpoints)
    validation = metrics["validation"]
    print(
        f"{args.experiment} seed {args.seed}: validation accuracy {validation['accuracy']:.4f} "
        f"({validation['correct']}/{validation['total']}), loss {validation['loss']:.4f}"
    )


def cmd_profile(args) -> None:
    from crisp.errors import ConfigError
    from crisp.flops import run_profile
    from crisp.modeling import load_model_config

    config = _load_config(args)
    if args.experiment not in config["experiments"]:
        raise ConfigError(f"experiment {args.experiment!r} is not in the configuration ({', '.join(config['experiments'])})")
    profiling = config["profiling"]
    run_profile(
        load_model_config(config["model"]),
        args.experiment,
        config["experiments"][args.experiment],
        profiling["sequence_lengths"],
        args.out,
        measure_seq_len=profiling["measure_seq_len"],
        model_name=config["model"],
    )
    print(f"Wrote {args.out}")


def cmd_tables(args) -> None:
    from crisp.tables import write_tables

    baseline = _load_config(args)["baseline"] if args.config else None  # None: tables picks the dense one
    write_tables(args.runs, args.flops, args.out, baseline=baseline)
    print(f"Wrote tables to {args.out}")


def cmd_figures(args) -> None:
    from crisp.figures import write_figures

    write_figures(args.tables, args.runs, args.out)
    print(f"Wrote figures to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crisp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="print the resolved, validated configuration as YAML")
    _add_config_arguments(config)
    config.set_defaults(run=cmd_config)

    prepare = commands.add_parser("prepare", help="load, validate and tokenise the dataset once (Arrow cache + stats.json)")
    _add_config_arguments(prepare)
    prepare.add_argument("--out", required=True, help="folder for the tokenised dataset")
    prepare.set_defaults(run=cmd_prepare)

    train = commands.add_parser("train", help="fine-tune one experiment with one seed; resumes from its last checkpoint")
    _add_config_arguments(train)
    train.add_argument("--experiment", required=True, help="a name under 'experiments' in the configuration")
    train.add_argument("--seed", required=True, type=int)
    train.add_argument("--data", required=True, help="folder written by `crisp prepare`")
    train.add_argument("--out", required=True, help="run folder for metrics.json, history.csv, predictions.csv, attention.json")
    train.add_argument("--checkpoints", help="resume checkpoints (default: <results>/checkpoints/<experiment>/seed<seed>)")
    train.set_defaults(run=cmd_train)

    profile = commands.add_parser("profile", help="analytic and measured FLOPs of one experiment")
    _add_config_arguments(profile)
    profile.add_argument("--experiment", required=True)
    profile.add_argument("--out", required=True, help="JSON file to write")
    profile.set_defaults(run=cmd_profile)

    tables = commands.add_parser("tables", help="runs.csv, summary.{csv,md,tex}, flops.{csv,md}")
    _add_config_arguments(tables)
    tables.add_argument("--runs", nargs="+", required=True, help="run folders")
    tables.add_argument("--flops", nargs="*", default=[], help="FLOPs JSON files")
    tables.add_argument("--out", required=True, help="folder for the tables")
    tables.set_defaults(run=cmd_tables)

    figures = commands.add_parser("figures", help="PNG and PDF figures from the tables and run folders")
    figures.add_argument("--tables", required=True, help="folder written by `crisp tables`")
    figures.add_argument("--runs", nargs="+", required=True, help="run folders")
    figures.add_argument("--out", required=True, help="folder for the figures")
    figures.set_defaults(run=cmd_figures)
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
