"""Loading the config: layering, units, and errors that say where and what."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import (
    Config,
    ConfigError,
    format_duration,
    load_config,
    parse_duration,
    parse_listen_address,
    parse_upstream_address,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def problems(path: Path | None, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return caught.value.problems


def test_defaults_need_no_file_and_no_services():
    config = load_config(None, env={})
    assert str(config.upstream.url) == "http://127.0.0.1:8000"
    assert config.proxy.listen.is_loopback and config.admin.listen.is_loopback
    assert config.upstream.response_start_timeout == 600
    assert config.proxy.max_request_body == 64 * 1024 * 1024
    assert config.upstream.health.enabled


def test_unknown_key_and_wrong_type_are_both_reported_with_their_paths(tmp_path):
    path = write(tmp_path, "proxy:\n  max_body: 10MiB\n  max_header_count: many\n")
    found = problems(path, env={})
    assert len(found) == 2  # in the order they appear in the file
    assert f"{path}:2:13: proxy.max_body: unknown key; expected one of:" in found[0]
    assert "(did you mean 'max_request_body'?)" in found[0]
    assert found[1] == (
        f"{path}:3:21: proxy.max_header_count: got 'many'; "
        "expected an integer"
    )


def test_unknown_section_lists_the_sections(tmp_path):
    (found,) = problems(write(tmp_path, "upstreams:\n  url: http://x:1\n"), env={})
    assert "upstreams: unknown key; expected one of: admin, audit, auth, data_dir, gpu, instance_id, limits, llm, log, metrics, proxy, rules, runtime, tracing, upstream" in found
    assert "did you mean 'upstream'" in found


def test_values_in_operator_units(tmp_path):
    path = write(
        tmp_path,
        "upstream:\n  url: unix:/run/vllm.sock\n  idle_timeout: 1m30s\n  connect_timeout: 250ms\n"
        "proxy:\n  max_request_body: 10MB\n  max_header_bytes: 16KiB\n  listen: '[::1]:9000'\n",
    )
    config = load_config(path, env={})
    assert config.upstream.url.unix_socket == "/run/vllm.sock"
    assert config.upstream.idle_timeout == 90
    assert config.upstream.connect_timeout == 0.25
    assert config.proxy.max_request_body == 10_000_000
    assert config.proxy.max_header_bytes == 16384
    assert (config.proxy.listen.host, config.proxy.listen.port, str(config.proxy.listen)) == ("::1", 9000, "[::1]:9000")


def test_environment_overrides_file_and_flags_override_both(tmp_path):
    path = write(tmp_path, "upstream:\n  url: http://127.0.0.1:1111\nproxy:\n  drain_timeout: 5s\n")
    env = {"SIDECAR_UPSTREAM__URL": "http://127.0.0.1:2222", "SIDECAR_LOG__ACCESS_LOG": "true", "HOME": "/x"}
    config = load_config(path, env=env)
    assert str(config.upstream.url) == "http://127.0.0.1:2222"
    assert config.log.access_log is True
    assert config.proxy.drain_timeout == 5
    config = load_config(path, env=env, flags={("upstream", "url"): "http://127.0.0.1:3333"})
    assert str(config.upstream.url) == "http://127.0.0.1:3333"


def test_errors_name_the_environment_variable_or_flag():
    found = problems(
        None,
        env={"SIDECAR_PROXY__DRAIN_TIMEOUT": "soon", "SIDECAR_PROXY__NOPE": "1"},
        flags={("upstream", "url"): "ftp://model"},
    )
    assert "environment variable SIDECAR_PROXY__DRAIN_TIMEOUT: proxy.drain_timeout: got 'soon'; expected a duration" in found[1]
    assert "environment variable SIDECAR_PROXY__NOPE: proxy.nope: unknown key" in found[2]
    assert found[0].startswith("flag --upstream: upstream.url: got 'ftp://model'; expected http://HOST:PORT")


def test_duplicate_keys_are_errors(tmp_path):
    (found,) = problems(write(tmp_path, "proxy:\n  drain_timeout: 5s\n  drain_timeout: 50s\n"), env={})
    assert found == f"{tmp_path / 'sidecar.yaml'}:3:3: proxy.drain_timeout: key appears twice; expected each key once"


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    (found,) = problems(write(tmp_path, "proxy:\n  listen: [unclosed\n"), env={})
    assert found.startswith(f"{tmp_path / 'sidecar.yaml'}: not valid YAML:") and "line" in found


def test_missing_file_and_non_mapping_top_level(tmp_path):
    assert problems(tmp_path / "absent.yaml", env={}) == [f"{tmp_path / 'absent.yaml'}: config file not found"]
    assert problems(write(tmp_path, "- a\n- b\n"), env={}) == [
        f"{tmp_path / 'sidecar.yaml'}:1:1: expected a mapping of keys at the top level"
    ]


def test_cross_field_rule_is_explained(tmp_path):
    (found,) = problems(write(tmp_path, "upstream:\n  health:\n    interval: 1s\n    timeout: 5s\n"), env={})
    assert "upstream.health" in found and "health.timeout (5s) must not exceed health.interval (1s)" in found


def test_empty_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), env={}) == load_config(None, env={})


@pytest.mark.parametrize(
    "text, seconds",
    [("5s", 5), ("250ms", 0.25), ("1h30m", 5400), ("2d", 172800), ("1.5", 1.5), (3, 3), (0, 0), ("1w", 604800)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "s5", "1h 30m", "-1s", True, None, "5s5"])
def test_bad_durations(text):
    if text == "5":
        assert parse_duration(text) == 5
        return
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False).map(lambda f: round(f, 3)))
def test_formatted_durations_read_back(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "text, ok",
    [("127.0.0.1:8080", True), ("0.0.0.0:0", True), ("[::1]:80", True), ("localhost:9", True),
     ("8080", False), (":8080", False), ("host:99999", False), ("a b:1", False)],
)  # fmt: skip
def test_listen_addresses(text, ok):
    if ok:
        parse_listen_address(text)
    else:
        with pytest.raises(ValueError):
            parse_listen_address(text)


def test_upstream_addresses():
    tcp = parse_upstream_address("http://10.0.0.5:8000/prefix/")
    assert (tcp.host, tcp.port, tcp.base_path, tcp.authority) == ("10.0.0.5", 8000, "/prefix", "10.0.0.5:8000")
    assert parse_upstream_address("https://model.internal").authority == "model.internal"
    assert parse_upstream_address("http://[::1]:8000").authority == "[::1]:8000"
    for bad in ("model:8000", "unix:relative.sock", "http://", "http://h:0"):
        with pytest.raises(ValueError):
            parse_upstream_address(bad)


def test_config_is_immutable():
    config = load_config(None, env={})
    with pytest.raises(Exception):
        config.proxy.drain_timeout = 1  # type: ignore[misc]
    assert isinstance(config, Config)


def test_committed_reference_matches_the_models():
    from sidecar.config import config_reference

    committed = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert committed == config_reference(), "run: sidecar config-reference > docs/configuration.md"


def test_every_key_is_described():
    from sidecar.config import config_reference

    undocumented = [line for line in config_reference().splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert undocumented == []


def test_type_errors_say_what_to_write(tmp_path):
    found = problems(write(tmp_path, "proxy: 5\nupstream:\n  health:\n    enabled: maybe\nlog:\n  access_log: [1]\n"), env={})
    assert f"{tmp_path / 'sidecar.yaml'}:4:14: upstream.health.enabled: got 'maybe'; expected true or false" in found
    assert f"{tmp_path / 'sidecar.yaml'}:1:8: proxy: got 5; expected a mapping of keys" in found
    (size,) = problems(None, env={"SIDECAR_PROXY__MAX_URL_BYTES": "big"})
    assert size.endswith("got 'big'; expected a size such as 64MiB, 10MB, 512KiB or a number of bytes")


def test_an_empty_path_means_unset_not_the_current_directory(tmp_path):
    path = write(tmp_path, 'audit:\n  checkpoint:\n    signing_key_file: ""\nauth:\n  api_keys:\n    file: ""\n')
    config = load_config(path, env={"SIDECAR_RULES__STATE_FILE": ""})
    assert config.audit.checkpoint.signing_key_file is None
    assert config.auth.api_keys.file is None
    assert config.rules.state_file is None


@pytest.mark.parametrize("token", [" ", "pw123", "0123456789abcde", " " * 20, "0123456789abcdef\n", "0123 4567 89ab cdef"])
def test_a_short_or_blank_admin_token_is_refused_without_showing_it(token):
    (found,) = problems(None, env={"SIDECAR_ADMIN__TOKEN": token})
    assert found.startswith("environment variable SIDECAR_ADMIN__TOKEN: admin: expected admin.token of at least 16 characters")
    assert "no spaces or line breaks" in found
    if token.strip():
        assert token.strip() not in found


def test_an_admin_token_of_16_characters_is_enough():
    assert load_config(None, env={"SIDECAR_ADMIN__TOKEN": "0123456789abcdef"}).admin.token == "0123456789abcdef"
    assert load_config(None, env={"SIDECAR_ADMIN__TOKEN": ""}).admin.token == ""  # unset: loopback only


def test_a_section_level_problem_reads_as_written(tmp_path):
    (health, tier) = problems(write(tmp_path, "upstream:\n  health:\n    interval: 1s\n    timeout: 5s\n"
                                              "limits:\n  default_tier: gold\n"), env={})  # fmt: skip
    assert health.endswith("upstream.health: health.timeout (5s) must not exceed health.interval (1s); "
                           "expected a shorter timeout or a longer interval")  # fmt: skip
    assert tier.endswith("limits: limits.default_tier 'gold' is not a tier in limits.tiers; "
                         "expected a tier defined there (none is)")  # fmt: skip
    (tier,) = problems(None, env={"SIDECAR_LIMITS__DEFAULT_TIER": "gold",
                                  "SIDECAR_LIMITS__TIERS": "{free: {requests: 1/s}, paid: {requests: 9/s}}"})  # fmt: skip
    assert tier.endswith("limits.default_tier 'gold' is not a tier in limits.tiers; expected one of: free, paid")
