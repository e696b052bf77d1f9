"""Structured logs that never block the event loop.

Records go through a queue to a listener thread that formats and writes
them, so a slow terminal or a full pipe cannot stall request handling. JSON
lines use ECS field names (`@timestamp`, `log.level`, `log.logger`,
`error.*`), so the same pipeline that ships the audit index can ship these.
Values are serialised as JSON, never formatted into the line, so a CR/LF in a
client-supplied value cannot forge a log entry. Context goes in `extra={...}`.
"""

from __future__ import annotations

import json
import re
import logging
import logging.handlers
import queue
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from sidecar.exchange import Exchange

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _iso_utc(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES}


_UNSAFE_IN_LINE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "@timestamp": _iso_utc(record.created),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
        }
        document.update(_extras(record))
        if record.exc_info and record.exc_info[0] is not None:
            kind, value, tb = record.exc_info
            document["error.type"] = kind.__name__
            document["error.message"] = str(value)
            document["error.stack_trace"] = "".join(traceback.format_exception(kind, value, tb))
        line = json.dumps(document, default=str, ensure_ascii=False)
        # Kept readable (no \u escapes for ordinary text), except what would split a line for
        # some readers (NEL, LS, PS) or cannot be encoded at all (lone surrogates).
        return line if line.isascii() else _UNSAFE_IN_LINE.sub(_escape, line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in _extras(record).items())
        line = f"{_iso_utc(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()!s}"
        line = line.replace("\r", "\\r").replace("\n", "\\n")
        if fields:
            line = f"{line} {fields}"
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


class LogPipeline:
    """Owns the root logger's queue handler and the thread that writes records out."""

    def __init__(self, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._output = logging.StreamHandler(self._stream)
        self._listener = logging.handlers.QueueListener(self._queue, self._output, respect_handler_level=False)
        self._queue_handler = logging.handlers.QueueHandler(self._queue)
        self.configure(level, fmt)

    def configure(self, level: str, fmt: str) -> None:
        use_json = fmt == "json" or (fmt == "auto" and not self._stream.isatty())
        self._output.setFormatter(JsonFormatter() if use_json else TextFormatter())
        logging.getLogger().setLevel(level.upper())

    def start(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(self._queue_handler)
        self._listener.start()

    def stop(self) -> None:
        """Write out everything queued, then restore direct logging to the stream."""
        root = logging.getLogger()
        root.removeHandler(self._queue_handler)
        self._listener.stop()
        root.addHandler(self._output)


class AccessLog:
    """Observer writing one `sidecar.access` line per Exchange, when enabled."""

    def __init__(self, enabled: bool, scrub: Callable[[str], str] | None = None) -> None:
        """`scrub` masks personal data and credentials in the path before it is logged."""
        self.enabled = enabled
        self._scrub = scrub
        self._logger = logging.getLogger("sidecar.access")

    def __call__(self, exchange: Exchange) -> None:
        if not self.enabled:
            return
        self._logger.info(
            "request",
            extra={
                "http.request.id": exchange.request_id,
                "http.request.method": exchange.method,
                "url.path": self._scrub(exchange.path) if self._scrub is not None else exchange.path,
                "http.response.status_code": exchange.status,
                "event.outcome": exchange.outcome.value,
                "event.duration": int(exchange.duration_s * 1e9),
                "client.address": exchange.client_address,
                "http.request.body.bytes": exchange.request_body_bytes,
                "http.response.body.bytes": exchange.response_body_bytes,
                "error.type": exchange.error_type,
            },
        )
