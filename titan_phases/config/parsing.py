"""Parse a torchtitan job config (TOML + CLI flags) with the ``[phases]`` section available.

The one way titan_phases parses a job: the trainer's input check, ``python -m
titan_phases.prepare`` and the ``titan-phases`` CLI all call :func:`parse_job_config`. Unlike
torchtitan's own parsing, which stops at the first key it does not know, every unknown key of
the job TOML is collected (:class:`UnknownKey`, with a close match) and left out, so that the
checks after parsing still run and the user gets every problem at once.

**Limitations** (private torchtitan API this module relies on; check on upgrades)
``ConfigManager._dict_to_dataclass`` is overridden to collect unknown keys; torchtitan 0.2.2
calls it once on the whole TOML before tyro applies the command line.
"""

import contextlib
import dataclasses
import difflib
import io
import logging
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchtitan.config import ConfigManager, JobConfig
from torchtitan.tools.logging import logger as torchtitan_logger

from titan_phases.data.assets import cache_root, tokenizer_dir

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


class JobConfigFileError(ValueError):
    """The job TOML cannot be read or is not valid TOML; the message names the file."""


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise JobConfigFileError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise JobConfigFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise JobConfigFileError(f"{path}: cannot read the job config: {exc.strerror}") from None


@dataclass(frozen=True)
class UnknownKey:
    """A key of the job TOML that no config section has."""

    file: str
    line: int | None
    key: str
    """Dotted, e.g. ``phases.restore_bset``."""
    suggestion: str | None

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    @property
    def hint(self) -> str:
        if self.suggestion is not None:
            return f"did you mean {self.suggestion}?"
        return "remove it; titan-phases and torchtitan list every key with --help"


def _line_of(text: str, section: tuple[str, ...], key: str) -> int | None:
    """Line (1-based) where ``key`` is set under table ``section``; None if not found."""
    header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, section)) + r"\s*\]")
    assignment = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
    in_section = not section
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("["):
            in_section = bool(section) and bool(header.match(line))
        elif in_section and assignment.match(line):
            return number
    return None


_Found = list[tuple[tuple[str, ...], str, str | None]]
"""(table path, key, close match) of each unknown key."""


def _unknown_keys(
    cls: type, data: dict[str, Any], path: tuple[str, ...], found: _Found
) -> dict[str, Any]:
    """``data`` without the keys ``cls`` (a config dataclass) has no field for, recursively."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kept = {}
    for key, value in data.items():
        field = known.get(key)
        if field is None:
            close = difflib.get_close_matches(key, list(known), n=1)
            found.append((path, key, ".".join((*path, close[0])) if close else None))
        elif dataclasses.is_dataclass(field.type) and isinstance(value, dict):
            kept[key] = _unknown_keys(field.type, value, (*path, key), found)
        else:
            kept[key] = value
    return kept


class _CollectingConfigManager(ConfigManager):
    """torchtitan's ConfigManager, collecting unknown TOML keys instead of stopping at them."""

    def __init__(self, config_file: str | None) -> None:
        super().__init__()
        self.config_file = config_file
        self.unknown: list[UnknownKey] = []

    def _dict_to_dataclass(self, cls: Any, data: dict[str, Any]) -> Any:
        if self.unknown or self.config_file is None or not dataclasses.is_dataclass(cls):
            return super()._dict_to_dataclass(cls, data)
        found: _Found = []
        data = _unknown_keys(cls, data, (), found)
        if found:
            with open(self.config_file, encoding="utf-8", errors="replace") as f:
                text = f.read()
            self.unknown = [
                UnknownKey(self.config_file, _line_of(text, path, k), ".".join((*path, k)), close)
                for path, k, close in found
            ]
        return super()._dict_to_dataclass(cls, data)


def with_phases_section(args: list[str]) -> list[str]:
    """``args`` plus ``--job.custom_config_module titan_phases.config.job_config`` unless the
    arguments or the job TOML already name a custom config module.

    Raises:
        JobConfigFileError: the job TOML cannot be read or is malformed.
    """
    args = list(args)
    if _flag_value(args, _CUSTOM_MODULE_FLAGS) is None:
        config_file = _flag_value(args, _CONFIG_FILE_FLAGS)
        named_in_toml = False
        if config_file:
            job = _read_toml(config_file).get("job", {})
            named_in_toml = isinstance(job, dict) and bool(job.get("custom_config_module"))
        if not named_in_toml:
            args += ["--job.custom_config_module", CUSTOM_CONFIG_MODULE]
    return args


class CommandLineError(Exception):
    """tyro rejected the arguments; the message is what it would have printed."""


class _EmbeddedAssetsNotBuiltYet(logging.Filter):
    """Drops torchtitan's "HF assets path ... does not exist!" for the embedded tokenizer, which
    titan_phases builds after parsing (a fresh clone has none yet); other paths still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        embedded = os.path.normpath(tokenizer_dir(cache_root()))
        message = record.getMessage()
        return not (
            message.startswith("HF assets path ")
            and message.endswith(" does not exist!")
            and os.path.normpath(message[len("HF assets path ") : -len(" does not exist!")])
            == embedded
        )


@contextlib.contextmanager
def _quiet_about_embedded_assets() -> Iterator[None]:
    quiet = _EmbeddedAssetsNotBuiltYet()
    torchtitan_logger.addFilter(quiet)
    try:
        yield
    finally:
        torchtitan_logger.removeFilter(quiet)


def _parse_capturing_tyro(manager: ConfigManager, args: list[str]) -> JobConfig:
    # tyro prints its error and exits; capture it so that every rank can report it.
    captured = io.StringIO()
    try:
        with (
            contextlib.redirect_stderr(captured),
            contextlib.redirect_stdout(captured),
            _quiet_about_embedded_assets(),
        ):
            return manager.parse_args(args)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            sys.stdout.write(captured.getvalue())
            raise
        # tyro points at the running program's --help, which for titan-phases or torchrun is
        # not where torchtitan's flags are listed.
        lines = [
            line for line in captured.getvalue().rstrip().splitlines()
            if "For full helptext, run" not in line
        ]
        lines.append("Every flag: python -m titan_phases.train --job.config_file JOB.toml --help")
        raise CommandLineError("\n".join(lines)) from None


class UnknownKeysError(ValueError):
    """The job TOML sets keys that no config section has."""

    def __init__(self, unknown: list[UnknownKey]) -> None:
        self.unknown = unknown
        super().__init__(
            "unknown keys in the job config:\n"
            + "\n".join(f"  - {u.where}: {u.key}: {u.hint}" for u in unknown)
        )


def parse_job_config(
    args: list[str],
    require_phases: bool = True,
    unknown_keys: list[UnknownKey] | None = None,
) -> JobConfig:
    """Parse torchtitan-style arguments (``--job.config_file X --section.key value ...``).

    Adds ``--job.custom_config_module titan_phases.config.job_config`` unless the arguments or the
    job TOML already name a custom config module, so that a job TOML with a ``[phases]`` section
    parses even without the ``[job] custom_config_module`` line. A module named by the user must
    itself define ``phases`` (e.g. by subclassing this package's ``JobConfig``), unless
    ``require_phases`` is false (a job run on torchtitan's stock Trainer).

    Keys of the job TOML that no section has are left out and appended to ``unknown_keys``
    when a list is given (so that the caller can go on checking and report them with the rest);
    without one they raise :class:`UnknownKeysError`.

    Raises:
        ValueError: the resulting config has no ``phases`` section.
        JobConfigFileError: the job TOML cannot be read or is malformed.
        UnknownKeysError: see above.
        CommandLineError: tyro rejected a flag; the message is tyro's.
        SystemExit: ``--help`` (tyro printed it).
    """
    args = with_phases_section(args)
    manager = _CollectingConfigManager(_flag_value(args, _CONFIG_FILE_FLAGS))
    job_config = _parse_capturing_tyro(manager, args)
    if manager.unknown:
        if unknown_keys is None:
            raise UnknownKeysError(manager.unknown)
        unknown_keys.extend(manager.unknown)
    if require_phases and not hasattr(job_config, "phases"):
        raise ValueError(
            f"job.custom_config_module = {job_config.job.custom_config_module!r} defines no "
            f"'phases' section; use {CUSTOM_CONFIG_MODULE!r} or subclass its JobConfig."
        )
    return job_config
