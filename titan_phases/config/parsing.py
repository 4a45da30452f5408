"""Parse a torchtitan job config (TOML + CLI flags) with the ``[phases]`` section available.

The one way titan_phases parses a job: the trainer's input check, ``python -m
titan_phases.prepare`` and the ``titan-phases`` CLI all call :func:`parse_job_config`. Unlike
torchtitan's own parsing, which stops at the first key it does not know and passes TOML values
on without looking at their types, every unknown key of the job TOML and every value that is
not of its field's type (``steps = "40"``) is collected (:class:`UnknownKey`, with a close match
or the expected type) and left out, so that the checks after parsing still run and the user
gets every problem at once. Command-line flags are converted and checked by tyro.

**Limitations** (private torchtitan API this module relies on; check on upgrades)
``ConfigManager._dict_to_dataclass`` is overridden to collect these keys; torchtitan 0.2.2
calls it once on the whole TOML before tyro applies the command line.
``_maybe_add_custom_config`` and ``_validate_config`` are wrapped to turn the errors a user's
mistake causes there (a custom config module that cannot be imported, an old
``tokenizer.model`` path) into ValueErrors.
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
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchtitan.config import ConfigManager, JobConfig
from torchtitan.tools.logging import logger as torchtitan_logger

from titan_phases.data.assets import cache_root, tokenizer_dir

from .toml_writer import as_written
from .typecheck import describe, fits

CUSTOM_CONFIG_MODULE = "titan_phases.config.job_config"

_CONFIG_FILE_FLAGS = ("--job.config_file", "--job.config-file")
_CUSTOM_MODULE_FLAGS = ("--job.custom_config_module", "--job.custom-config-module")
_SCHEDULE_FILE_FLAGS = ("--phases.schedule_file", "--phases.schedule-file")


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
        raise JobConfigFileError(f"{path}: {exc.strerror}") from None


@dataclass(frozen=True)
class UnknownKey:
    """A key of the job TOML that is left out: no config section has it, or (``expected`` set)
    its value is not of the field's type."""

    file: str
    line: int | None
    key: str
    """Dotted, e.g. ``phases.restore_bset``."""
    suggestion: str | None
    expected: str | None = None
    """The field's type in words ("an integer"), for a value of another type."""
    value: Any = None
    fix: str | None = None
    """What to do about a value of another type."""

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    @property
    def message(self) -> str:
        if self.expected is not None:
            return f"expected {self.expected}, got {as_written(self.value)}"
        return "no config section has this key"

    @property
    def hint(self) -> str:
        if self.fix is not None:
            return self.fix
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


_Found = list[tuple[tuple[str, ...], str, dict[str, Any]]]
"""(table path, key, the other fields of its UnknownKey) of each key left out."""


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # a user's config module with unresolvable annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _mistyped(key: str, value: Any, hint: Any) -> dict[str, Any]:
    """The UnknownKey fields for ``key = value`` where ``hint`` is the field's type."""
    if dataclasses.is_dataclass(hint):
        expected, fix = f"a table [{key}]", f"write the keys of [{key}] under a [{key}] header"
    elif typing.get_origin(hint) is typing.Literal:
        expected, fix = describe(hint), "use one of these, or remove the key to use the default"
    else:
        expected = describe(hint)
        fix = f"write {expected}, or remove the key to use the default"
        if isinstance(value, str):
            fix += " (a quoted value is a string in TOML)"
    return {"suggestion": None, "expected": expected, "value": value, "fix": fix}


def _unusable_keys(
    cls: type, data: dict[str, Any], path: tuple[str, ...], found: _Found
) -> dict[str, Any]:
    """``data`` without the keys ``cls`` (a config dataclass) has no field for and without the
    values that are not of their field's type, recursively."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    types = _field_types(cls)
    kept = {}
    for key, value in data.items():
        field = known.get(key)
        hint = types.get(key, Any)
        if field is None:
            close = difflib.get_close_matches(key, list(known), n=1)
            found.append((path, key, {"suggestion": ".".join((*path, close[0])) if close
                                      else None}))
        elif dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kept[key] = _unusable_keys(hint, value, (*path, key), found)
        elif dataclasses.is_dataclass(hint) or not fits(value, hint):
            found.append((path, key, _mistyped(key, value, hint)))
        else:
            kept[key] = value
    return kept


class _CollectingConfigManager(ConfigManager):
    """torchtitan's ConfigManager, collecting unknown and mistyped TOML keys instead of stopping
    at the first or passing them on."""

    def __init__(self, config_file: str | None) -> None:
        super().__init__()
        self.config_file = config_file
        self.unknown: list[UnknownKey] = []
        self.merged_cls: type = self.config_cls
        """The config class with the custom config module's sections, once parsing chose it."""

    def _dict_to_dataclass(self, cls: Any, data: dict[str, Any]) -> Any:
        if self.unknown or self.config_file is None or not dataclasses.is_dataclass(cls):
            return super()._dict_to_dataclass(cls, data)
        found: _Found = []
        data = _unusable_keys(cls, data, (), found)
        if found:
            with open(self.config_file, encoding="utf-8", errors="replace") as f:
                text = f.read()
            self.unknown = [
                UnknownKey(self.config_file, _line_of(text, path, k), ".".join((*path, k)),
                           **fields)
                for path, k, fields in found
            ]
        return super()._dict_to_dataclass(cls, data)

    def _maybe_add_custom_config(
        self, args: list[str], toml_values: dict[str, Any] | None
    ) -> type:
        try:
            self.merged_cls = super()._maybe_add_custom_config(args, toml_values)
            return self.merged_cls
        except Exception as exc:  # importing runs the module's code: report whatever it raises
            job = (toml_values or {}).get("job", {})
            name = _flag_value(args, _CUSTOM_MODULE_FLAGS) or (
                job.get("custom_config_module") if isinstance(job, dict) else None)
            raise ValueError(
                f"{self._where('job.custom_config_module')}: {name!r} cannot be used as a "
                f"custom config module ({type(exc).__name__}: {exc}); it must be importable "
                f"and define JobConfig, e.g. {CUSTOM_CONFIG_MODULE!r}"
            ) from None

    def _validate_config(self) -> None:
        try:
            super()._validate_config()
        except Exception as exc:
            # torchtitan raises a bare Exception for an hf_assets_path that names the old
            # tokenizer.model file; anything else is not a user's mistake.
            if "old tokenizer.model" not in str(exc):
                raise
            raise ValueError(
                f"{self._where('model.hf_assets_path')} = "
                f"{self.config.model.hf_assets_path!r} is the old tokenizer.model file; name "
                "the directory of the HF tokenizer files (tokenizer.json, ...) instead"
            ) from None

    def _where(self, key: str) -> str:
        return f"{self.config_file}: {key}" if self.config_file else key


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
        raise CommandLineError(_tyro_error(captured.getvalue())) from None


# A flag as tyro prints it, with "-" between words (``--phases.lr-scale``).
_FLAG = re.compile(r"--[A-Za-z][\w.-]*")


def _tyro_error(text: str) -> str:
    """tyro's error box, as torchtitan's flags are written (``--phases.lr_scale``), without its
    closing pointer to the running program's --help: for titan-phases or torchrun that is not
    where torchtitan's flags are listed. The pointer is last and may wrap over several lines."""
    lines = text.rstrip().splitlines()
    end = next((i for i, line in enumerate(lines) if "For full helptext" in line), len(lines))
    lines = lines[:end]
    while lines and not lines[-1].strip(" -\u2500\u2501"):  # the rule above the pointer
        lines.pop()
    lines = [_FLAG.sub(lambda m: "--" + m.group()[2:].replace("-", "_"), line).rstrip()
             for line in lines]
    lines.append("Every flag: python -m titan_phases.train --job.config_file JOB.toml --help")
    return "\n".join(lines)


class UnknownKeysError(ValueError):
    """The job TOML sets keys that no config section has, or values of the wrong type."""

    def __init__(self, unknown: list[UnknownKey]) -> None:
        self.unknown = unknown
        super().__init__("unusable keys in the job config:\n" + _listed(unknown))


def _listed(unknown: list[UnknownKey]) -> str:
    return "\n".join(f"  - {u.where}: {u.key}: {u.message} -> {u.hint}" for u in unknown)


@dataclass(frozen=True)
class ConfigNotice:
    """Something the parsed job does differently from what its TOML says, on the command line's
    word: reported as a warning, the job runs."""

    file: str
    key: str
    """Dotted, e.g. ``phases.schedule``."""
    message: str


def _field_type(cls: type, path: list[str]) -> Any:
    """The type of the config field at ``path`` (``["checkpoint", "enable"]``), or None."""
    hint: Any = cls
    for name in path:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = _field_types(hint).get(name)
    return hint


def _switch_hints(config_cls: type, args: list[str]) -> list[str]:
    """How to write each boolean flag of ``args`` that was given a value (``--checkpoint.enable
    false``): tyro's switches take none, and it reports only the stray value."""
    hints = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or "." not in name:
            continue
        if not eq:
            if i + 1 == len(args) or args[i + 1].startswith("--"):
                continue
            value = args[i + 1]
        *sections, field = name[2:].replace("-", "_").split(".")
        if _field_type(config_cls, [*sections, field]) is not bool:
            continue
        flag = "--" + ".".join((*sections, field))
        off = "--" + ".".join((*sections, f"no-{field}"))
        hints.append(f"{flag} is a switch and takes no value (got {value!r}): write {flag} to "
                     f"turn it on, {off} to turn it off")
    return hints


def _schedule_file_replaces_inline(
    args: list[str], job_config: JobConfig, config_file: str | None
) -> ConfigNotice | None:
    """Drop the TOML's inline ``[phases.schedule]`` when the command line names a schedule file:
    the notice, or None when nothing is replaced. The TOML's own schedule_file next to an inline
    schedule, or ``--phases.schedule.*`` flags next to ``--phases.schedule_file``, stay both
    set, for the schedule check to refuse."""
    schedule_file = _flag_value(args, _SCHEDULE_FILE_FLAGS)
    phases = getattr(job_config, "phases", None)
    if not schedule_file or config_file is None or not getattr(phases, "schedule", None):
        return None
    written = _read_toml(config_file).get("phases", {})
    if not isinstance(written, dict) or written.get("schedule_file") or any(
        arg.startswith("--phases.schedule.") for arg in args
    ):
        return None
    phases.schedule = {}
    return ConfigNotice(
        config_file, "phases.schedule",
        f"the inline [phases.schedule] is replaced by --phases.schedule_file "
        f"{schedule_file!r}, given on the command line",
    )


def written_keys(args: list[str], section: str) -> list[str]:
    """The keys of ``[section]`` the job sets: in its TOML (a table written empty counts as
    ``section``) or as ``--section.*`` flags, dotted, in that order, each once."""
    keys: dict[str, None] = {}
    config_file = _flag_value(args, _CONFIG_FILE_FLAGS)
    table = _read_toml(config_file).get(section) if config_file else None
    if isinstance(table, dict):
        keys.update(dict.fromkeys([f"{section}.{key}" for key in table] or [section]))
    elif table is not None:
        keys[section] = None
    for arg in args:
        name = arg.partition("=")[0]
        if name.startswith(f"--{section}."):
            field = name[len(section) + 3:].split(".")[0].replace("-", "_")
            keys[f"{section}.{field.removeprefix('no_')}"] = None
    return list(keys)


def names_custom_config_module(args: list[str]) -> bool:
    """Whether the job names a custom config module itself (TOML or command line), rather than
    getting :data:`CUSTOM_CONFIG_MODULE` from :func:`with_phases_section`."""
    if _flag_value(args, _CUSTOM_MODULE_FLAGS):
        return True
    config_file = _flag_value(args, _CONFIG_FILE_FLAGS)
    job = _read_toml(config_file).get("job", {}) if config_file else {}
    return isinstance(job, dict) and bool(job.get("custom_config_module"))


def parse_job_config(
    args: list[str],
    require_phases: bool = True,
    unknown_keys: list[UnknownKey] | None = None,
    notices: list[ConfigNotice] | None = None,
) -> JobConfig:
    """Parse torchtitan-style arguments (``--job.config_file X --section.key value ...``).

    Adds ``--job.custom_config_module titan_phases.config.job_config`` unless the arguments or the
    job TOML already name a custom config module, so that a job TOML with a ``[phases]`` section
    parses even without the ``[job] custom_config_module`` line (torchtitan's own parsing on the
    training ranks does not add it: :func:`names_custom_config_module` tells whether it is
    needed). A module named by the user must itself define ``phases`` (e.g. by subclassing this
    package's ``JobConfig``), unless ``require_phases`` is false (a job run on torchtitan's stock
    Trainer).

    Keys of the job TOML that no section has, and values that are not of their field's type,
    are left out and appended to ``unknown_keys`` when a list is given (so that the caller can
    go on checking and report them with the rest); without one they raise
    :class:`UnknownKeysError`.

    A ``--phases.schedule_file`` on the command line replaces an inline ``[phases.schedule]`` of
    the job TOML (the job config returned has none); a :class:`ConfigNotice` saying so is
    appended to ``notices`` when a list is given.

    Raises:
        ValueError: the resulting config has no ``phases`` section, the custom config module
            cannot be imported, or ``model.hf_assets_path`` names an old ``tokenizer.model``.
        JobConfigFileError: the job TOML cannot be read or is malformed.
        UnknownKeysError: see above.
        CommandLineError: tyro rejected a flag; the message is tyro's (with how to write a
            boolean flag that was given a value), followed by the job TOML's unusable keys
            found before.
        SystemExit: ``--help`` (tyro printed it).
    """
    args = with_phases_section(args)
    manager = _CollectingConfigManager(_flag_value(args, _CONFIG_FILE_FLAGS))
    try:
        job_config = _parse_capturing_tyro(manager, args)
    except CommandLineError as exc:
        # tyro's box, then the hints, then the pointer to every flag (its last line).
        *box, pointer = str(exc).splitlines()
        message = "\n".join([*box, *_switch_hints(manager.merged_cls, args), pointer])
        if manager.unknown:
            message += f"\nand the job config has these problems too:\n{_listed(manager.unknown)}"
        raise CommandLineError(message) from None
    if manager.unknown:
        if unknown_keys is None:
            raise UnknownKeysError(manager.unknown)
        unknown_keys.extend(manager.unknown)
    if require_phases and not hasattr(job_config, "phases"):
        raise ValueError(
            f"job.custom_config_module = {job_config.job.custom_config_module!r} defines no "
            f"'phases' section; use {CUSTOM_CONFIG_MODULE!r} or subclass its JobConfig."
        )
    notice = _schedule_file_replaces_inline(args, job_config, manager.config_file)
    if notice is not None and notices is not None:
        notices.append(notice)
    return job_config
