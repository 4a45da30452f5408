"""Job config extension (the ``[phases]`` section) and job config parsing."""

from .job_config import JobConfig, Phases
from .parsing import CUSTOM_CONFIG_MODULE, parse_job_config

__all__ = ["CUSTOM_CONFIG_MODULE", "JobConfig", "Phases", "parse_job_config"]
