"""The Snakemake profiles and the conda environment say only what Snakemake, the SLURM plugin
and pyproject.toml understand, so a typo fails here and not on a cluster."""

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, copy_repository

PROFILES = {name: REPO / "profiles" / name / "config.yaml" for name in ("default", "slurm")}
ENV_FILE = REPO / "envs" / "crisp.yaml"

# Resources Snakemake itself knows, whatever the executor.
SNAKEMAKE_RESOURCES = {"mem", "mem_mb", "mem_mib", "disk", "disk_mb", "disk_mib", "runtime", "tmpdir", "threads", "gpu"}
# They run the workflow, from outside the jobs' environment.
WORKFLOW_RUNNERS = {"snakemake", "snakemake-executor-plugin-slurm"}
# conda-forge name -> PyPI name, where they differ.
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}


def load_profile(name: str) -> dict:
    profile = yaml.safe_load(PROFILES[name].read_text())
    assert isinstance(profile, dict), f"{PROFILES[name]} is not a YAML mapping"
    return profile


def snakemake_options() -> dict:
    """Every command-line option of this Snakemake with its installed executor plugins."""
    from snakemake.cli import get_argument_parser

    return {option: action for action in get_argument_parser()._actions for option in action.option_strings}


def slurm_plugin_resources() -> set[str]:
    """Resource names the SLURM executor plugins read from a job, found in their source."""
    import snakemake_executor_plugin_slurm
    import snakemake_executor_plugin_slurm_jobstep

    names = set()
    for package in (snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep):
        for source in Path(inspect.getfile(package)).parent.glob("*.py"):
            text = source.read_text()
            names |= set(re.findall(r"resources\.get\(\s*[\"'](\w+)[\"']", text))
            names |= set(re.findall(r"resources\.(\w+)\b(?!\()", text))
    return names


def commented_keys(path: Path) -> set[str]:
    """Keys of the `# key: "CHANGE-ME"` lines: placeholders meant to be uncommented."""
    return set(re.findall(r"^\s*#\s*(\w+):\s*\"CHANGE-ME\"", path.read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_name_only_options_snakemake_accepts(name):
    options = snakemake_options()

    for key, value in load_profile(name).items():
        option = options.get(f"--{key}")
        assert option is not None, f"{PROFILES[name]}: '{key}' is not an option of `snakemake` (see snakemake --help)"
        if option.nargs == 0:  # a flag
            assert isinstance(value, bool), f"{PROFILES[name]}: '{key}' is a flag; write true or false"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_resources_are_ones_snakemake_or_the_slurm_plugin_reads(name):
    profile = load_profile(name)
    known = SNAKEMAKE_RESOURCES | slurm_plugin_resources()
    named = set(profile.get("default-resources", {})) | commented_keys(PROFILES[name])
    for rule_resources in profile.get("set-resources", {}).values():
        named |= set(rule_resources)

    assert named - known == set(), f"{PROFILES[name]}: resources no one reads: {named - known}"


def test_slurm_profile_resources_grow_with_each_attempt():
    defaults = load_profile("slurm")["default-resources"]

    for name in ("mem_mb", "runtime"):
        first, second = (eval(str(defaults[name]), {"attempt": attempt}) for attempt in (1, 2))
        assert 0 < first < second, f"default-resources {name}: {defaults[name]!r}"


def test_slurm_profile_submits_every_job_without_capping_the_cluster():
    profile = load_profile("slurm")

    assert profile["executor"] == "slurm"
    # `cores` would limit the threads of all running jobs together to the login node's cores.
    assert "cores" not in profile


def dependency_specs(requirements: list[str]) -> dict[str, str]:
    """PyPI-normalised name -> version specifier, e.g. {"transformers": ">=5,<6"}."""
    specs = {}
    for requirement in requirements:
        name, specifier = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(.*)", requirement).groups()
        name = re.sub(r"[-_.]+", "-", name).lower()
        specs[CONDA_TO_PYPI.get(name, name)] = specifier.replace(" ", "")
    return specs


def test_conda_environment_has_the_dependencies_of_pyproject():
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml does not exist yet")
    wanted = dependency_specs(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    environment = yaml.safe_load(ENV_FILE.read_text())
    conda = [entry for entry in environment["dependencies"] if isinstance(entry, str)]
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    have = dependency_specs(conda + pip)
    have.pop("python"), have.pop("pip")

    assert "conda-forge" in environment["channels"]
    assert have == {name: spec for name, spec in wanted.items() if name not in WORKFLOW_RUNNERS}
    # torch from PyPI: its Linux wheels carry CUDA, and then nothing pulls a second torch from conda.
    assert "torch" in dependency_specs(pip)


def dry_run(tmp_path: Path, *options: str) -> str:
    if not (REPO / "Snakefile").exists() or not (REPO / ".test" / "config.yaml").exists():
        pytest.skip("the workflow (Snakefile, .test/config.yaml) does not exist yet")
    workdir = copy_repository(tmp_path / "repo")
    (workdir / "gpu.yaml").write_text("training: {device: auto}\n")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--dry-run",
        "--configfile",
        ".test/config.yaml",
        "gpu.yaml",
        *options,
    ]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def job_resources(output: str) -> dict[str, list[str]]:
    """rule -> the `resources:` line of each of its jobs in a dry run's output."""
    jobs = {}
    for block in re.split(r"\n\[[^\]]+\]\n", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE)
        if rule and resources:
            jobs.setdefault(rule.group(1), []).append(resources.group(1))
    return jobs


def test_slurm_profile_gives_train_a_gpu_and_an_early_warning(tmp_path):
    output = dry_run(tmp_path, "--workflow-profile", "profiles/slurm")
    jobs = job_resources(output)

    assert "Using workflow specific profile profiles/slurm" in output
    assert set(load_profile("slurm")["set-resources"]) <= set(jobs), "set-resources names a rule the workflow lacks"
    for resources in jobs["train"]:
        assert "gpu=1" in resources and "slurm_extra=--signal=TERM@120" in resources, resources
    for rule in set(jobs) - {"train"}:
        assert all("gpu=1" not in resources for resources in jobs[rule]), rule


def test_default_profile_is_used_without_being_named(tmp_path):
    output = dry_run(tmp_path)

    assert "Using workflow specific profile profiles/default" in output
