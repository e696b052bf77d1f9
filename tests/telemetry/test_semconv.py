"""Values the semantic conventions fix: known methods, url.query redaction, the provider, the instance id."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sidecar.telemetry.instance import INSTANCE_ID_FILE, stable_instance_id
from sidecar.telemetry.semconv import gen_ai_provider, method_label, redacted_query, scheme_label


def test_known_methods_include_query():
    assert [method_label(m) for m in ("GET", "QUERY", "PATCH", "PURGE", "get", "")] == [
        "GET", "QUERY", "PATCH", "_OTHER", "_OTHER", "_OTHER"
    ]  # fmt: skip
    assert [scheme_label(s) for s in ("http", "https", "", "HTTPS")] == ["http", "https", "http", "http"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("q=OpenTelemetry&sig=abc", "q=OpenTelemetry&sig=REDACTED"),  # OpenTelemetry's own example
        ("X-Goog-Signature=a&x-goog-signature=b", "X-Goog-Signature=REDACTED&x-goog-signature=REDACTED"),
        ("api%5Fkey=k&access-token=t&client.secret=s&session_id=1&Password=p", "api%5Fkey=REDACTED&access-token=REDACTED&client.secret=REDACTED&session_id=REDACTED&Password=REDACTED"),
        ("token=a=b=c&token=&token", "token=REDACTED&token=&token"),  # the whole value; nothing to hide in none
        ("monkey=1&keyboard=2&max_tokens=3&tokens=4&page=5", "monkey=1&keyboard=2&max_tokens=3&tokens=4&page=5"),
        ("", ""),
    ],
)
def test_query_values_of_credential_keys_are_redacted_keys_kept(query: str, expected: str):
    assert redacted_query(query) == expected


def test_the_provider_is_configured_or_unknown():
    assert gen_ai_provider("vllm") == "vllm"
    assert gen_ai_provider("") == "unknown"


def test_the_instance_id_is_made_once_and_kept(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    made = stable_instance_id(first)
    assert uuid.UUID(made).version == 4
    assert stable_instance_id(first) == made
    assert (first / INSTANCE_ID_FILE).read_text() == made + "\n"
    assert [p.name for p in first.iterdir()] == [INSTANCE_ID_FILE]  # nothing left aside
    assert stable_instance_id(second) != made  # another data directory, another instance


def test_an_instance_id_file_without_a_uuid_is_an_error_naming_it(tmp_path: Path):
    (tmp_path / INSTANCE_ID_FILE).write_text("not-a-uuid\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / INSTANCE_ID_FILE}: expected a UUID .* found 'not-a-uuid'"):
        stable_instance_id(tmp_path)


def test_an_unwritable_directory_is_an_error_naming_the_file(tmp_path: Path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=rf"{missing / INSTANCE_ID_FILE}: cannot keep"):
        stable_instance_id(missing)
