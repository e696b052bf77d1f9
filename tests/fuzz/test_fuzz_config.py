"""Config files, environments and flags from anywhere: see tests/fuzz/targets/config.py for the properties."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import typing
from functools import cache
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from sidecar.config import Config
from tests.fuzz.known_bugs import hit, tolerating_known_bugs
from tests.fuzz.support import FUZZ_DIR, corpus_cases, fuzz_settings
from tests.fuzz.targets import config as target

# --- values: plausible ones of every kind the config takes, and junk ----------------------------

plausible = st.sampled_from([
    "5s", "250ms", "1h30m", "2m", "0", "0s", "-1s", "1e999", "5 s", "5sec", "1d2h", "90d", "3w",
    "64MiB", "1GiB", "10MB", "512KiB", "1B", "0B", "-1", "1e3", "5XB", "1e400",
    "10/s", "60/min", "10000/min", "0/s", "1.5/h", "/s",
    "http://127.0.0.1:8000", "https://model.internal", "unix:/run/model.sock", "unix:relative", "http://h:0", "http://[::1]:80/v1",
    "127.0.0.1:8080", "0.0.0.0:0", "[::1]:80", "host:99999", ":8080",
    "/health", "health", "/", "otlp", "console", "none", "tag", "keyed_hash", "fail_open", "always", "interval",
    "HS256", "RS256", "none", "request_rate", "error_ratio", "ttft_quantile", ">", "==", "debug", "json", "uvloop",
    "true", "false", "on", "no", "~", "null", "", " ", "\t", "ünï", "a\x00b", "\x1b[31m", "%s%n", "{{ $value }}",
])  # fmt: skip
scalars = st.one_of(
    plausible,
    st.booleans(),
    st.none(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 65535, 65536, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
)
junk = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)), max_leaves=8)
unknown_keys = st.one_of(st.sampled_from(["upstrem", "url ", "URL", "enable", "for_", "", "<<"]), st.text(max_size=8), st.integers(-2, 2))


def _item_model(annotation: object) -> tuple[str, type[BaseModel]] | None:
    """("list" | "dict", the section) for list[Section] and dict[str, Section] fields."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "list", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return "dict", args[1]
    return None


durations = st.one_of(st.sampled_from(["5s", "250ms", "1h30m", "0", "0s", "90d", "1e999", "-1s", "5 s"]), st.floats(0, 1e6),
                      st.sampled_from([float("inf"), 1e308, 0.001]))  # fmt: skip
sizes = st.one_of(st.sampled_from(["64MiB", "1GiB", "10MB", "512KiB", "0", "1e3", "5XB", "1KiB"]), st.integers(0, 2**40))
rates = st.one_of(st.sampled_from(["10/s", "60/min", "10000/min", "1000/h", "0/s", "1e3/s"]), st.floats(0, 1e6), st.just(float("inf")))
_BY_VALIDATOR = {
    "parse_duration": durations,
    "parse_rate": rates,
    "parse_listen_address": st.sampled_from(["127.0.0.1:8080", "127.0.0.1:0", "0.0.0.0:9180", "[::1]:80", "localhost:1", "host:99999"]),
    "parse_upstream_address": st.sampled_from(["http://127.0.0.1:8000", "https://m.internal/v1", "unix:/run/m.sock", "unix:x", "ftp://x"]),
    "_url_path": st.sampled_from(["/health", "/", "/-/ready", "health", "/a b"]),
}


def _bounds(metadata: list[object]) -> tuple[float | None, float | None]:
    low = high = None
    for item in metadata:
        for name in ("ge", "gt"):
            if getattr(item, name, None) is not None:
                low = getattr(item, name)
        for name in ("le", "lt"):
            if getattr(item, name, None) is not None:
                high = getattr(item, name)
    return low, high


def _validated(metadata: typing.Iterable[object]) -> st.SearchStrategy[object] | None:
    for item in metadata:
        name = getattr(getattr(item, "func", None), "__name__", "")
        if name in _BY_VALIDATOR:
            return _BY_VALIDATOR[name]
    return None


def typed_values(info: object) -> st.SearchStrategy[object]:
    """Values of the kind the field takes, its bounds and their edge cases included."""
    annotation = getattr(info, "annotation", None)
    metadata = list(getattr(info, "metadata", []))
    if (validated := _validated(metadata)) is not None:
        return validated
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    text = str(annotation)
    low, high = _bounds(metadata)
    pattern = next((getattr(item, "pattern", None) for item in metadata if getattr(item, "pattern", None)), None)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if "ByteSize" in text:
        return sizes
    if annotation is bool:
        return st.booleans()
    if annotation is int or text == "int | None":
        low_int = int(low) if low is not None else -5
        high_int = int(high) if high is not None else 10**6
        return st.one_of(st.integers(low_int, high_int), st.sampled_from([low_int - 1, high_int + 1, 2**63]))
    if annotation is float or text == "float | None":
        inside = st.floats(low if low is not None else -1e6, high if high is not None else 1e6, allow_nan=False)
        return st.one_of(inside, inside, st.sampled_from([float("nan"), float("inf"), -0.0]))
    if annotation is str and pattern:
        return st.one_of(st.from_regex(pattern.strip("^$"), fullmatch=True).map(lambda value: value[:20]), plausible)
    if annotation is str:
        return st.one_of(plausible, st.text(max_size=12))
    if "Path" in text:
        return st.sampled_from(["/tmp/fuzz/x", "relative/file", "", "/dev/null"])
    if origin is dict:
        return st.dictionaries(st.text("abc_", min_size=1, max_size=6), st.one_of(plausible, st.text(max_size=6)), max_size=2)
    if origin is list and args:
        item = args[0]
        if typing.get_origin(item) is typing.Literal:
            return st.lists(st.sampled_from(typing.get_args(item)), max_size=3)
        validated = _validated(typing.get_args(item)[1:]) if typing.get_origin(item) is typing.Annotated else None
        return st.lists(validated if validated is not None else st.one_of(plausible, st.integers(0, 3)), max_size=3)
    if "Duration" in text or "float" in text:
        return durations
    return scalars


@cache
def sections(model: type[BaseModel], dirty: bool = True) -> st.SearchStrategy[dict[object, object]]:
    """Mappings shaped like `model`: a random subset of its real keys, nested sections followed
    down, each value of the field's kind (with its edge cases). Dirty ones also put junk where
    sections and values go and, now and then, an unknown key; clean ones mostly load."""
    fields: dict[object, st.SearchStrategy[object]] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            value: st.SearchStrategy[object] = sections(annotation, dirty)
        elif (item := _item_model(annotation)) is not None:
            kind, item_model = item
            if kind == "list":
                value = st.lists(sections(item_model, dirty), max_size=3)
            else:
                value = st.dictionaries(st.sampled_from(["free", "paid", "default", ""]), sections(item_model, dirty), max_size=2)
        else:
            value = typed_values(info)
        fields[info.alias or name] = st.one_of(value, value, value, value, junk) if dirty else value
    extra = st.one_of(st.just({}), st.just({}), st.just({}), st.dictionaries(unknown_keys, junk, min_size=1, max_size=1))
    return st.builds(
        lambda chosen, unknown: {**chosen, **unknown},
        st.fixed_dictionaries({}, optional=fields),  # type: ignore[arg-type]
        extra if dirty else st.just({}),
    )


def yaml_text(document: object) -> bytes:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogateescape")


# --- raw YAML: what a serialiser never writes --------------------------------------------------

_FRAGMENTS = [
    "upstream:", "  url: http://x:1", "proxy:", "  listen: ", "rules:", "  alerts:", "  - name: A", "    for: 5m", "a: &a [1, 2]",
    "b: *a", "c: &c {x: 1}", "d: {<<: *c, y: 2}", "<<: *c", "? [a, b]", ": 1", "? {k: v}", "e: !!int x", "f: !!bool maybe",
    "g: !!float x", "h: !!timestamp x", "i: !foo x", "j: !!binary '%'", "k: !!set {a, b}", "l: !!python/object:os.system x",
    "m: !!str 5", "n: .inf", "o: -.inf", "p: .nan", "q: 0x1F", "r: 0o17", "s: 1_000", "t: 2001-12-14", "u: ~", "v: |",
    "  literal", "w: >-", "  folded", "---", "...", "%YAML 1.1", "x: 'unterminated", 'y: "\\ud800"', "z: [[[[", "\t tab: 1",
    "upstream: {url: http://x:1, url: http://y:2}", "gpu: {nvml: {interval: .inf}}", "upstream:\n  health:\n    timeout: .inf",
    "rules: {slos: [{name: s, objective: 99, period: .inf}]}", "limits: {tiers: {t: {requests: .inf}}}",
]  # fmt: skip
raw_yaml = st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map(lambda lines: "\n".join(lines).encode())
raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"\xff\xfe\x00", b"\xef\xbb\xbfupstream: {}", b"a: \x00", b"\x80", b"a: b\r\n\rc: d"]),
)
files = st.one_of(sections(Config, dirty=False).map(yaml_text), sections(Config).map(yaml_text), raw_yaml, raw_bytes)


@cache
def leaf_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, prefix + (name,))
            else:
                paths.append(prefix + (name,))

    walk(Config, ())
    return paths


env_values = st.one_of(
    plausible,
    st.text(max_size=12),
    st.sampled_from(["[a, b]", "{a: 1}", "[/health, /x]", "{[a]: 1}", "{a: !!int x}", "&a [*a]", "{a: &a {b: *a}}", "[" * 400,
                     "{free: {requests: 10/s}}", "{x: .inf}", "[1, 2", "{"]),  # fmt: skip
)
environments = st.dictionaries(
    st.one_of(st.sampled_from(leaf_paths()).map(lambda path: "SIDECAR_" + "__".join(path).upper()),
              st.sampled_from(["SIDECAR_", "SIDECAR___", "SIDECAR_CONFIG", "SIDECAR_UPSTREAM", "SIDECAR_upstream__url", "PATH"])),  # fmt: skip
    env_values,
    max_size=4,
)
flag_sets = st.dictionaries(st.sampled_from(leaf_paths()), st.one_of(plausible, st.integers(), st.booleans()), max_size=3)


@fuzz_settings(120)
@given(files)
def test_any_file_gives_a_config_or_readable_problems(text: bytes) -> None:
    tolerating_known_bugs(target.check_load, text)


@fuzz_settings(60)
@given(files, environments, flag_sets)
def test_file_environment_and_flags_together(text: bytes, env: dict[str, str], flags: dict[tuple[str, ...], object]) -> None:
    tolerating_known_bugs(target.check_load, text, env, flags)


@pytest.mark.parametrize("path", corpus_cases("config"))
def test_corpus(path: Path) -> None:
    target.check_bytes(path.read_bytes())


# --- alias bombs: run in a child process with a deadline and a memory cap ----------------------

LAUGHS = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]" for level in range(1, 10)]
) + "\n"  # fmt: skip
_BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from sidecar.config import ConfigError, load_config
    try:
        load_config(sys.argv[1], env={})
    except ConfigError as error:
        print("refused:", error.problems[0][:200])
    else:
        print("loaded")
    """
)


def load_in_child(path: Path, timeout: float) -> tuple[int | None, str]:
    """(exit status or None for a timeout, output) of loading `path` in a fresh interpreter."""
    try:
        done = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, str(path)], capture_output=True, text=True,
                              timeout=timeout, cwd=FUZZ_DIR.parents[1])  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, ""
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(60)
def test_a_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    # Thirty seconds: a fresh interpreter imports the config module in half a second (a few on a
    # busy machine); refusing the file takes milliseconds, and expanding it would take days.
    status, output = load_in_child(path, timeout=30)
    if status is None or "MemoryError" in output:
        hit("config-alias-bomb", "no answer within 30 s" if status is None else "out of memory")
    assert status == 0 and output.startswith("refused:"), output


# --- regressions: the smallest inputs of what fuzzing found (all fixed) -------------------------


@pytest.mark.parametrize("text", [b"[a, b]: 1\n", b"? {a: 1}\n: 2\n", b"upstream: {[x]: 1}\n"])
def test_a_key_that_is_a_collection_is_a_problem(text: bytes) -> None:
    target.check_load(text)


@pytest.mark.parametrize("text", [b"data_dir: !!int x\n", b"data_dir: !!bool maybe\n", b"data_dir: !!timestamp x\n",
                                  b"data_dir: !foo x\n", b"data_dir: !!python/object:os.system x\n", b"upstream:\n  <<: 1\n"])  # fmt: skip
def test_a_value_yaml_cannot_build_is_a_problem(text: bytes) -> None:
    target.check_load(text)


def test_an_environment_value_yaml_cannot_build_is_a_problem() -> None:
    target.check_load(b"", env={"SIDECAR_TRACING__RESOURCE_ATTRIBUTES": "{a: !!int x}"})


@pytest.mark.parametrize("text", [b"rules: {alerts: &a [*a]}\n", b"a: " + b"[" * 600 + b"]" * 600 + b"\n"])
def test_recursive_or_deep_yaml_is_a_problem(text: bytes) -> None:
    target.check_load(text)


def test_a_recursive_environment_value_is_a_problem() -> None:
    target.check_load(b"", env={"SIDECAR_TRACING__RESOURCE_ATTRIBUTES": "{x: &a {y: *a}}"})


@pytest.mark.parametrize("text", [b"limits: {tiers: {free: {request: 10/s}}}\n",
                                  b"rules: {alerts: [{name: A, signal: request_rate, threshold: 1, treshold: 2}]}\n"])  # fmt: skip
def test_an_unknown_key_in_an_entry_lists_the_valid_keys(text: bytes) -> None:
    target.check_load(text)


@pytest.mark.parametrize("text", [b"upstream: {health: {timeout: .inf}}\n", b"rules: {slos: [{name: s, objective: 99, period: .inf}]}\n",
                                  b"upstream: {idle_timeout: .inf}\n", b"limits: {tiers: {t: {requests: .inf}}}\n"])  # fmt: skip
def test_an_infinite_duration_or_rate_is_a_problem(text: bytes) -> None:
    target.check_load(text)


@pytest.mark.parametrize("text", [b"upstream: {connect_timeout: 1.0e-10}\n", b"proxy: {drain_timeout: 0.0001234567}\n"])
def test_a_shown_duration_reads_back_to_the_same_value(text: bytes) -> None:
    target.check_load(text)


@pytest.mark.parametrize("text", [b"limits: {tiers: {free: {requests: 138889.40625}}}\n", b"limits: {tiers: {free: {tokens: 1.0e-7}}}\n"])
def test_a_shown_rate_reads_back_to_the_same_value(text: bytes) -> None:
    # Found by fuzzing, fixed in f1dad79: shown as "500001862/h" (another rate) and "1e-07/s" (refused).
    target.check_load(text)
