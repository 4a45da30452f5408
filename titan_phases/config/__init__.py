"""Job config extension (the ``[phases]`` and ``[pretrained]`` sections) and its parsing."""

from .job_config import JobConfig, Phases, PretrainedStage
from .parsing import (
    CommandLineError,
    CUSTOM_CONFIG_MODULE,
    JobConfigFileError,
    parse_job_config,
    UnknownKey,
    UnknownKeysError,
    with_phases_section,
)

__all__ = [
    "CUSTOM_CONFIG_MODULE",
    "CommandLineError",
    "JobConfigFileError",
    "JobConfig",
    "Phases",
    "PretrainedStage",
    "UnknownKey",
    "UnknownKeysError",
    "parse_job_config",
    "with_phases_section",
]
