# Crisp: structured attention sparsity as a regulariser, from data to figures.
#
#   snakemake --cores all                                   # the paper protocol (config.yaml; GPU + Hub)
#   snakemake --cores all --configfile config/demo.yaml     # offline demo on a CPU
#   snakemake --cores all --configfile config/glue.yaml     # GLUE x 3 encoders (cluster-sized)
#   snakemake --report results/report.html                  # HTML report with every figure
#
# DAG, for every task x model x experiment x seed:
#   fetch (per Hub model and Hub data set, on the submitting host) -> data (per task and
#   tokenizer) -> train (per run) -> tables -> figures; flops per model.
# Each rule is one `crisp` sub-command of the same name; the logic lives in the crisp package.

import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# Run the crisp package of this checkout, in the workflow and in every job, so that the sources
# declared as inputs (see crisp_sources) are the code that actually runs.
sys.path.insert(0, workflow.basedir)
# (A prefix replaces Snakemake's default one, so it restates the strict mode.)
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(workflow.basedir)
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

# Snakemake's configfile directive reads with PyYAML's recursive loader, where a file nested 1,000
# deep is a RecursionError traceback: read the workflow's own config file with crisp's bounded reader
# first, so that such a file is one line naming it. (A --configfile is read by Snakemake before this
# file runs; common.smk checks those once the directive has merged them.)
if Path("config.yaml").is_file():
    from crisp.config import check_config_files
    from crisp.errors import ConfigError

    try:
        check_config_files(["config.yaml"])
    except ConfigError as error:
        raise WorkflowError(f"Invalid configuration: {error}")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(MODELS),
    tokenizer="|".join(TOKENIZERS),
    experiment="|".join(EXPERIMENTS),
    seed=r"\d+",
    source="|".join(re.escape(name) for name in FETCHES) or "no-fetch",


include: "workflow/rules/fetch.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/flops.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        TABLES,
        FIGURES_OUT,
