"""Parse a torchtitan job config (TOML + CLI flags) with the ``[phases]`` section available."""

import tomllib

from torchtitan.config import ConfigManager, JobConfig

CUSTOM_CONFIG_MODULE = "titan_phases.config.job_config"

_CONFIG_FILE_FLAGS = ("--job.config_file", "--job.config-file")
_CUSTOM_MODULE_FLAGS = ("--job.custom_config_module", "--job.custom-config-module")


def _flag_value(args: list[str], flags: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in flags:
            if eq:
                return value
            return args[i + 1] if i + 1 < len(args) else None
    return None


def with_phases_section(args: list[str]) -> list[str]:
    """``args`` plus ``--job.custom_config_module titan_phases.config.job_config`` unless the
    arguments or the job TOML already name a custom config module.

    Raises:
        FileNotFoundError, tomllib.TOMLDecodeError: the job TOML is missing or malformed.
    """
    args = list(args)
    if _flag_value(args, _CUSTOM_MODULE_FLAGS) is None:
        config_file = _flag_value(args, _CONFIG_FILE_FLAGS)
        named_in_toml = False
        if config_file:
            with open(config_file, "rb") as f:
                job = tomllib.load(f).get("job", {})
            named_in_toml = isinstance(job, dict) and bool(job.get("custom_config_module"))
        if not named_in_toml:
            args += ["--job.custom_config_module", CUSTOM_CONFIG_MODULE]
    return args


def parse_job_config(args: list[str]) -> JobConfig:
    """Parse torchtitan-style arguments (``--job.config_file X --section.key value ...``).

    Adds ``--job.custom_config_module titan_phases.config.job_config`` unless the arguments or the
    job TOML already name a custom config module, so that a job TOML with a ``[phases]`` section
    parses even without the ``[job] custom_config_module`` line. A module named by the user must
    itself define ``phases`` (e.g. by subclassing this package's ``JobConfig``).

    Raises:
        ValueError: the resulting config has no ``phases`` section.
        FileNotFoundError, tomllib.TOMLDecodeError: the job TOML is missing or malformed.
        SystemExit: tyro rejected a flag (it prints the reason first), as torchtitan does.
    """
    job_config = ConfigManager().parse_args(with_phases_section(args))
    if not hasattr(job_config, "phases"):
        raise ValueError(
            f"job.custom_config_module = {job_config.job.custom_config_module!r} defines no "
            f"'phases' section; use {CUSTOM_CONFIG_MODULE!r} or subclass its JobConfig."
        )
    return job_config
