"""The config loader, `load_config(path, env=..., flags=...)`.

The properties, for any file contents, environment and flags:
- it returns a Config or raises ConfigError, never anything else, and never hangs: aliases
  that multiply a document ("billion laughs") are refused or read in bounded time;
- a ConfigError lists at least one problem, each a readable line that starts with where the
  value came from (`FILE:LINE:COLUMN`, `FILE`, `environment variable NAME`, `flag --NAME`) and,
  for a value that fails validation, names its key path;
- a Config it returns can be shown (`effective_config`, which the config digest and the reload
  diff use) and loads again from what is shown.

Bytes format (atheris, corpus): the YAML file's contents, read with an empty environment.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from sidecar.config import (
    Config,
    ConfigError,
    KeyPath,
    effective_config,
    format_duration,
    format_rate,
    load_config,
    parse_duration,
    parse_rate,
)
from tests.fuzz.known_bugs import hit, is_open, raised_in

# Where a bomb starts: a dozen alias references can already multiply a document a millionfold.
_ALIAS = re.compile(r"\*[^\s,\[\]{}]+")
_BOMB_ALIASES = 12


@cache
def _scratch() -> Path:
    directory = tempfile.TemporaryDirectory(prefix="sidecar-fuzz-config-")
    _KEEP.append(directory)  # removed when the process exits
    return Path(directory.name)


_KEEP: list[tempfile.TemporaryDirectory[str]] = []


def config_file(text: bytes) -> Path:
    path = _scratch() / "sidecar.yaml"
    path.write_bytes(text)
    return path


def _origins(path: Path) -> tuple[str, ...]:
    return (f"{path}:", "environment variable SIDECAR_", "flag --", "default: ")


def _classify(exc: BaseException, text: str) -> None:
    """Report an exception one of the listed config bugs is known to raise."""
    if isinstance(exc, TypeError) and "unhashable type" in str(exc) and raised_in(exc, "sidecar/config.py"):
        hit("config-unhashable-key", str(exc))
    if isinstance(exc, RecursionError):
        hit("config-recursion")
    if isinstance(exc, OverflowError) and raised_in(exc, "sidecar/config.py"):
        hit("config-infinite-number", str(exc))
    if raised_in(exc, "yaml/constructor.py") and not isinstance(exc, (ConfigError, AssertionError)):
        hit("config-yaml-construct", f"{exc.__class__.__name__}: {str(exc)[:120]}")


def check_load(
    text: bytes,
    env: Mapping[str, str] | None = None,
    flags: Mapping[KeyPath, Any] | None = None,
) -> Config | None:
    decoded = text.decode("utf-8", "replace")
    for source in (decoded, *(env or {}).values()):
        if is_open("config-alias-bomb") and len(_ALIAS.findall(source)) >= _BOMB_ALIASES and "&" in source:
            hit("config-alias-bomb", f"{len(_ALIAS.findall(source))} alias references")
    path = config_file(text)
    try:
        config = load_config(path, env=dict(env or {}), flags=dict(flags or {}))
    except ConfigError as error:
        check_problems(error, path)
        return None
    except Exception as exc:
        _classify(exc, decoded)
        raise
    assert isinstance(config, Config)
    check_shown(config)
    return config


def check_problems(error: ConfigError, path: Path) -> None:
    problems = error.problems
    assert problems and all(isinstance(problem, str) and problem.strip() for problem in problems), problems
    assert str(error) == "\n".join(problems)
    origins = _origins(path)
    for problem in problems:
        # "ORIGIN: KEY.PATH: what was expected", or for the file as a whole "FILE: what is wrong".
        assert problem.startswith(origins), problem
        if "unknown key" in problem and "expected one of: " not in problem:
            hit("config-unknown-key-in-item", problem)
            raise AssertionError(f"an unknown key without the valid keys: {problem!r}")
        assert any(word in problem for word in _SAYS_WHAT_IS_WRONG), problem
        located = re.match(rf"{re.escape(str(path))}:\d+:\d+: (.*)", problem, re.DOTALL)
        # "FILE:LINE:COLUMN: expected ..." is about the document there (a top-level list, a refused
        # alias bomb); anything else at a position names the key it is about.
        if located and not located.group(1).startswith("expected"):
            assert ": " in located.group(1), f"no key path in {problem!r}"


_SAYS_WHAT_IS_WRONG = ("expected", "required key is missing", "not valid YAML", "cannot read config file", "not found")


def check_shown(config: Config) -> None:
    """What check-config and /-/config show must be producible, and load back to the same config."""
    try:
        shown = effective_config(config)
    except PydanticSerializationError as exc:
        if "OverflowError" in str(exc):
            hit("config-infinite-number", str(exc)[:160])
        raise
    flags = {(key,): value for key, value in shown.items()}
    try:
        again = load_config(None, env={}, flags=flags)
    except ConfigError:
        _hit_inexact(config)
        raise
    if again != config:
        _hit_inexact(config)
    assert again == config, "the config shown must load back to the same config"
    assert effective_config(again) == shown


def _hit_inexact(config: Config) -> None:
    durations = _inexact(config, "parse_duration", format_duration, parse_duration)
    if durations:
        hit("config-duration-shown-inexactly", ", ".join(durations))
    rates = _inexact(config, "parse_rate", format_rate, parse_rate)
    if rates:
        hit("config-rate-shown-inexactly", ", ".join(rates))


def _reads_back(value: float, show: Callable[[float], str], parse: Callable[[object], float]) -> bool:
    try:
        return parse(show(value)) == value
    except ValueError:
        return False


def _inexact(config: BaseModel, parser: str, show: Callable[[float], str], parse: Callable[[object], float],
             prefix: str = "") -> list[str]:  # fmt: skip
    """Fields read by `parser` whose shown text does not read back to their value."""
    found: list[str] = []
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        children = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        for child in children:
            if isinstance(child, BaseModel):
                found += _inexact(child, parser, show, parse, f"{prefix}{name}.")
        if parser in repr(info.annotation) + repr(info.metadata) and isinstance(value, float):
            if math.isfinite(value) and not _reads_back(value, show, parse):
                found.append(f"{prefix}{name}={value!r} shown as {show(value)!r}")
    return found


def check_bytes(data: bytes) -> None:
    check_load(data)
