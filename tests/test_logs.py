from __future__ import annotations

import io
import json
import logging

from sidecar.logs import JsonFormatter, LogPipeline, TextFormatter


def record(message: str, **extra) -> logging.LogRecord:
    made = logging.LogRecord("sidecar.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_use_ecs_names_and_keep_extras():
    line = JsonFormatter().format(record("upstream down", upstream="http://x", failures=3))
    document = json.loads(line)
    assert document["log.level"] == "warning"
    assert document["log.logger"] == "sidecar.test"
    assert document["message"] == "upstream down"
    assert (document["upstream"], document["failures"]) == ("http://x", 3)
    assert document["@timestamp"].endswith("Z")


def test_exceptions_become_error_fields():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        made = record("failed")
        made.exc_info = sys.exc_info()
    document = json.loads(JsonFormatter().format(made))
    assert (document["error.type"], document["error.message"]) == ("ValueError", "boom")
    assert "Traceback" in document["error.stack_trace"]


def test_client_supplied_newlines_cannot_forge_lines():
    forged = "GET /\r\n2026-01-01T00:00:00.000Z INFO sidecar: admin login ok"
    assert "\n" not in JsonFormatter().format(record(forged, path=forged))
    text = TextFormatter().format(record(forged, path=forged))
    assert "\n" not in text and "\r" not in text


def test_pipeline_writes_through_its_thread_and_flushes_on_stop():
    stream = io.StringIO()
    pipeline = LogPipeline("info", "json", stream)
    pipeline.start()
    try:
        logging.getLogger("sidecar.test").info("hello", extra={"n": 1})
        logging.getLogger("sidecar.test").debug("hidden")
    finally:
        pipeline.stop()
        logging.getLogger().removeHandler(pipeline._output)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line["n"]) for line in lines] == [("hello", 1)]
