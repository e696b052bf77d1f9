"""An in-repo stand-in for the parts of Elasticsearch's REST API the sidecar uses.

The real ``elasticsearch`` client (``AsyncElasticsearch``, the bulk helpers)
talks to it unchanged: every answer carries ``X-Elastic-Product:
Elasticsearch`` and the compatibility media type the client asked for, errors
use Elasticsearch's ``{"error": {"root_cause", "type", "reason", ...},
"status"}`` shape, and bulk answers carry per-item results with Elasticsearch's
statuses and error types.

What it speaks:

- ``GET|HEAD /``; ``GET /_cluster/health``.
- ``PUT|POST /_bulk`` and ``/{index}/_bulk`` with ``create``, ``index`` and
  ``delete`` actions (``update`` is answered per item with 400).
- ``PUT /{index}``, ``HEAD|GET|DELETE /{index}``, ``GET|PUT|POST
  /{index}/_mapping``, ``POST|GET /_refresh`` and ``/{index}/_refresh``.
- ``GET|HEAD|PUT|POST|DELETE /{index}/_doc/{id}``, ``POST /{index}/_doc``,
  ``PUT|POST /{index}/_create/{id}``.
- ``GET|POST /_search``, ``/{index}/_search``, ``/_count``, ``/{index}/_count``
  over comma lists and ``*`` patterns of indices and data streams, with the
  query DSL ``match_all``, ``match_none``, ``term``, ``terms``, ``range``,
  ``bool``, ``exists``, ``ids``, ``prefix``, ``wildcard``, ``match`` and
  ``match_phrase``; ``sort``, ``size``, ``from``, ``search_after``,
  ``_source`` filtering, ``track_total_hits``, ``version``,
  ``seq_no_primary_term``, ``post_filter`` and the ``filter_path`` parameter.
- ``PUT|POST|GET|HEAD|DELETE /_index_template/{name}``,
  ``PUT|POST|GET|DELETE /_component_template/{name}``,
  ``PUT|GET|DELETE /_ilm/policy/{name}``, ``PUT|GET|DELETE
  /_data_stream/{name}``.

Writes follow Elasticsearch's rules: a write to a missing name creates a data
stream when the highest-priority matching index template has ``data_stream``,
otherwise a plain index; data streams take only ``create`` (anything else is
400 ``illegal_argument_exception``) and need ``@timestamp``; ``create`` of an
existing id is 409 ``version_conflict_engine_exception``; field values are
checked against explicit and dynamic mappings (numbers, dates, booleans,
object/concrete clashes, ``dynamic: strict``), as Elasticsearch's mapper does.

Where it differs from Elasticsearch:

- One node, one shard per index, no replicas (``_shards.total`` is 1, health
  is green). No security, aliases, ingest pipelines, routing, scroll,
  point-in-time, aggregations, highlighting, ``q=`` / ``query_string``
  searches or ``update`` actions: those are answered with 400 errors that say
  the stand-in lacks them, never silently ignored.
- Every write is visible at once, as though each were followed by a refresh;
  ``refresh`` parameters are accepted and change nothing.
- No relevance scoring: hits score a constant 1.0 (``_score`` and
  ``max_score`` are null when sorting, as in Elasticsearch), so unsorted
  results come in write order.
- Text analysis is approximate: ``text`` and ``match_only_text`` values are
  lowercased and split on non-word characters (standard analyzer without
  Unicode segmentation subtleties); ``match`` on them matches tokens (``or``
  by default, ``operator: and`` honoured, ``minimum_should_match`` ignored);
  ``term``/``prefix``/``wildcard``/``range`` on them work on those tokens;
  ``match`` on other types is an exact ``term``. No custom analyzers or
  normalizers.
- Mappings: explicit types are enforced for numeric, date, boolean and object
  fields; other types (``ip``, ``geo_point``, ``version``, ...) take any
  value. Dates are ISO-8601 (``strict_date_optional_time``) or epoch millis;
  a custom ``format`` on a date field turns its checks off. Dynamic mapping
  follows Elasticsearch's defaults (strings become ``text`` with a ``keyword``
  sub-field ignoring values over 256 characters, date detection on, numeric
  detection off) and ``dynamic_templates`` with ``match_mapping_type``,
  ``match``/``unmatch`` and ``path_match``/``path_unmatch``. Mapping
  conflicts between indices are not checked. Index templates with the same
  priority and overlapping patterns are refused only when one pattern matches
  an instance of the other (Elasticsearch intersects the automata).
- Range queries ignore ``format`` and ``time_zone`` (dates are UTC); date math
  (``now-24h``, ``now/d``, ``2024-01-01||+1M/M``) rounds as Elasticsearch
  does. Sorting on an unmapped field is an error only when it is unmapped in
  every searched index; missing numeric/date sort values are reported as
  ``Long.MAX_VALUE``/``Long.MIN_VALUE`` for every numeric type, and
  ``search_after`` has no hidden tie-breaker (equal sort values are skipped).
- Built-in index templates ``logs`` (``logs-*-*``), ``metrics``
  (``metrics-*-*``) and ``synthetics`` (``synthetics-*-*``) at priority 100
  with ``data_stream`` and ILM policies ``logs``/``metrics`` exist, as on a
  default Elasticsearch, but with reduced mappings (``@timestamp``,
  ``message``, ``data_stream.*``, strings as ``keyword``) and no logsdb index
  mode. Pass ``builtin_templates=False`` to start empty.
- Error reasons follow Elasticsearch's wording but leave out the
  ``[line:column]`` positions, and the stand-in's own errors for injected
  faults say that they were injected.
- Answers are never compressed; gzip request bodies are accepted.

Faults are set from Python, through ``server.faults`` (see ``Faults``) and
``await server.refuse()`` / ``await server.accept()``; nothing is reachable
over HTTP. ``server.stats`` counts requests and bulk item outcomes.

Standalone: ``python -m sidecar.testing.elastic --port 9200`` serves until
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import copy
import json
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cmp_to_key
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote

import orjson
from aiohttp import web

Json = Any
Predicate = Callable[[dict[str, Any]], bool]

LONG_MAX: Final = 9223372036854775807
LONG_MIN: Final = -9223372036854775808
MAX_RESULT_WINDOW: Final = 10000
MAX_CONTENT_LENGTH: Final = 100 * 1024 * 1024  # Elasticsearch's http.max_content_length default

_NUMERIC_TYPES: Final = frozenset(
    {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float", "unsigned_long"}
)
_INTEGER_TYPES: Final = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_DATE_TYPES: Final = frozenset({"date", "date_nanos"})
_TEXT_TYPES: Final = frozenset({"text", "match_only_text"})
_OBJECT_TYPES: Final = frozenset({"object", "nested"})
# Field types whose values may be JSON objects (ranges, geo shapes, ...).
_STRUCTURED_TYPES: Final = frozenset(
    {"flattened", "geo_point", "geo_shape", "shape", "point", "integer_range", "float_range", "long_range",
     "double_range", "date_range", "ip_range", "dense_vector", "sparse_vector", "rank_features", "aggregate_metric_double",
     "histogram", "completion", "search_as_you_type", "passthrough"}
)
_BULK_META_KEYS: Final = frozenset(
    {"_index", "_id", "routing", "pipeline", "require_alias", "require_data_stream", "if_seq_no", "if_primary_term",
     "version", "version_type", "dynamic_templates", "list_executed_pipelines", "retry_on_conflict", "_source"}
)
_SEARCH_BODY_KEYS: Final = frozenset(
    {"query", "size", "from", "sort", "search_after", "_source", "track_total_hits", "version", "seq_no_primary_term",
     "timeout", "track_scores", "post_filter", "stats", "terminate_after", "explain"}
)
_UNSUPPORTED_SEARCH_KEYS: Final = frozenset(
    {"aggs", "aggregations", "pit", "collapse", "highlight", "knn", "rescore", "suggest", "script_fields", "fields",
     "docvalue_fields", "stored_fields", "runtime_mappings", "indices_boost", "min_score", "rank", "retriever", "slice",
     "profile", "ext"}
)
_ILLEGAL_INDEX_CHARS: Final = frozenset(' "*\\<|,>/?#')
_DATE_DETECT_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
_EPOCH_RE: Final = re.compile(r"-?\d+(?:\.\d+)?")
_DATE_MATH_STEP_RE: Final = re.compile(r"([+-])(\d+)([yMwdhHms])|/([yMwdhHms])")
_WORD_RE: Final = re.compile(r"\w+")
_ERROR_TYPES: Final = MappingProxyType(
    {
        400: "illegal_argument_exception",
        429: "es_rejected_execution_exception",
        500: "exception",
        503: "unavailable_shards_exception",
    }
)


class ApiError(Exception):
    """An Elasticsearch error: answered as the whole response, or as one bulk item's ``error``."""

    def __init__(self, status: int, error_type: str, reason: str, **extra: Any) -> None:
        super().__init__(f"{status} {error_type}: {reason}")
        self.status = status
        self.error_type = error_type
        self.reason = reason
        self.extra = extra

    def cause(self) -> dict[str, Any]:
        """The error object as a bulk item carries it (no ``root_cause``)."""
        return {"type": self.error_type, "reason": self.reason, **self.extra}

    def body(self) -> dict[str, Any]:
        root = {key: value for key, value in self.cause().items() if key != "caused_by"}
        return {"error": {"root_cause": [root], **self.cause()}, "status": self.status}


def _index_not_found(name: str) -> ApiError:
    return ApiError(
        404, "index_not_found_exception", f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_", "index": name},
    )


def _parsing_error(reason: str) -> ApiError:
    return ApiError(400, "parsing_exception", reason)


def _unsupported(what: str) -> ApiError:
    return ApiError(400, "illegal_argument_exception", f"{what} is not supported by the Elasticsearch stand-in")


# --- small pure helpers -------------------------------------------------------------------------


def simple_match(pattern: str, value: str) -> bool:
    """Elasticsearch's Regex.simpleMatch: ``*`` matches any run of characters, nothing else is special."""
    if "*" not in pattern:
        return pattern == value
    parts = pattern.split("*")
    first, last = parts[0], parts[-1]
    if len(value) < len(first) + len(last) or not value.startswith(first) or not value.endswith(last):
        return False
    position, end = len(first), len(value) - len(last)
    for part in parts[1:-1]:
        found = value.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


def _matches_any(patterns: str | Sequence[str] | None, value: str) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(simple_match(pattern, value) for pattern in patterns)


def _index_name_problem(name: str) -> str | None:
    if name != name.lower():
        return "must be lowercase"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if name[:1] in ("_", "-", "+"):
        return "must not start with '_', '-', or '+'"
    if any(char in _ILLEGAL_INDEX_CHARS for char in name):
        return 'must not contain the following characters [ , ", *, \\, <, |, ,, >, /, ?, #]'
    if ":" in name:
        return "must not contain ':'"
    if len(name.encode()) > 255:
        return f"index name is too long, ({len(name.encode())} > 255)"
    return None


def _check_index_name(name: str) -> None:
    problem = _index_name_problem(name)
    if problem is not None:
        raise ApiError(400, "invalid_index_name_exception", f"Invalid index name [{name}], {problem}",
                       index_uuid="_na_", index=name)


def _auto_id() -> str:
    """A 20-character URL-safe id, the shape of Elasticsearch's auto-generated ids."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def _bool_param(value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() not in ("false", "0", "no", "off")


def _json_text(value: Any) -> str:
    """A scalar as Elasticsearch's keyword indexing sees it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tokens(text: Any) -> list[str]:
    return _WORD_RE.findall(_json_text(text).lower())


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    if value == "":
        return False
    return None


# --- dates --------------------------------------------------------------------------------------


def parse_date_ms(value: Any) -> float | None:
    """Epoch milliseconds of an ISO-8601 date (``strict_date_optional_time``) or epoch millis, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _EPOCH_RE.fullmatch(text):
        return float(text)
    if not _DATE_DETECT_RE.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp() * 1000.0


def _add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(month_index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def _shift(moment: datetime, amount: int, unit: str) -> datetime:
    if unit == "y":
        return _add_months(moment, 12 * amount)
    if unit == "M":
        return _add_months(moment, amount)
    span = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1), "H": timedelta(hours=1),
            "m": timedelta(minutes=1), "s": timedelta(seconds=1)}[unit]
    return moment + span * amount


def _round_down(moment: datetime, unit: str) -> datetime:
    if unit == "y":
        return moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "M":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "w":
        start = moment - timedelta(days=moment.weekday())
        return start.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "d":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit in ("h", "H"):
        return moment.replace(minute=0, second=0, microsecond=0)
    if unit == "m":
        return moment.replace(second=0, microsecond=0)
    return moment.replace(microsecond=0)


def _ms(moment: datetime) -> float:
    return moment.timestamp() * 1000.0


def date_math_ms(expression: Any, now_ms: float, round_up: bool = False) -> float:
    """Evaluate a date or date-math expression as a range bound; ``round_up`` for ``gt``/``lte``."""
    if not isinstance(expression, str):
        parsed = parse_date_ms(expression)
        if parsed is None:
            raise ApiError(400, "parse_exception", f"failed to parse date field [{expression}]")
        return parsed
    text = expression.strip()
    if text.startswith("now"):
        anchor, steps = now_ms, text[3:]
    elif "||" in text:
        anchor_text, steps = text.split("||", 1)
        parsed = parse_date_ms(anchor_text)
        if parsed is None:
            raise _date_parse_error(text)
        anchor = parsed
    else:
        parsed = parse_date_ms(text)
        if parsed is None:
            raise _date_parse_error(text)
        if round_up and _DATE_DETECT_RE.fullmatch(text):
            # A date with missing fields covers the whole of its last given unit, as in Elasticsearch.
            unit = _least_unit(text)
            if unit is not None:
                start = datetime.fromtimestamp(parsed / 1000.0, tz=timezone.utc)
                return _ms(_shift(start, 1, unit)) - 1.0
        return parsed
    moment = datetime.fromtimestamp(anchor / 1000.0, tz=timezone.utc)
    position = 0
    while position < len(steps):
        step = _DATE_MATH_STEP_RE.match(steps, position)
        if step is None:
            raise _date_parse_error(text)
        if step.group(1):
            amount = int(step.group(2)) * (1 if step.group(1) == "+" else -1)
            moment = _shift(moment, amount, step.group(3))
        else:
            unit = step.group(4)
            moment = _round_down(moment, unit)
            if round_up:
                moment = _shift(moment, 1, unit) - timedelta(milliseconds=1)
        position = step.end()
    return _ms(moment)


def _least_unit(text: str) -> str | None:
    """The smallest unit an ISO date string names, when it stops short of seconds' fractions."""
    date_part, _, time_part = text.partition("T")
    if not time_part:
        return "d"
    bare = re.split(r"[Z+-]", time_part, maxsplit=1)[0]
    fields = bare.split(":")
    if len(fields) == 1:
        return "h"
    if len(fields) == 2:
        return "m"
    if "." not in fields[2] and "," not in fields[2]:
        return "s"
    return None


def _date_parse_error(text: str) -> ApiError:
    return ApiError(400, "parse_exception",
                    f"failed to parse date field [{text}] with format [strict_date_optional_time||epoch_millis]")


# --- documents and mappings ---------------------------------------------------------------------


def source_values(node: Any, segments: Sequence[str]) -> Iterator[Any]:
    """The leaf values at a dotted path, through nested objects, dotted keys and arrays; nulls dropped."""
    if not segments:
        if isinstance(node, list):
            for item in node:
                yield from source_values(item, segments)
        elif node is not None:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from source_values(item, segments)
        return
    if not isinstance(node, dict):
        return
    for cut in range(1, len(segments) + 1):
        key = ".".join(segments[:cut])
        if key in node:
            yield from source_values(node[key], segments[cut:])


def mapping_type(mapping: Mapping[str, Any]) -> str:
    if "type" in mapping:
        return str(mapping["type"])
    return "object"


def _expand_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Mapping properties with dotted names turned into objects, as Elasticsearch stores them."""
    expanded: dict[str, Any] = {}
    for name, spec in properties.items():
        spec = dict(spec)
        if "properties" in spec:
            spec["properties"] = _expand_properties(spec["properties"])
        *parents, leaf = name.split(".")
        target = expanded
        for parent in parents:
            node = target.setdefault(parent, {"properties": {}})
            target = node.setdefault("properties", {})
        if leaf in target:
            target[leaf] = _merge_field(target[leaf], spec)
        else:
            target[leaf] = spec
    return expanded


def _merge_field(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if key == "properties" and "properties" in merged:
            merged["properties"] = _merge_properties(merged["properties"], value)
        elif key == "fields" and "fields" in merged:
            merged["fields"] = {**merged["fields"], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_properties(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for name, spec in overlay.items():
        merged[name] = _merge_field(merged[name], spec) if name in merged else copy.deepcopy(spec)
    return merged


def merge_mappings(base: Mapping[str, Any], overlay: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in (overlay or {}).items():
        if key == "properties":
            merged["properties"] = _merge_properties(merged.get("properties", {}), _expand_properties(value))
        elif key == "dynamic_templates":
            names = {next(iter(entry)) for entry in value}
            kept = [entry for entry in merged.get("dynamic_templates", []) if next(iter(entry)) not in names]
            merged["dynamic_templates"] = kept + copy.deepcopy(list(value))
        else:
            merged[key] = copy.deepcopy(value)
    merged.setdefault("properties", {})
    return merged


def _mapping_conflicts(existing: Mapping[str, Any], update: Mapping[str, Any], prefix: str = "") -> str | None:
    for name, spec in update.items():
        if name not in existing:
            continue
        path = f"{prefix}{name}"
        old, new = mapping_type(existing[name]), mapping_type(spec)
        if ("type" in spec or "properties" not in spec) and old != new:
            return f"mapper [{path}] cannot be changed from type [{old}] to [{new}]"
        if "properties" in spec and "properties" in existing[name]:
            problem = _mapping_conflicts(existing[name]["properties"], spec["properties"], f"{path}.")
            if problem:
                return problem
    return None


def flatten_settings(settings: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Settings as Elasticsearch normalises them: flat dotted keys, all under ``index.``."""
    flat: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = value
    if prefix:
        return flat
    return {(key if key.startswith("index.") else f"index.{key}"): value for key, value in flat.items()}


def nest_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value if isinstance(value, (list, dict)) else _json_text(value)
    return nested


@dataclass(frozen=True)
class ResolvedField:
    """A searchable field: its mapping, its type and where its values live in ``_source``."""

    mapping: Mapping[str, Any]
    kind: str
    source_path: tuple[str, ...]


def resolve_field(mappings: Mapping[str, Any], path: str) -> ResolvedField | None:
    segments = path.split(".")
    node: Mapping[str, Any] = mappings
    for position, segment in enumerate(segments):
        properties = node.get("properties")
        if properties is not None and segment in properties:
            node = properties[segment]
            continue
        subfields = node.get("fields")
        if subfields is not None and position == len(segments) - 1 and segment in subfields:
            sub = subfields[segment]
            return ResolvedField(sub, mapping_type(sub), tuple(segments[:position]))
        return None
    if node is mappings:
        return None
    return ResolvedField(node, mapping_type(node), tuple(segments))


# --- state --------------------------------------------------------------------------------------


@dataclass
class StoredDocument:
    id: str
    source: dict[str, Any]
    version: int
    seq_no: int
    order: int  # global write order: stands in for Lucene's doc id, so rewrites move to the end


@dataclass
class Index:
    name: str
    mappings: dict[str, Any]
    settings: dict[str, Any]
    created_ms: int
    data_stream: str | None = None
    uuid: str = field(default_factory=lambda: base64.urlsafe_b64encode(uuid.uuid4().bytes)[:22].decode())
    docs: dict[str, StoredDocument] = field(default_factory=dict)
    next_seq_no: int = 0

    @property
    def hidden(self) -> bool:
        return self.name.startswith(".") or _bool_param(self.settings.get("index.hidden"))


@dataclass
class DataStream:
    name: str
    template: str
    backing: Index
    hidden: bool
    meta: dict[str, Any] | None


@dataclass
class IlmPolicy:
    policy: dict[str, Any]
    version: int
    modified_ms: int
    meta: dict[str, Any] | None = None


@dataclass
class Stats:
    """What the stand-in has seen, for tests to assert on."""

    requests: Counter[str] = field(default_factory=Counter)  # "METHOD /path" → count
    bulk_requests: int = 0  # every bulk request received, including ones failed by a fault
    bulk_items: int = 0  # items of bulk requests that were processed
    item_statuses: Counter[int] = field(default_factory=Counter)  # bulk item status → count
    failed_requests: int = 0  # whole requests answered by fail_requests()
    internal_errors: list[str] = field(default_factory=list)  # bugs in the stand-in itself (answered 500)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


@dataclass
class _RequestFailure:
    status: int
    remaining: int | None
    fraction: float | None
    path: str | None
    rng: random.Random


@dataclass
class _ItemRejection:
    fraction: float
    status: int
    rng: random.Random


class Faults:
    """Faults to inject, set from the test (nothing here is reachable over HTTP).

    - ``hang(True)``: connections are accepted and request headers read, but
      nothing is processed or answered until ``hang(False)``; then the waiting
      requests proceed (even those whose client gave up). Stopping the server
      cancels them.
    - ``slow(seconds)``: every request is processed at once and its answer is
      held back for ``seconds`` (so a client that times out may still have
      written, as with an overloaded Elasticsearch).
    - ``fail_requests(status, count=None, fraction=None, path=None)``: whole
      requests are answered with ``status`` and Elasticsearch's error body for
      it (429 ``es_rejected_execution_exception``, 503
      ``cluster_block_exception``, 500 ``exception``; 502 and 504 come as a
      proxy's plain-text answer without Elasticsearch's header) without being
      processed: the next ``count`` requests, or each with probability
      ``fraction`` (seeded), or all when neither is given; ``path`` limits it to
      request paths containing that text (``"_bulk"``).
    - ``reject_items(fraction, status=429, seed=0)``: each bulk item that
      reaches its shard is rejected (not stored) with probability ``fraction``
      and answered with ``status`` and ``es_rejected_execution_exception``;
      draws are independent and seeded, so a retried item is rejected again
      only with the same probability.
    - ``mapping_error(predicate)``: documents for which ``predicate(source)`` is
      true are refused with item status 400 ``document_parsing_exception``
      (also by the single-document APIs).
    - ``clear()``: all of the above off.

    Refusing connections is ``await server.refuse()`` / ``await server.accept()``.
    """

    def __init__(self) -> None:
        self.delay = 0.0
        self._released = asyncio.Event()
        self._released.set()
        self._failure: _RequestFailure | None = None
        self._rejection: _ItemRejection | None = None
        self._mapping_error: Predicate | None = None

    @property
    def hung(self) -> bool:
        return not self._released.is_set()

    def hang(self, on: bool = True) -> None:
        if on:
            self._released.clear()
        else:
            self._released.set()

    def slow(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"slow(): seconds must be >= 0, got {seconds}")
        self.delay = seconds

    def fail_requests(
        self,
        status: int = 503,
        count: int | None = None,
        fraction: float | None = None,
        *,
        path: str | None = None,
        seed: int = 0,
    ) -> None:
        if count is not None and fraction is not None:
            raise ValueError("fail_requests(): give count or fraction, not both")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fail_requests(): fraction must be within [0, 1], got {fraction}")
        self._failure = _RequestFailure(status, count, fraction, path, random.Random(seed))

    def reject_items(self, fraction: float, status: int = 429, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"reject_items(): fraction must be within [0, 1], got {fraction}")
        self._rejection = _ItemRejection(fraction, status, random.Random(seed)) if fraction > 0 else None

    def mapping_error(self, predicate: Predicate | None) -> None:
        self._mapping_error = predicate

    def clear(self) -> None:
        self.delay = 0.0
        self._released.set()
        self._failure = None
        self._rejection = None
        self._mapping_error = None

    async def wait_released(self) -> None:
        await self._released.wait()

    def draw_request_failure(self, path: str) -> int | None:
        failure = self._failure
        if failure is None or (failure.path is not None and failure.path not in path):
            return None
        if failure.fraction is not None:
            return failure.status if failure.rng.random() < failure.fraction else None
        if failure.remaining is not None:
            if failure.remaining <= 0:
                self._failure = None
                return None
            failure.remaining -= 1
        return failure.status

    def draw_item_rejection(self) -> int | None:
        rejection = self._rejection
        if rejection is None:
            return None
        return rejection.status if rejection.rng.random() < rejection.fraction else None

    def refuses_document(self, source: dict[str, Any]) -> bool:
        return self._mapping_error is not None and bool(self._mapping_error(source))


def builtin_index_templates() -> dict[str, dict[str, Any]]:
    """Reduced copies of the stack templates a default Elasticsearch has installed."""

    def stack_template(kind: str) -> dict[str, Any]:
        return {
            "index_patterns": [f"{kind}-*-*"],
            "priority": 100,
            "data_stream": {"hidden": False, "allow_custom_routing": False},
            "composed_of": [],
            "allow_auto_create": True,
            "_meta": {"description": f"default {kind} template installed by x-pack", "managed": True},
            "template": {
                "settings": {"index": {"lifecycle": {"name": kind if kind != "synthetics" else "synthetics"}}},
                "mappings": {
                    "date_detection": False,
                    "dynamic_templates": [
                        {"strings_as_keyword": {"match_mapping_type": "string",
                                                "mapping": {"type": "keyword", "ignore_above": 1024}}}
                    ],
                    "properties": {
                        "@timestamp": {"type": "date"},
                        "message": {"type": "match_only_text"},
                        "data_stream": {"properties": {"type": {"type": "constant_keyword", "value": kind},
                                                       "dataset": {"type": "constant_keyword"},
                                                       "namespace": {"type": "constant_keyword"}}},
                    },
                },
            },
        }

    return {kind: stack_template(kind) for kind in ("logs", "metrics", "synthetics")}


def builtin_ilm_policies() -> dict[str, dict[str, Any]]:
    rollover = {"hot": {"min_age": "0ms", "actions": {"rollover": {"max_age": "30d", "max_primary_shard_size": "50gb"}}}}
    return {name: {"phases": copy.deepcopy(rollover), "_meta": {"managed": True}} for name in ("logs", "metrics", "synthetics")}


# --- queries ------------------------------------------------------------------------------------

Matcher = Callable[[Index, StoredDocument], bool]


class QueryCompiler:
    """Turns query DSL into a predicate over (index, document); raises 400s for what it cannot run."""

    def __init__(self, now_ms: float) -> None:
        self.now_ms = now_ms

    def compile(self, query: Any) -> Matcher:
        if query is None:
            return lambda index, doc: True
        if not isinstance(query, dict) or len(query) != 1:
            raise _parsing_error("[_na] query malformed, must start with start_object" if not isinstance(query, dict)
                                 else f"[{next(iter(query), '_na')}] malformed query, expected [END_OBJECT] but found [FIELD_NAME]")
        kind, spec = next(iter(query.items()))
        builder = {
            "match_all": self._match_all, "match_none": self._match_none, "bool": self._bool, "term": self._term,
            "terms": self._terms, "range": self._range, "exists": self._exists, "ids": self._ids,
            "prefix": self._prefix, "wildcard": self._wildcard, "match": self._match,
            "match_phrase": self._match_phrase, "constant_score": self._constant_score,
        }.get(kind)
        if builder is None:
            if kind in ("query_string", "simple_query_string", "nested", "has_child", "has_parent", "regexp", "fuzzy",
                        "multi_match", "script", "geo_distance", "geo_bounding_box", "knn", "function_score",
                        "dis_max", "boosting", "more_like_this", "terms_set", "match_bool_prefix",
                        "match_phrase_prefix", "combined_fields", "intervals", "span_term", "pinned", "semantic"):
                raise _unsupported(f"the [{kind}] query")
            raise _parsing_error(f"unknown query [{kind}]")
        return builder(spec)

    @staticmethod
    def _field_spec(kind: str, spec: Any, value_key: str) -> tuple[str, Any, dict[str, Any]]:
        if not isinstance(spec, dict):
            raise _parsing_error(f"[{kind}] query malformed, no start_object after query name")
        fields = {key: value for key, value in spec.items() if key not in ("boost", "_name")}
        if len(fields) != 1:
            raise _parsing_error(f"[{kind}] query doesn't support multiple fields, found {sorted(fields)}")
        name, body = next(iter(fields.items()))
        if isinstance(body, dict):
            if value_key not in body:
                raise _parsing_error(f"[{kind}] query malformed, no [{value_key}] for field [{name}]")
            return name, body[value_key], body
        return name, body, {}

    def _match_all(self, spec: Any) -> Matcher:
        return lambda index, doc: True

    def _match_none(self, spec: Any) -> Matcher:
        return lambda index, doc: False

    def _constant_score(self, spec: Any) -> Matcher:
        if not isinstance(spec, dict) or "filter" not in spec:
            raise _parsing_error("[constant_score] requires a 'filter' element")
        return self.compile(spec["filter"])

    def _bool(self, spec: Any) -> Matcher:
        if not isinstance(spec, dict):
            raise _parsing_error("[bool] query malformed, no start_object after query name")

        def clauses(key: str) -> list[Matcher]:
            value = spec.get(key, [])
            return [self.compile(item) for item in (value if isinstance(value, list) else [value])]

        unknown = set(spec) - {"must", "filter", "should", "must_not", "minimum_should_match", "boost", "_name",
                               "adjust_pure_negative"}
        if unknown:
            raise _parsing_error(f"[bool] query does not support [{sorted(unknown)[0]}]")
        must = clauses("must") + clauses("filter")
        should = clauses("should")
        must_not = clauses("must_not")
        minimum = self._minimum_should_match(spec.get("minimum_should_match"), len(should), bool(must))

        def matches(index: Index, doc: StoredDocument) -> bool:
            if not all(clause(index, doc) for clause in must):
                return False
            if any(clause(index, doc) for clause in must_not):
                return False
            if minimum:
                return sum(1 for clause in should if clause(index, doc)) >= minimum
            return True

        return matches

    @staticmethod
    def _minimum_should_match(value: Any, optional: int, has_required: bool) -> int:
        if value is None:
            return 0 if has_required or optional == 0 else 1
        text = str(value).strip()
        if text.endswith("%"):
            percent = int(text[:-1])
            count = optional * abs(percent) // 100
            minimum = count if percent >= 0 else optional - count
        else:
            number = int(text)
            minimum = number if number >= 0 else optional + number
        return max(0, min(minimum, optional)) if optional else 0

    def _term(self, spec: Any) -> Matcher:
        name, value, options = self._field_spec("term", spec, "value")
        insensitive = _bool_param(options.get("case_insensitive"))
        return self._field_matcher(name, lambda field, values: _term_hit(field, values, value, insensitive, self.now_ms))

    def _terms(self, spec: Any) -> Matcher:
        if not isinstance(spec, dict):
            raise _parsing_error("[terms] query malformed, no start_object after query name")
        fields = {key: value for key, value in spec.items() if key not in ("boost", "_name")}
        if len(fields) != 1:
            raise _parsing_error("[terms] query does not support multiple fields")
        name, wanted = next(iter(fields.items()))
        if not isinstance(wanted, list):
            raise _unsupported("a terms lookup")
        return self._field_matcher(
            name, lambda field, values: any(_term_hit(field, values, value, False, self.now_ms) for value in wanted)
        )

    def _range(self, spec: Any) -> Matcher:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise _parsing_error("[range] query doesn't support multiple fields")
        name, bounds = next(iter(spec.items()))
        if not isinstance(bounds, dict):
            raise _parsing_error(f"[range] query malformed, no start_object after field [{name}]")
        known = {"gt", "gte", "lt", "lte", "format", "time_zone", "boost", "relation", "_name"}
        unknown = set(bounds) - known
        if unknown:
            raise _parsing_error(f"[range] query does not support [{sorted(unknown)[0]}]")
        checks = {op: bounds[op] for op in ("gt", "gte", "lt", "lte") if bounds.get(op) is not None}
        return self._field_matcher(name, lambda field, values: _range_hit(field, values, checks, self.now_ms))

    def _exists(self, spec: Any) -> Matcher:
        if not isinstance(spec, dict) or "field" not in spec:
            raise _parsing_error("[exists] must be provided with a [field]")
        name = str(spec["field"])

        def matches(index: Index, doc: StoredDocument) -> bool:
            if name in ("_id", "_index"):
                return True
            resolved = resolve_field(index.mappings, name)
            if resolved is None:
                return False
            return any(value not in ({}, []) for value in source_values(doc.source, resolved.source_path))

        return matches

    def _ids(self, spec: Any) -> Matcher:
        if not isinstance(spec, dict) or not isinstance(spec.get("values"), list):
            raise _parsing_error("[ids] query malformed, [values] must be an array")
        wanted = {str(value) for value in spec["values"]}
        return lambda index, doc: doc.id in wanted

    def _prefix(self, spec: Any) -> Matcher:
        name, value, options = self._field_spec("prefix", spec, "value")
        insensitive = _bool_param(options.get("case_insensitive"))
        prefix = str(value).lower() if insensitive else str(value)

        def hit(field: ResolvedField, values: list[Any]) -> bool:
            candidates = _string_terms(field, values)
            return any((term.lower() if insensitive else term).startswith(prefix) for term in candidates)

        return self._field_matcher(name, hit)

    def _wildcard(self, spec: Any) -> Matcher:
        name, value, options = self._field_spec("wildcard", spec, "value")
        insensitive = _bool_param(options.get("case_insensitive"))
        pattern = re.compile(
            "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in str(value)),
            re.IGNORECASE if insensitive else 0,
        )
        return self._field_matcher(
            name, lambda field, values: any(pattern.fullmatch(term) for term in _string_terms(field, values))
        )

    def _match(self, spec: Any) -> Matcher:
        name, value, options = self._field_spec("match", spec, "query")
        operator = str(options.get("operator", "or")).lower()

        def hit(field: ResolvedField, values: list[Any]) -> bool:
            if field.kind not in _TEXT_TYPES:
                return _term_hit(field, values, value, False, self.now_ms)
            wanted = _tokens(value)
            present = {token for item in values for token in _tokens(item)}
            if not wanted:
                return False
            if operator == "and":
                return all(token in present for token in wanted)
            return any(token in present for token in wanted)

        return self._field_matcher(name, hit)

    def _match_phrase(self, spec: Any) -> Matcher:
        name, value, _ = self._field_spec("match_phrase", spec, "query")

        def hit(field: ResolvedField, values: list[Any]) -> bool:
            if field.kind not in _TEXT_TYPES:
                return _term_hit(field, values, value, False, self.now_ms)
            wanted = _tokens(value)
            for item in values:
                tokens = _tokens(item)
                if any(tokens[start:start + len(wanted)] == wanted for start in range(len(tokens) - len(wanted) + 1)):
                    return True
            return False

        return self._field_matcher(name, hit)

    @staticmethod
    def _field_matcher(name: str, hit: Callable[[ResolvedField, list[Any]], bool]) -> Matcher:
        if name == "_id":
            meta = ResolvedField({"type": "keyword"}, "keyword", ())
            return lambda index, doc: hit(meta, [doc.id])
        if name == "_index":
            meta = ResolvedField({"type": "keyword"}, "keyword", ())
            return lambda index, doc: hit(meta, [index.name])

        def matches(index: Index, doc: StoredDocument) -> bool:
            resolved = resolve_field(index.mappings, name)
            if resolved is None or resolved.kind in _OBJECT_TYPES:
                return False
            values = list(source_values(doc.source, resolved.source_path))
            return bool(values) and hit(resolved, values)

        return matches


def _string_terms(field: ResolvedField, values: list[Any]) -> list[str]:
    """The indexed terms of a field: tokens for text, whole strings for keyword-like fields."""
    if field.kind in _TEXT_TYPES:
        return [token for value in values for token in _tokens(value)]
    ignore_above = field.mapping.get("ignore_above")
    terms = [_json_text(value) for value in values if not isinstance(value, (dict, list))]
    if ignore_above is not None:
        terms = [term for term in terms if len(term) <= int(ignore_above)]
    return terms


def _term_hit(field: ResolvedField, values: list[Any], wanted: Any, insensitive: bool, now_ms: float) -> bool:
    kind = field.kind
    if kind in _NUMERIC_TYPES:
        target = _as_number(wanted)
        if target is None:
            raise ApiError(400, "query_shard_exception", f'failed to create query: For input string: "{wanted}"')
        return any(_as_number(value) == target for value in values)
    if kind in _DATE_TYPES:
        target_ms = date_math_ms(wanted, now_ms)
        return any(parse_date_ms(value) == target_ms for value in values)
    if kind == "boolean":
        target_bool = _as_bool(wanted if not isinstance(wanted, str) else wanted.lower())
        return any(_as_bool(value) == target_bool for value in values)
    wanted_text = _json_text(wanted)
    terms = _string_terms(field, values)
    if insensitive:
        return wanted_text.lower() in (term.lower() for term in terms)
    return wanted_text in terms


def _range_hit(field: ResolvedField, values: list[Any], checks: Mapping[str, Any], now_ms: float) -> bool:
    kind = field.kind
    comparable: list[Any]
    bounds: dict[str, Any]
    if kind in _DATE_TYPES:
        bounds = {op: date_math_ms(bound, now_ms, round_up=op in ("gt", "lte")) for op, bound in checks.items()}
        comparable = [ms for ms in (parse_date_ms(value) for value in values) if ms is not None]
    elif kind in _NUMERIC_TYPES or kind == "boolean":
        bounds = {}
        for op, bound in checks.items():
            number = _as_number(bound) if kind != "boolean" else float(bool(_as_bool(bound)))
            if number is None:
                raise ApiError(400, "query_shard_exception", f'failed to create query: For input string: "{bound}"')
            bounds[op] = number
        converted = (_as_number(value) if kind != "boolean" else float(bool(_as_bool(value))) for value in values)
        comparable = [number for number in converted if number is not None]
    else:
        bounds = {op: _json_text(bound) for op, bound in checks.items()}
        comparable = _string_terms(field, values)
    for value in comparable:
        if "gt" in bounds and not value > bounds["gt"]:
            continue
        if "gte" in bounds and not value >= bounds["gte"]:
            continue
        if "lt" in bounds and not value < bounds["lt"]:
            continue
        if "lte" in bounds and not value <= bounds["lte"]:
            continue
        return True
    return False


# --- sorting, source filtering, filter_path -----------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool
    missing_first: bool
    missing_value: Any
    unmapped_type: str | None


def parse_sort(spec: Any) -> list[SortKey]:
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    keys: list[SortKey] = []
    for item in items:
        if isinstance(item, str):
            for part in item.split(","):
                name, _, order = part.partition(":")
                keys.append(_sort_key(name.strip(), {"order": order.strip()} if order else {}))
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            keys.append(_sort_key(name, {"order": options} if isinstance(options, str) else dict(options)))
        else:
            raise _parsing_error(f"malformed sort format, within the sort array, an object, or an actual string are allowed")
    return keys


def _sort_key(name: str, options: Mapping[str, Any]) -> SortKey:
    default = "desc" if name == "_score" else "asc"
    order = str(options.get("order") or default).lower()
    if order not in ("asc", "desc"):
        raise ApiError(400, "illegal_argument_exception", f"Unknown SortOrder [{order}]")
    missing = options.get("missing", "_last")
    for key in options:
        if key not in ("order", "missing", "unmapped_type", "mode", "format", "numeric_type"):
            raise _parsing_error(f"[field_sort] unknown field [{key}]")
    return SortKey(
        field=name,
        descending=order == "desc",
        missing_first=missing == "_first",
        missing_value=None if missing in ("_first", "_last") else missing,
        unmapped_type=options.get("unmapped_type"),
    )


def _compare(left: Any, right: Any) -> int:
    if left is None or right is None:
        return 0 if left is right else (1 if left is None else -1)
    if type(left) is not type(right) and not (isinstance(left, (int, float)) and isinstance(right, (int, float))):
        left, right = str(left), str(right)
    return int(left > right) - int(left < right)


def filter_source(source: dict[str, Any], includes: Sequence[str], excludes: Sequence[str]) -> dict[str, Any]:
    def could_include_below(path: str) -> bool:
        for pattern in includes:
            head = pattern.split("*", 1)[0]
            if pattern.startswith(f"{path}.") or (len(head) < len(path) + 1 and f"{path}.".startswith(head)):
                return True
        return False

    def walk(node: dict[str, Any], prefix: str, included: bool) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in node.items():
            path = f"{prefix}{key}"
            if _matches_any(excludes, path):
                continue
            inside = included or not includes or _matches_any(includes, path)
            if isinstance(value, dict):
                if inside or could_include_below(path):
                    sub = walk(value, f"{path}.", inside)
                    if sub or inside:
                        kept[key] = sub
            elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
                if inside or could_include_below(path):
                    items = [walk(item, f"{path}.", inside) if isinstance(item, dict) else item for item in value]
                    items = [item for item in items if item != {} or inside]
                    if items or inside:
                        kept[key] = items
            elif inside:
                kept[key] = value
        return kept

    return walk(source, "", False)


_MISSING: Final = object()


def filter_path(body: Any, expression: str) -> Any:
    """Elasticsearch's ``filter_path`` response filtering (``*``, ``**`` and ``-`` exclusions)."""
    patterns = [part.strip() for part in expression.split(",") if part.strip()]
    includes = [pattern.split(".") for pattern in patterns if not pattern.startswith("-")]
    excludes = [pattern[1:].split(".") for pattern in patterns if pattern.startswith("-")]
    result = body
    if includes:
        result = _keep_paths(body, includes)
        if result is _MISSING:
            result = {}
    if excludes:
        result = _drop_paths(result, excludes)
        if result is _MISSING:
            result = {}
    return result


def _advance(patterns: list[list[str]], key: str) -> tuple[bool, list[list[str]]]:
    """(whole subtree matched, patterns still to match below ``key``)."""
    full = False
    rest: list[list[str]] = []
    for pattern in patterns:
        head = pattern[0]
        if head == "**":
            rest.append(pattern)
            if len(pattern) == 1:
                full = True
                continue
            if simple_match(pattern[1], key):
                if len(pattern) == 2:
                    full = True
                else:
                    rest.append(pattern[2:])
        elif simple_match(head, key):
            if len(pattern) == 1:
                full = True
            else:
                rest.append(pattern[1:])
    return full, rest


def _keep_paths(node: Any, patterns: list[list[str]]) -> Any:
    if isinstance(node, list):
        items = [kept for item in node if (kept := _keep_paths(item, patterns)) is not _MISSING]
        return items if items else _MISSING
    if not isinstance(node, dict):
        return _MISSING
    kept_node: dict[str, Any] = {}
    for key, value in node.items():
        full, rest = _advance(patterns, key)
        if full:
            kept_node[key] = value
        elif rest:
            sub = _keep_paths(value, rest)
            if sub is not _MISSING:
                kept_node[key] = sub
    return kept_node if kept_node else _MISSING


def _drop_paths(node: Any, patterns: list[list[str]]) -> Any:
    if isinstance(node, list):
        return [item for item in (_drop_paths(value, patterns) for value in node) if item is not _MISSING]
    if not isinstance(node, dict):
        return node
    kept_node: dict[str, Any] = {}
    for key, value in node.items():
        full, rest = _advance(patterns, key)
        if full:
            continue
        kept_node[key] = _drop_paths(value, rest) if rest else value
    return kept_node


# --- the cluster: everything behind the REST layer ----------------------------------------------


@dataclass
class Request:
    """One REST call as the cluster sees it."""

    method: str
    path: str
    segments: list[str]
    params: dict[str, str]
    body: bytes

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, "x_content_parse_exception", f"Failed to parse request body: {error}") from None

    def object_body(self) -> dict[str, Any]:
        body = self.json()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(400, "x_content_parse_exception", "request body must be a JSON object")
        return body

    def flag(self, name: str, default: bool = False) -> bool:
        return _bool_param(self.params.get(name), default)


Answer = tuple[int, Json]


class Cluster:
    """A single-node cluster's state and the semantics of each API, free of HTTP."""

    def __init__(self, faults: Faults, stats: Stats, clock: Callable[[], float], builtin_templates: bool,
                 version: str, cluster_name: str) -> None:
        self.faults = faults
        self.stats = stats
        self.clock = clock
        self.version = version
        self.cluster_name = cluster_name
        self.check_mappings = True
        """Off, documents are stored without the mapper's checks (throughput measurements only)."""
        self.cluster_uuid = base64.urlsafe_b64encode(uuid.uuid4().bytes)[:22].decode()
        self.indices: dict[str, Index] = {}
        self.data_streams: dict[str, DataStream] = {}
        self.index_templates: dict[str, dict[str, Any]] = builtin_index_templates() if builtin_templates else {}
        self.component_templates: dict[str, dict[str, Any]] = {}
        self.ilm_policies: dict[str, IlmPolicy] = {}
        if builtin_templates:
            now = self.now_ms()
            self.ilm_policies = {name: IlmPolicy(policy, 1, now) for name, policy in builtin_ilm_policies().items()}
        self._order = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # routing -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        segments, method = request.segments, request.method
        count = len(segments)
        head = segments[0] if segments else ""
        if count == 0:
            return self._methods(request, GET=self.info, HEAD=self.info)
        if head == "_bulk" and count == 1:
            return self._methods(request, PUT=self.bulk, POST=self.bulk)
        if head in ("_search", "_count", "_refresh") and count == 1:
            handler = {"_search": self.search, "_count": self.count, "_refresh": self.refresh}[head]
            return self._methods(request, GET=handler, POST=handler)
        if head == "_index_template" and count <= 2:
            return self._methods(request, GET=self.get_index_template, HEAD=self.get_index_template,
                                 **({"PUT": self.put_index_template, "POST": self.put_index_template,
                                     "DELETE": self.delete_index_template} if count == 2 else {}))
        if head == "_component_template" and count <= 2:
            return self._methods(request, GET=self.get_component_template, HEAD=self.get_component_template,
                                 **({"PUT": self.put_component_template, "POST": self.put_component_template,
                                     "DELETE": self.delete_component_template} if count == 2 else {}))
        if head == "_ilm" and count in (2, 3) and segments[1] == "policy":
            return self._methods(request, GET=self.get_ilm_policy,
                                 **({"PUT": self.put_ilm_policy, "DELETE": self.delete_ilm_policy} if count == 3 else {}))
        if head == "_data_stream" and count <= 2:
            return self._methods(request, GET=self.get_data_stream,
                                 **({"PUT": self.create_data_stream, "DELETE": self.delete_data_stream}
                                    if count == 2 else {}))
        if head == "_cluster" and count == 2 and segments[1] == "health":
            return self._methods(request, GET=self.cluster_health)
        if not head.startswith("_") or head in ("_all",):
            if count == 1:
                return self._methods(request, PUT=self.create_index, HEAD=self.get_index, GET=self.get_index,
                                     DELETE=self.delete_index)
            action = segments[1]
            if count == 2 and action == "_bulk":
                return self._methods(request, PUT=self.bulk, POST=self.bulk)
            if count == 2 and action in ("_search", "_count", "_refresh"):
                handler = {"_search": self.search, "_count": self.count, "_refresh": self.refresh}[action]
                return self._methods(request, GET=handler, POST=handler)
            if count == 2 and action in ("_mapping", "_mappings"):
                return self._methods(request, GET=self.get_mapping, PUT=self.put_mapping, POST=self.put_mapping)
            if count == 2 and action == "_doc":
                return self._methods(request, POST=self.write_document)
            if count == 3 and action == "_doc":
                return self._methods(request, GET=self.get_document, HEAD=self.get_document,
                                     PUT=self.write_document, POST=self.write_document, DELETE=self.delete_document)
            if count == 3 and action == "_create":
                return self._methods(request, PUT=self.write_document, POST=self.write_document)
        if head.startswith("_") and count == 1 and method in ("PUT", "DELETE", "HEAD"):
            _check_index_name(head)
        raise _NoHandler(request.path, method)

    @staticmethod
    def _methods(request: Request, **handlers: Callable[[Request], Answer]) -> Answer:
        handler = handlers.get(request.method)
        if handler is None:
            raise _WrongMethod(request.path, request.method, sorted(handlers))
        return handler(request)

    # info ----------------------------------------------------------------------------------

    def info(self, request: Request) -> Answer:
        major, minor = (self.version.split(".") + ["0"])[:2]
        return 200, {
            "name": "stand-in-node",
            "cluster_name": self.cluster_name,
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": self.version,
                "build_flavor": "default",
                "build_type": "tar",
                "build_hash": "0" * 40,
                "build_date": "2025-01-01T00:00:00.000Z",
                "build_snapshot": False,
                "lucene_version": "10.2.2",
                "minimum_wire_compatibility_version": f"{int(major) - 1}.19.0",
                "minimum_index_compatibility_version": f"{int(major) - 1}.0.0",
            },
            "tagline": "You Know, for Search",
        }

    def cluster_health(self, request: Request) -> Answer:
        shards = len(self.indices)
        return 200, {
            "cluster_name": self.cluster_name, "status": "green", "timed_out": False, "number_of_nodes": 1,
            "number_of_data_nodes": 1, "active_primary_shards": shards, "active_shards": shards,
            "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0,
            "unassigned_primary_shards": 0, "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0, "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0,
        }

    # templates and policies ----------------------------------------------------------------

    def put_index_template(self, request: Request) -> Answer:
        name = request.segments[1]
        body = request.object_body()
        if request.flag("create") and name in self.index_templates:
            raise ApiError(400, "illegal_argument_exception", f"index template [{name}] already exists")
        patterns = body.get("index_patterns")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise ApiError(400, "action_request_validation_exception", "Validation Failed: 1: index patterns are missing;")
        unknown = set(body) - {"index_patterns", "template", "composed_of", "priority", "version", "_meta",
                               "data_stream", "allow_auto_create", "ignore_missing_component_templates",
                               "deprecated"}
        if unknown:
            raise _parsing_error(f"[index_template] unknown field [{sorted(unknown)[0]}]")
        ignored_missing = set(body.get("ignore_missing_component_templates") or [])
        missing = [part for part in body.get("composed_of") or [] if part not in self.component_templates
                   and part not in ignored_missing]
        if missing:
            raise ApiError(400, "invalid_index_template_exception",
                           f"index_template [{name}] invalid, cause [index template [{name}] specifies component "
                           f"templates {_java_list(missing)} that do not exist]")
        priority = int(body.get("priority") or 0)
        for other_name, other in self.index_templates.items():
            if other_name == name or int(other.get("priority") or 0) != priority:
                continue
            other_patterns = list(other["index_patterns"])
            if any(_patterns_overlap(mine, theirs) for mine in patterns for theirs in other_patterns):
                raise ApiError(
                    400, "illegal_argument_exception",
                    f"index template [{name}] has index patterns {_java_list(patterns)} matching patterns from existing "
                    f"templates [{other_name}] with patterns ({other_name} => {_java_list(other_patterns)}) that have the same "
                    f"priority [{priority}], multiple index templates may not match during index creation, please "
                    f"use a different priority",
                )
        stored = copy.deepcopy(body)
        stored["index_patterns"] = list(patterns)
        stored.setdefault("composed_of", [])
        if "data_stream" in stored:
            stored["data_stream"] = {"hidden": False, "allow_custom_routing": False, **(stored["data_stream"] or {})}
        self.index_templates[name] = stored
        return 200, {"acknowledged": True}

    def get_index_template(self, request: Request) -> Answer:
        pattern = request.segments[1] if len(request.segments) > 1 else "*"
        found = [{"name": name, "index_template": copy.deepcopy(template)}
                 for name, template in self.index_templates.items()
                 if any(simple_match(part, name) for part in pattern.split(","))]
        if not found and "*" not in pattern:
            raise ApiError(404, "resource_not_found_exception", f"index template matching [{pattern}] not found")
        return 200, {"index_templates": found}

    def delete_index_template(self, request: Request) -> Answer:
        name = request.segments[1]
        names = [existing for existing in self.index_templates if simple_match(name, existing)]
        if not names:
            raise ApiError(404, "index_template_missing_exception", f"index_template [{name}] missing")
        for existing in names:
            users = [stream.name for stream in self.data_streams.values() if stream.template == existing]
            if users:
                raise ApiError(400, "illegal_argument_exception",
                               f"unable to remove composable templates [{existing}] as they are in use by a data "
                               f"streams {_java_list(users)}")
        for existing in names:
            del self.index_templates[existing]
        return 200, {"acknowledged": True}

    def put_component_template(self, request: Request) -> Answer:
        name = request.segments[1]
        body = request.object_body()
        if "template" not in body:
            raise ApiError(400, "action_request_validation_exception", "Validation Failed: 1: a template is required;")
        if request.flag("create") and name in self.component_templates:
            raise ApiError(400, "illegal_argument_exception", f"component template [{name}] already exists")
        self.component_templates[name] = copy.deepcopy(body)
        return 200, {"acknowledged": True}

    def get_component_template(self, request: Request) -> Answer:
        pattern = request.segments[1] if len(request.segments) > 1 else "*"
        found = [{"name": name, "component_template": copy.deepcopy(template)}
                 for name, template in self.component_templates.items() if simple_match(pattern, name)]
        if not found and "*" not in pattern:
            raise ApiError(404, "resource_not_found_exception", f"component template matching [{pattern}] not found")
        return 200, {"component_templates": found}

    def delete_component_template(self, request: Request) -> Answer:
        name = request.segments[1]
        if name not in self.component_templates:
            raise ApiError(404, "resource_not_found_exception", name)
        users = [tpl for tpl, body in self.index_templates.items() if name in (body.get("composed_of") or [])]
        if users:
            raise ApiError(400, "illegal_argument_exception",
                           f"component templates [{name}] cannot be removed as they are still in use by index "
                           f"templates {_java_list(users)}")
        del self.component_templates[name]
        return 200, {"acknowledged": True}

    def put_ilm_policy(self, request: Request) -> Answer:
        name = request.segments[2]
        body = request.object_body()
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise ApiError(400, "x_content_parse_exception", "[put_lifecycle_request] policy is required")
        unknown = set(policy) - {"phases", "_meta"}
        if unknown:
            raise ApiError(400, "x_content_parse_exception", f"[lifecycle_policy] unknown field [{sorted(unknown)[0]}]")
        previous = self.ilm_policies.get(name)
        self.ilm_policies[name] = IlmPolicy(copy.deepcopy(policy), (previous.version + 1) if previous else 1,
                                            self.now_ms(), policy.get("_meta"))
        return 200, {"acknowledged": True}

    def get_ilm_policy(self, request: Request) -> Answer:
        wanted = request.segments[2].split(",") if len(request.segments) > 2 else None
        if wanted is not None:
            missing = [name for name in wanted if name not in self.ilm_policies]
            if missing:
                raise ApiError(404, "resource_not_found_exception", f"Lifecycle policy not found: {_java_list(missing)}")
        answer: dict[str, Any] = {}
        for name, policy in self.ilm_policies.items():
            if wanted is not None and name not in wanted:
                continue
            templates = [tpl for tpl, body in self.index_templates.items()
                         if self._template_setting(body, "index.lifecycle.name") == name]
            answer[name] = {
                "version": policy.version,
                "modified_date": _iso(policy.modified_ms),
                "policy": copy.deepcopy(policy.policy),
                "in_use_by": {
                    "indices": [index.name for index in self.indices.values()
                                if index.settings.get("index.lifecycle.name") == name],
                    "data_streams": [stream.name for stream in self.data_streams.values()
                                     if stream.backing.settings.get("index.lifecycle.name") == name],
                    "composable_templates": templates,
                },
            }
        return 200, answer

    def delete_ilm_policy(self, request: Request) -> Answer:
        name = request.segments[2]
        if name not in self.ilm_policies:
            raise ApiError(404, "resource_not_found_exception", f"Lifecycle policy not found: {name}")
        del self.ilm_policies[name]
        return 200, {"acknowledged": True}

    def _template_setting(self, template: Mapping[str, Any], key: str) -> Any:
        settings: dict[str, Any] = {}
        for part in template.get("composed_of") or []:
            component = self.component_templates.get(part, {})
            settings.update(flatten_settings(component.get("template", {}).get("settings")))
        settings.update(flatten_settings((template.get("template") or {}).get("settings")))
        return settings.get(key)

    def matching_template(self, name: str) -> tuple[str, dict[str, Any]] | None:
        best: tuple[int, str, dict[str, Any]] | None = None
        for template_name, template in self.index_templates.items():
            if not any(simple_match(pattern, name) for pattern in template["index_patterns"]):
                continue
            if name.startswith(".") and not any(pattern.startswith(".") for pattern in template["index_patterns"]):
                continue
            priority = int(template.get("priority") or 0)
            if best is None or priority > best[0]:
                best = (priority, template_name, template)
        return None if best is None else (best[1], best[2])

    # indices and data streams --------------------------------------------------------------

    def _new_index(self, name: str, template: Mapping[str, Any] | None, body: Mapping[str, Any] | None,
                   data_stream: str | None) -> Index:
        mappings: dict[str, Any] = {"properties": {}}
        settings: dict[str, Any] = {}
        if template is not None:
            for part in template.get("composed_of") or []:
                component = self.component_templates.get(part, {}).get("template", {})
                mappings = merge_mappings(mappings, component.get("mappings"))
                settings.update(flatten_settings(component.get("settings")))
            own = template.get("template") or {}
            mappings = merge_mappings(mappings, own.get("mappings"))
            settings.update(flatten_settings(own.get("settings")))
        if body:
            mappings = merge_mappings(mappings, body.get("mappings"))
            settings.update(flatten_settings(body.get("settings")))
        if data_stream is not None:
            # As Elasticsearch: @timestamp becomes a date unless the template maps it (e.g. as date_nanos).
            if "@timestamp" not in (mappings.get("properties") or {}):
                mappings = merge_mappings(mappings, {"properties": {"@timestamp": {"type": "date"}}})
            settings["index.hidden"] = True
        index = Index(name=name, mappings=mappings, settings=settings, created_ms=self.now_ms(),
                      data_stream=data_stream)
        self.indices[name] = index
        return index

    def _new_data_stream(self, name: str) -> DataStream:
        _check_index_name(name)
        found = self.matching_template(name)
        if found is None:
            raise ApiError(400, "illegal_argument_exception", f"no matching index template found for data stream [{name}]")
        template_name, template = found
        if "data_stream" not in template:
            raise ApiError(400, "illegal_argument_exception",
                           f"matching index template [{template_name}] for data stream [{name}] has no data stream "
                           f"template")
        stamp = datetime.fromtimestamp(self.clock(), tz=timezone.utc).strftime("%Y.%m.%d")
        backing = self._new_index(f".ds-{name}-{stamp}-000001", template, None, name)
        stream = DataStream(name, template_name, backing, bool(template["data_stream"].get("hidden")),
                            copy.deepcopy(template.get("_meta")))
        self.data_streams[name] = stream
        return stream

    def create_index(self, request: Request) -> Answer:
        name = request.segments[0]
        _check_index_name(name)
        if name in self.indices or name in self.data_streams:
            index = self.indices.get(name)
            raise ApiError(400, "resource_already_exists_exception",
                           f"index [{name}/{index.uuid if index else '_na_'}] already exists",
                           index_uuid=index.uuid if index else "_na_", index=name)
        body = request.object_body()
        unknown = set(body) - {"mappings", "settings", "aliases"}
        if unknown:
            raise _parsing_error(f"unknown key [{sorted(unknown)[0]}] for create index")
        if body.get("aliases"):
            raise _unsupported("index aliases")
        found = self.matching_template(name)
        if found is not None and "data_stream" in found[1]:
            raise ApiError(400, "illegal_argument_exception",
                           f"cannot create index with name [{name}], because it matches with template [{found[0]}] "
                           f"that creates data streams only, use create data stream api instead")
        self._new_index(name, found[1] if found else None, body, None)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def resolve(self, expression: str | None, ignore_unavailable: bool = False,
                allow_no_indices: bool = True) -> list[Index]:
        """Concrete indices for a search-style expression: comma lists, ``*`` patterns, ``-`` exclusions."""
        parts = [part.strip() for part in (expression or "_all").split(",") if part.strip()] or ["_all"]
        chosen: dict[str, Index] = {}
        for position, part in enumerate(parts):
            if part.startswith("-") and position > 0:
                for name in [name for name, index in chosen.items()
                             if simple_match(part[1:], name) or simple_match(part[1:], index.data_stream or "")]:
                    del chosen[name]
                continue
            pattern = "*" if part == "_all" else part
            if "*" in pattern:
                for stream in self.data_streams.values():
                    if simple_match(pattern, stream.name) and (not stream.hidden or pattern.startswith(".")):
                        chosen.setdefault(stream.backing.name, stream.backing)
                for name, index in self.indices.items():
                    if simple_match(pattern, name) and (not index.hidden or pattern.startswith(".")):
                        chosen.setdefault(name, index)
            elif pattern in self.data_streams:
                backing = self.data_streams[pattern].backing
                chosen.setdefault(backing.name, backing)
            elif pattern in self.indices:
                chosen.setdefault(pattern, self.indices[pattern])
            elif not ignore_unavailable:
                raise _index_not_found(pattern)
        if not chosen and not allow_no_indices:
            raise _index_not_found(expression or "_all")
        return list(chosen.values())

    def get_index(self, request: Request) -> Answer:
        expression = request.segments[0]
        indices = self.resolve(expression, request.flag("ignore_unavailable"),
                               _bool_param(request.params.get("allow_no_indices"), True))
        if request.method == "HEAD":
            return (200 if indices or "*" in expression else 404), None
        return 200, {index.name: self._describe_index(index) for index in indices}

    def _describe_index(self, index: Index) -> dict[str, Any]:
        settings = {
            **index.settings, "index.number_of_shards": "1", "index.number_of_replicas": "0",
            "index.uuid": index.uuid, "index.provided_name": index.name, "index.creation_date": str(index.created_ms),
            "index.version.created": "9000000",
        }
        described: dict[str, Any] = {"aliases": {}, "mappings": copy.deepcopy(index.mappings),
                                     "settings": nest_settings(settings)}
        if index.data_stream:
            described["data_stream"] = index.data_stream
        return described

    def delete_index(self, request: Request) -> Answer:
        expression = request.segments[0]
        targets: list[Index] = []
        for part in expression.split(","):
            if part in self.data_streams:
                raise ApiError(400, "illegal_argument_exception",
                               f"The provided expression [{part}] matches a data stream, specify the corresponding "
                               f"concrete indices instead.")
            if "*" in part:
                targets.extend(index for name, index in self.indices.items()
                               if simple_match(part, name) and not index.hidden)
            elif part in self.indices:
                index = self.indices[part]
                if index.data_stream is not None:
                    raise ApiError(400, "illegal_argument_exception",
                                   f"index [{part}] is the write index for data stream [{index.data_stream}] and "
                                   f"cannot be deleted")
                targets.append(index)
            elif not request.flag("ignore_unavailable"):
                raise _index_not_found(part)
        for index in targets:
            self.indices.pop(index.name, None)
        return 200, {"acknowledged": True}

    def create_data_stream(self, request: Request) -> Answer:
        name = request.segments[1]
        if name in self.data_streams:
            raise ApiError(400, "resource_already_exists_exception", f"data_stream [{name}] already exists")
        if name in self.indices:
            raise ApiError(400, "resource_already_exists_exception",
                           f"index [{name}/{self.indices[name].uuid}] already exists")
        self._new_data_stream(name)
        return 200, {"acknowledged": True}

    def get_data_stream(self, request: Request) -> Answer:
        expression = request.segments[1] if len(request.segments) > 1 else "*"
        found: dict[str, DataStream] = {}
        for part in expression.split(","):
            if "*" in part:
                found.update({name: stream for name, stream in self.data_streams.items() if simple_match(part, name)})
            elif part in self.data_streams:
                found[part] = self.data_streams[part]
            else:
                raise _index_not_found(part)
        return 200, {"data_streams": [self._describe_data_stream(stream) for stream in found.values()]}

    def _describe_data_stream(self, stream: DataStream) -> dict[str, Any]:
        policy = stream.backing.settings.get("index.lifecycle.name")
        managed_by = "Index Lifecycle Management" if policy else "Unmanaged"
        described: dict[str, Any] = {
            "name": stream.name,
            "timestamp_field": {"name": "@timestamp"},
            "indices": [{"index_name": stream.backing.name, "index_uuid": stream.backing.uuid, "prefer_ilm": True,
                         **({"ilm_policy": policy} if policy else {}), "managed_by": managed_by}],
            "generation": 1,
            "status": "GREEN",
            "template": stream.template,
            "next_generation_managed_by": managed_by,
            "prefer_ilm": True,
            "hidden": stream.hidden,
            "system": False,
            "allow_custom_routing": False,
            "replicated": False,
            "rollover_on_write": False,
        }
        if policy:
            described["ilm_policy"] = policy
        if stream.meta is not None:
            described["_meta"] = copy.deepcopy(stream.meta)
        return described

    def delete_data_stream(self, request: Request) -> Answer:
        expression = request.segments[1]
        names: list[str] = []
        for part in expression.split(","):
            if "*" in part:
                names.extend(name for name in self.data_streams if simple_match(part, name))
            elif part in self.data_streams:
                names.append(part)
            else:
                raise _index_not_found(part)
        for name in names:
            stream = self.data_streams.pop(name)
            self.indices.pop(stream.backing.name, None)
        return 200, {"acknowledged": True}

    def refresh(self, request: Request) -> Answer:
        expression = request.segments[0] if request.segments[0] != "_refresh" else None
        indices = self.resolve(expression, request.flag("ignore_unavailable"))
        return 200, {"_shards": {"total": len(indices), "successful": len(indices), "failed": 0}}

    def get_mapping(self, request: Request) -> Answer:
        indices = self.resolve(request.segments[0], request.flag("ignore_unavailable"))
        return 200, {index.name: {"mappings": copy.deepcopy(index.mappings)} for index in indices}

    def put_mapping(self, request: Request) -> Answer:
        indices = self.resolve(request.segments[0], request.flag("ignore_unavailable"))
        body = request.object_body()
        for index in indices:
            problem = _mapping_conflicts(index.mappings.get("properties", {}),
                                         _expand_properties(body.get("properties", {})))
            if problem:
                raise ApiError(400, "illegal_argument_exception", problem)
        for index in indices:
            index.mappings = merge_mappings(index.mappings, body)
        return 200, {"acknowledged": True}

    # writes --------------------------------------------------------------------------------

    def write_target(self, name: str, op: str, meta: Mapping[str, Any]) -> Index:
        """The index a write to ``name`` lands in, creating an index or data stream as Elasticsearch would."""
        stream = self.data_streams.get(name)
        if stream is None and name not in self.indices:
            if op == "delete":
                raise _index_not_found(name)
            _check_index_name(name)
            found = self.matching_template(name)
            if found is not None and found[1].get("allow_auto_create") is False:
                raise ApiError(404, "index_not_found_exception",
                               f"no such index [{name}] and composable template [{found[0]}] forbids index "
                               f"auto creation", index_uuid="_na_", index=name)
            if found is not None and "data_stream" in found[1]:
                stream = self._new_data_stream(name)
            else:
                self._new_index(name, found[1] if found else None, None, None)
        if stream is not None:
            if op != "create":
                raise ApiError(400, "illegal_argument_exception",
                               "only write ops with an op_type of create are allowed in data streams")
            return stream.backing
        index = self.indices[name]
        if index.data_stream is not None and op == "index" and meta.get("if_seq_no") is None:
            raise ApiError(400, "illegal_argument_exception",
                           f"index request with op_type=index and no if_primary_term and if_seq_no set targeting "
                           f"backing indices is disallowed, target corresponding data stream [{index.data_stream}] "
                           f"instead")
        return index

    def write(self, op: str, name: str, doc_id: str | None, meta: Mapping[str, Any], raw_source: bytes | None,
              refresh: bool, from_bulk: bool) -> dict[str, Any]:
        """One create/index/delete; returns the item body (with ``status``); raises ApiError for refusals."""
        if doc_id is None and op != "delete":
            doc_id = _auto_id()
        index_for_errors = name
        try:
            index = self.write_target(name, op, meta)
            index_for_errors = index.name
            if from_bulk:
                rejected = self.faults.draw_item_rejection()
                if rejected is not None:
                    raise ApiError(
                        rejected, _ERROR_TYPES.get(rejected, "exception"),
                        f"rejected execution of primary operation [shard_detail=[{index.name}][0][stand-in-node]] "
                        f"(injected by the Elasticsearch stand-in)",
                    )
            assert doc_id is not None
            if op == "delete":
                return self._delete(index, doc_id, meta, refresh)
            source = self._parse_source(raw_source, doc_id)
            if self.faults.refuses_document(source):
                raise ApiError(400, "document_parsing_exception",
                               f"failed to parse: document refused by an injected mapping error (id '{doc_id}')")
            if index.data_stream is not None:
                stamps = list(source_values(source, ["@timestamp"]))
                if not stamps:
                    raise ApiError(400, "document_parsing_exception",
                                   "failed to parse: data stream timestamp field [@timestamp] is missing",
                                   caused_by={"type": "illegal_argument_exception",
                                              "reason": "data stream timestamp field [@timestamp] is missing"})
                if len(stamps) > 1:
                    raise ApiError(400, "document_parsing_exception",
                                   "failed to parse: data stream timestamp field [@timestamp] encountered multiple values",
                                   caused_by={"type": "illegal_argument_exception",
                                              "reason": "data stream timestamp field [@timestamp] encountered "
                                                        "multiple values"})
            additions = DocumentMapper(index.mappings, doc_id).check(source) if self.check_mappings else []
            existing = index.docs.get(doc_id)
            self._check_version(index, op, doc_id, existing, meta)
        except ApiError as error:
            raise _ItemFailure(index_for_errors, doc_id, error) from None
        for path, mapping in additions:
            _add_mapping(index.mappings, path, mapping)
        return self._store(index, doc_id, source, existing, refresh)

    def _parse_source(self, raw: bytes | None, doc_id: str) -> dict[str, Any]:
        try:
            source = orjson.loads(raw or b"")
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, "document_parsing_exception", f"failed to parse: {error}",
                           caused_by={"type": "json_parse_exception", "reason": str(error)}) from None
        if not isinstance(source, dict):
            raise ApiError(400, "document_parsing_exception",
                           f"failed to parse: document with id '{doc_id}' is not a JSON object")
        return source

    @staticmethod
    def _check_version(index: Index, op: str, doc_id: str, existing: StoredDocument | None,
                       meta: Mapping[str, Any]) -> None:
        extra = {"index_uuid": index.uuid, "shard": "0", "index": index.name}
        if op == "create" and existing is not None:
            raise ApiError(409, "version_conflict_engine_exception",
                           f"[{doc_id}]: version conflict, document already exists (current version "
                           f"[{existing.version}])", **extra)
        if meta.get("if_seq_no") is not None:
            seq_no, term = int(meta["if_seq_no"]), int(meta.get("if_primary_term", 1))
            if existing is None:
                raise ApiError(409, "version_conflict_engine_exception",
                               f"[{doc_id}]: version conflict, required seqNo [{seq_no}], primary term [{term}] but "
                               f"no document was found", **extra)
            if existing.seq_no != seq_no or term != 1:
                raise ApiError(409, "version_conflict_engine_exception",
                               f"[{doc_id}]: version conflict, required seqNo [{seq_no}], primary term [{term}]. "
                               f"current document has seqNo [{existing.seq_no}] and primary term [1]", **extra)

    def _store(self, index: Index, doc_id: str, source: dict[str, Any], existing: StoredDocument | None,
               refresh: bool) -> dict[str, Any]:
        version = existing.version + 1 if existing else 1
        seq_no = index.next_seq_no
        index.next_seq_no += 1
        self._order += 1
        if existing is not None:
            del index.docs[doc_id]
        index.docs[doc_id] = StoredDocument(doc_id, source, version, seq_no, self._order)
        result = {
            "_index": index.name, "_id": doc_id, "_version": version,
            "result": "updated" if existing else "created",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "_seq_no": seq_no, "_primary_term": 1, "status": 200 if existing else 201,
        }
        if refresh:
            result["forced_refresh"] = True
        return result

    def _delete(self, index: Index, doc_id: str, meta: Mapping[str, Any], refresh: bool) -> dict[str, Any]:
        existing = index.docs.get(doc_id)
        self._check_version(index, "delete", doc_id, existing, meta)
        seq_no = index.next_seq_no
        index.next_seq_no += 1
        if existing is not None:
            del index.docs[doc_id]
        result = {
            "_index": index.name, "_id": doc_id, "_version": (existing.version + 1) if existing else 1,
            "result": "deleted" if existing else "not_found",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "_seq_no": seq_no, "_primary_term": 1, "status": 200 if existing else 404,
        }
        if refresh:
            result["forced_refresh"] = True
        return result

    def bulk(self, request: Request) -> Answer:
        started = time.monotonic()
        default_index = request.segments[0] if request.segments[0] != "_bulk" else None
        operations = _parse_bulk(request.body)
        for op, meta, _ in operations:
            if meta.get("_index", default_index) is None:
                raise ApiError(400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
            if op == "delete" and meta.get("_id") is None:
                raise ApiError(400, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
        refresh = request.params.get("refresh", "false") in ("", "true")
        require_alias = request.flag("require_alias")
        items: list[dict[str, Any]] = []
        for op, meta, raw_source in operations:
            name = str(meta.get("_index", default_index))
            doc_id = None if meta.get("_id") is None else str(meta["_id"])
            try:
                if op == "update":
                    raise _ItemFailure(name, doc_id, _unsupported("the bulk [update] action"))
                if _bool_param(meta.get("require_alias"), require_alias):
                    raise _ItemFailure(name, doc_id, ApiError(
                        404, "index_not_found_exception",
                        f"no such index [{name}] and [require_alias] request flag is [true] and [{name}] is not an alias",
                        index_uuid="_na_", index=name))
                item = self.write(op, name, doc_id, meta, raw_source, refresh, from_bulk=True)
            except _ItemFailure as failure:
                item = {"_index": failure.index, **({"_id": failure.doc_id} if failure.doc_id is not None else {}),
                        "status": failure.error.status, "error": failure.error.cause()}
            self.stats.bulk_items += 1
            self.stats.item_statuses[item["status"]] += 1
            items.append({op: item})
        errors = any(not 200 <= next(iter(item.values()))["status"] < 300 for item in items)
        return 200, {"errors": errors, "took": int((time.monotonic() - started) * 1000), "items": items}

    def write_document(self, request: Request) -> Answer:
        name, action = request.segments[0], request.segments[1]
        doc_id = request.segments[2] if len(request.segments) > 2 else None
        # Elasticsearch makes an auto-id POST /{index}/_doc a create unless op_type says otherwise.
        op_type = request.params.get("op_type", "create" if doc_id is None else "index")
        op = "create" if action == "_create" or op_type == "create" else "index"
        meta: dict[str, Any] = {key: request.params[key] for key in ("if_seq_no", "if_primary_term")
                                if key in request.params}
        refresh = request.params.get("refresh", "false") in ("", "true")
        try:
            item = self.write(op, name, doc_id, meta, request.body, refresh, from_bulk=False)
        except _ItemFailure as failure:
            raise failure.error from None
        status = item.pop("status")
        return status, item

    def _single_index(self, name: str) -> Index:
        if name in self.data_streams:
            raise ApiError(400, "illegal_argument_exception",
                           f"The provided expression [{name}] matches a data stream, specify the corresponding "
                           f"concrete indices instead.")
        index = self.indices.get(name)
        if index is None:
            raise _index_not_found(name)
        return index

    def get_document(self, request: Request) -> Answer:
        index = self._single_index(request.segments[0])
        doc_id = request.segments[2]
        doc = index.docs.get(doc_id)
        if doc is None:
            return 404, {"_index": index.name, "_id": doc_id, "found": False}
        return 200, {"_index": index.name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no,
                     "_primary_term": 1, "found": True, "_source": copy.deepcopy(doc.source)}

    def delete_document(self, request: Request) -> Answer:
        index = self._single_index(request.segments[0])
        meta: dict[str, Any] = {key: request.params[key] for key in ("if_seq_no", "if_primary_term")
                                if key in request.params}
        result = self._delete(index, request.segments[2], meta, request.flag("refresh"))
        status = result.pop("status")
        return status, result

    # search --------------------------------------------------------------------------------

    def _search_scope(self, request: Request) -> list[Index]:
        expression = request.segments[0] if not request.segments[0].startswith("_") else None
        if "q" in request.params:
            raise _unsupported("the [q] parameter (query string search)")
        return self.resolve(expression, request.flag("ignore_unavailable"),
                            _bool_param(request.params.get("allow_no_indices"), True))

    def _matching(self, indices: list[Index], query: Any) -> list[tuple[Index, StoredDocument]]:
        matcher = QueryCompiler(float(self.now_ms())).compile(query)
        hits = [(index, doc) for index in indices for doc in index.docs.values() if matcher(index, doc)]
        hits.sort(key=lambda hit: hit[1].order)
        return hits

    def count(self, request: Request) -> Answer:
        indices = self._search_scope(request)
        body = request.object_body()
        unknown = set(body) - {"query"}
        if unknown:
            raise _parsing_error(f"request does not support [{sorted(unknown)[0]}]")
        return 200, {"count": len(self._matching(indices, body.get("query"))), "_shards": _shards(len(indices))}

    def search(self, request: Request) -> Answer:
        started = time.monotonic()
        indices = self._search_scope(request)
        body = request.object_body()
        for key in body:
            if key in _UNSUPPORTED_SEARCH_KEYS:
                raise _unsupported(f"[{key}] in a search request")
            if key not in _SEARCH_BODY_KEYS:
                token = "START_OBJECT" if isinstance(body[key], dict) else "START_ARRAY" if isinstance(body[key], list) \
                    else "VALUE_STRING"
                raise _parsing_error(f"Unknown key for a {token} in [{key}].")
        params = request.params
        size = int(params.get("size", body.get("size", 10)))
        offset = int(params.get("from", body.get("from", 0)))
        if size < 0:
            raise ApiError(400, "illegal_argument_exception", f"[size] parameter cannot be negative, found [{size}]")
        if offset < 0:
            raise ApiError(400, "illegal_argument_exception", f"[from] parameter cannot be negative, found [{offset}]")
        if offset + size > MAX_RESULT_WINDOW:
            raise ApiError(400, "illegal_argument_exception",
                           f"Result window is too large, from + size must be less than or equal to: "
                           f"[{MAX_RESULT_WINDOW}] but was [{offset + size}]. See the scroll api for a more efficient "
                           f"way to request large data sets. This limit can be set by changing the "
                           f"[index.max_result_window] index level setting.")
        sort_keys = parse_sort(params.get("sort", body.get("sort")))
        search_after = body.get("search_after")
        if search_after is not None:
            if not sort_keys:
                raise ApiError(400, "illegal_argument_exception", "Sort must contain at least one field.")
            if len(search_after) != len(sort_keys):
                raise ApiError(400, "illegal_argument_exception",
                               f"search_after has {len(search_after)} value(s) but sort has {len(sort_keys)}.")
            if offset:
                raise ApiError(400, "illegal_argument_exception",
                               "[from] parameter must be set to 0 when [search_after] is used.")
        hits = self._matching(indices, body.get("query"))
        if body.get("post_filter") is not None:
            post = QueryCompiler(float(self.now_ms())).compile(body["post_filter"])
            hits = [hit for hit in hits if post(*hit)]
        total = len(hits)
        sort_values: dict[int, list[Any]] = {}
        if sort_keys:
            sorter = _Sorter(sort_keys, indices)
            sort_values = {doc.order: sorter.values(index, doc) for index, doc in hits}

            def by_sort_values(left: tuple[Index, StoredDocument], right: tuple[Index, StoredDocument]) -> int:
                return sorter.compare(sort_values[left[1].order], sort_values[right[1].order])

            hits.sort(key=cmp_to_key(by_sort_values))
            if search_after is not None:
                after = sorter.normalise_after(search_after)
                hits = [hit for hit in hits if sorter.compare(sort_values[hit[1].order], after) > 0]
        page = hits[offset:offset + size]
        includes, excludes, wants_source = _source_filter(body.get("_source"), params)
        scored = not sort_keys or _bool_param(body.get("track_scores"))
        rendered: list[dict[str, Any]] = []
        for index, doc in page:
            hit: dict[str, Any] = {"_index": index.name, "_id": doc.id, "_score": 1.0 if scored else None}
            if _bool_param(params.get("version", body.get("version"))):
                hit["_version"] = doc.version
            if _bool_param(params.get("seq_no_primary_term", body.get("seq_no_primary_term"))):
                hit["_seq_no"], hit["_primary_term"] = doc.seq_no, 1
            if wants_source:
                source = copy.deepcopy(doc.source)
                hit["_source"] = filter_source(source, includes, excludes) if includes or excludes else source
            if sort_keys:
                hit["sort"] = list(sort_values[doc.order])
            rendered.append(hit)
        hits_body: dict[str, Any] = {}
        track = params.get("track_total_hits", body.get("track_total_hits", MAX_RESULT_WINDOW))
        if str(track).lower() != "false":
            limit = None if str(track).lower() == "true" else int(track)
            if limit is not None and total > limit:
                hits_body["total"] = {"value": limit, "relation": "gte"}
            else:
                hits_body["total"] = {"value": total, "relation": "eq"}
            if _bool_param(params.get("rest_total_hits_as_int")):
                hits_body["total"] = hits_body["total"]["value"]
        hits_body["max_score"] = (1.0 if rendered else None) if scored else None
        hits_body["hits"] = rendered
        return 200, {"took": int((time.monotonic() - started) * 1000), "timed_out": False,
                     "_shards": _shards(len(indices)), "hits": hits_body}

    # introspection -------------------------------------------------------------------------

    def documents(self, pattern: str) -> list[StoredDocument]:
        indices = self.resolve(pattern, ignore_unavailable=True)
        return sorted((doc for index in indices for doc in index.docs.values()), key=lambda doc: doc.order)


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _java_list(items: Sequence[Any]) -> str:
    """A list as Elasticsearch's messages print it: [a, b]."""
    return f"[{', '.join(str(item) for item in items)}]"


def _shards(count: int) -> dict[str, int]:
    return {"total": count, "successful": count, "skipped": 0, "failed": 0}


def _patterns_overlap(left: str, right: str) -> bool:
    return simple_match(left, right.replace("*", "x")) or simple_match(right, left.replace("*", "x"))


def _source_filter(spec: Any, params: Mapping[str, str]) -> tuple[list[str], list[str], bool]:
    includes: list[str] = []
    excludes: list[str] = []
    wanted = True
    if "_source" in params:
        spec = params["_source"]
        if spec in ("true", "false"):
            spec = spec == "true"
        else:
            spec = spec.split(",")
    if spec is False:
        wanted = False
    elif isinstance(spec, str):
        includes = [spec]
    elif isinstance(spec, list):
        includes = [str(item) for item in spec]
    elif isinstance(spec, dict):
        raw_in = spec.get("includes", spec.get("include")) or []
        raw_out = spec.get("excludes", spec.get("exclude")) or []
        includes = [raw_in] if isinstance(raw_in, str) else [str(item) for item in raw_in]
        excludes = [raw_out] if isinstance(raw_out, str) else [str(item) for item in raw_out]
    if "_source_includes" in params:
        includes = params["_source_includes"].split(",")
    if "_source_excludes" in params:
        excludes = params["_source_excludes"].split(",")
    return includes, excludes, wanted


class _Sorter:
    """Per-document sort values and their ordering, as Elasticsearch's field sort computes them."""

    def __init__(self, keys: list[SortKey], indices: list[Index]) -> None:
        self.keys = keys
        self.kinds: list[str | None] = []
        for key in keys:
            if key.field == "_id":
                raise ApiError(400, "illegal_argument_exception",
                               "Fielddata access on the _id field is disallowed, you can re-enable it by updating the "
                               "dynamic cluster setting: indices.id_field_data.enabled")
            if key.field in ("_score", "_doc", "_index", "_shard_doc"):
                self.kinds.append(key.field)
                continue
            kinds = {resolved.kind for index in indices if (resolved := resolve_field(index.mappings, key.field))}
            if not kinds and indices:
                if key.unmapped_type is None:
                    raise ApiError(400, "query_shard_exception", f"No mapping found for [{key.field}] in order to sort on")
                kinds = {key.unmapped_type}
            kind = next(iter(sorted(kinds)), None)
            if kind in _TEXT_TYPES:
                raise ApiError(
                    400, "illegal_argument_exception",
                    f"Fielddata is disabled on [{key.field}] in [{indices[0].name}]. Text fields are not optimised for "
                    f"operations that require per-document field data like aggregations and sorting, so these "
                    f"operations are disabled by default. Please use a keyword field instead.",
                )
            self.kinds.append(kind)

    def _numeric(self, position: int) -> bool:
        kind = self.kinds[position]
        return kind in _NUMERIC_TYPES or kind in _DATE_TYPES or kind == "boolean"

    def _convert(self, position: int, value: Any) -> Any:
        kind = self.kinds[position]
        if kind in _DATE_TYPES:
            ms = parse_date_ms(value)
            return None if ms is None else int(ms)
        if kind in _NUMERIC_TYPES:
            number = _as_number(value)
            return None if number is None else int(number) if kind in _INTEGER_TYPES else number
        if kind == "boolean":
            as_bool = _as_bool(value)
            return None if as_bool is None else int(as_bool)
        return _json_text(value)

    def _missing(self, position: int) -> Any:
        key = self.keys[position]
        if key.missing_value is not None:
            return self._convert(position, key.missing_value)
        if not self._numeric(position):
            return None
        last = not key.missing_first
        return LONG_MAX if last != key.descending else LONG_MIN

    def values(self, index: Index, doc: StoredDocument) -> list[Any]:
        out: list[Any] = []
        for position, key in enumerate(self.keys):
            if key.field == "_score":
                out.append(1.0)
                continue
            if key.field in ("_doc", "_shard_doc"):
                out.append(doc.order)
                continue
            if key.field == "_index":
                out.append(index.name)
                continue
            resolved = resolve_field(index.mappings, key.field)
            candidates: list[Any] = []
            if resolved is not None:
                raw = list(source_values(doc.source, resolved.source_path))
                if resolved.kind not in _NUMERIC_TYPES | _DATE_TYPES | {"boolean"}:
                    raw = _string_terms(resolved, raw)
                candidates = [value for value in (self._convert(position, item) for item in raw) if value is not None]
            if not candidates:
                out.append(self._missing(position))
            else:
                out.append(max(candidates, key=cmp_to_key(_compare)) if key.descending
                           else min(candidates, key=cmp_to_key(_compare)))
        return out

    def normalise_after(self, after: Sequence[Any]) -> list[Any]:
        normalised: list[Any] = []
        for position, value in enumerate(after):
            if value is None or self.kinds[position] in ("_score", "_doc", "_shard_doc", "_index"):
                normalised.append(value)
            elif self.kinds[position] in _DATE_TYPES and isinstance(value, str) and not _EPOCH_RE.fullmatch(value):
                normalised.append(self._convert(position, value))
            elif self._numeric(position):
                normalised.append(value if isinstance(value, (int, float)) and not isinstance(value, bool)
                                  else _as_number(value))
            else:
                normalised.append(_json_text(value))
        return normalised

    def compare(self, left: Sequence[Any], right: Sequence[Any]) -> int:
        for position, key in enumerate(self.keys):
            a, b = left[position], right[position]
            if a is None or b is None:
                if a is None and b is None:
                    continue
                # Missing string values: nulls go last (or first), whatever the order.
                missing_rank = 1 if not key.missing_first else -1
                return missing_rank if a is None else -missing_rank
            result = _compare(a, b)
            if result:
                return -result if key.descending else result
        return 0


class DocumentMapper:
    """Checks a document against an index's mappings and works out the dynamic mappings it adds."""

    def __init__(self, mappings: Mapping[str, Any], doc_id: str) -> None:
        self.mappings = mappings
        self.doc_id = doc_id
        self.additions: dict[tuple[str, ...], dict[str, Any]] = {}
        self.date_detection = _bool_param(mappings.get("date_detection"), True)
        self.numeric_detection = _bool_param(mappings.get("numeric_detection"), False)
        self.templates = list(mappings.get("dynamic_templates") or [])

    def check(self, source: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
        self._walk_object(source, (), str(self.mappings.get("dynamic", "true")).lower())
        return sorted(self.additions.items(), key=lambda item: len(item[0]))

    def _mapping_at(self, path: tuple[str, ...]) -> Mapping[str, Any] | None:
        if path in self.additions:
            return self.additions[path]
        node: Mapping[str, Any] = self.mappings
        for segment in path:
            properties = node.get("properties")
            if properties is None or segment not in properties:
                return None
            node = properties[segment]
        return node

    def _walk_object(self, node: Mapping[str, Any], path: tuple[str, ...], dynamic: str) -> None:
        for key, value in node.items():
            if key == "":
                raise self._error("field name cannot be an empty string")
            first, _, rest = key.partition(".")
            if rest:
                value = {rest: value}
            self._walk_value(value, path + (first,), dynamic)

    def _walk_value(self, value: Any, path: tuple[str, ...], dynamic: str) -> None:
        if value is None:
            return
        if isinstance(value, list):
            for item in value:
                self._walk_value(item, path, dynamic)
            return
        mapping = self._mapping_at(path)
        dotted = ".".join(path)
        if mapping is None:
            if dynamic == "strict":
                parent = ".".join(path[:-1]) or "_doc"
                raise ApiError(400, "strict_dynamic_mapping_exception",
                               f"mapping set to strict, dynamic introduction of [{path[-1]}] within [{parent}] is not "
                               f"allowed")
            if dynamic == "false":
                return
            mapping = self._dynamic_mapping(value, path)
            self.additions[path] = mapping
        kind = mapping_type(mapping)
        if mapping.get("enabled") is False or kind in _STRUCTURED_TYPES:
            return
        if kind in _OBJECT_TYPES:
            if not isinstance(value, dict):
                raise ApiError(400, "document_parsing_exception",
                               f"object mapping for [{dotted}] tried to parse field [{path[-1]}] as object, but found "
                               f"a concrete value")
            self._walk_object(value, path, str(mapping.get("dynamic", dynamic)).lower())
            return
        if isinstance(value, dict):
            raise self._field_error(dotted, kind, value, "illegal_state_exception",
                                    "Can't get text on a START_OBJECT")
        if _bool_param(mapping.get("ignore_malformed")):
            return
        if kind in _NUMERIC_TYPES:
            if isinstance(value, bool):
                raise self._field_error(dotted, kind, value, "illegal_argument_exception",
                                        f"Current token (VALUE_{str(value).upper()}) not numeric, can not use numeric "
                                        f"value accessors")
            if _as_number(value) is None:
                raise self._field_error(dotted, kind, value, "number_format_exception", f'For input string: "{value}"')
        elif kind in _DATE_TYPES:
            if "format" not in mapping and parse_date_ms(value) is None:
                raise self._field_error(dotted, kind, value, "illegal_argument_exception",
                                        f"failed to parse date field [{value}] with format "
                                        f"[strict_date_optional_time||epoch_millis]")
        elif kind == "boolean":
            if _as_bool(value) is None:
                raise self._field_error(dotted, kind, value, "illegal_argument_exception",
                                        f"Failed to parse value [{value}] as only [true] or [false] are allowed.")

    def _error(self, reason: str) -> ApiError:
        return ApiError(400, "document_parsing_exception", f"failed to parse: {reason}")

    def _field_error(self, dotted: str, kind: str, value: Any, cause_type: str, cause: str) -> ApiError:
        preview = _json_text(value) if not isinstance(value, dict) else str(value)
        return ApiError(400, "document_parsing_exception",
                        f"failed to parse field [{dotted}] of type [{kind}] in document with id '{self.doc_id}'. "
                        f"Preview of field's value: '{preview}'",
                        caused_by={"type": cause_type, "reason": cause})

    def _dynamic_mapping(self, value: Any, path: tuple[str, ...]) -> dict[str, Any]:
        detected: str
        default: dict[str, Any]
        if isinstance(value, dict):
            detected, default = "object", {"properties": {}}
        elif isinstance(value, bool):
            detected, default = "boolean", {"type": "boolean"}
        elif isinstance(value, int):
            detected, default = "long", {"type": "long"}
        elif isinstance(value, float):
            detected, default = "double", {"type": "float"}
        elif self.date_detection and isinstance(value, str) and _DATE_DETECT_RE.fullmatch(value) \
                and parse_date_ms(value) is not None:
            detected, default = "date", {"type": "date"}
        elif self.numeric_detection and isinstance(value, str) and _as_number(value) is not None:
            detected = "long" if _EPOCH_RE.fullmatch(value) and "." not in value else "double"
            default = {"type": "long" if detected == "long" else "float"}
        else:
            detected = "string"
            default = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
        name, dotted = path[-1], ".".join(path)
        for entry in self.templates:
            template_name, spec = next(iter(entry.items()))
            del template_name
            kinds = spec.get("match_mapping_type")
            if kinds is not None and not ("*" in _as_list(kinds) or detected in _as_list(kinds)):
                continue
            if "unmatch_mapping_type" in spec and detected in _as_list(spec["unmatch_mapping_type"]):
                continue
            if "match" in spec and not _matches_any(spec["match"], name):
                continue
            if "unmatch" in spec and _matches_any(spec["unmatch"], name):
                continue
            if "path_match" in spec and not _matches_any(spec["path_match"], dotted):
                continue
            if "path_unmatch" in spec and _matches_any(spec["path_unmatch"], dotted):
                continue
            if "mapping" not in spec:
                continue
            mapping: dict[str, Any] = json.loads(
                json.dumps(spec["mapping"]).replace("{name}", name)
                .replace("{dynamic_type}", "keyword" if detected == "string" else detected)
            )
            if "type" not in mapping and detected != "object":
                mapping = {**default, **mapping}
            if detected == "object" and "type" not in mapping:
                mapping.setdefault("properties", {})
            return mapping
        return default


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _add_mapping(mappings: dict[str, Any], path: tuple[str, ...], mapping: dict[str, Any]) -> None:
    node = mappings
    for segment in path[:-1]:
        node = node.setdefault("properties", {}).setdefault(segment, {"properties": {}})
    properties = node.setdefault("properties", {})
    if path[-1] not in properties:
        properties[path[-1]] = copy.deepcopy(mapping)


def _parse_bulk(body: bytes) -> list[tuple[str, dict[str, Any], bytes | None]]:
    if body and not body.endswith(b"\n"):
        raise ApiError(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
    lines = body.split(b"\n")
    operations: list[tuple[str, dict[str, Any], bytes | None]] = []
    position = 0
    while position < len(lines):
        line_number = position + 1
        line = lines[position].strip()
        position += 1
        if not line:
            continue
        try:
            action = orjson.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "illegal_argument_exception",
                           f"Malformed action/metadata line [{line_number}], expected START_OBJECT or END_OBJECT but "
                           f"found [VALUE_STRING]") from None
        if not isinstance(action, dict) or len(action) != 1:
            raise ApiError(400, "illegal_argument_exception",
                           f"Malformed action/metadata line [{line_number}], expected a simple value for field "
                           f"[{next(iter(action), '')}] but found [START_OBJECT]" if isinstance(action, dict) else
                           f"Malformed action/metadata line [{line_number}], expected START_OBJECT but found "
                           f"[{type(action).__name__}]")
        op, meta = next(iter(action.items()))
        if op not in ("create", "index", "delete", "update"):
            raise ApiError(400, "illegal_argument_exception",
                           f"Malformed action/metadata line [{line_number}], expected field [create], [delete], "
                           f"[index] or [update] but found [{op}]")
        if not isinstance(meta, dict):
            raise ApiError(400, "illegal_argument_exception",
                           f"Malformed action/metadata line [{line_number}], expected START_OBJECT but found "
                           f"[VALUE_STRING]")
        unknown = set(meta) - _BULK_META_KEYS
        if unknown:
            raise ApiError(400, "illegal_argument_exception",
                           f"Action/metadata line [{line_number}] contains an unknown parameter [{sorted(unknown)[0]}]")
        source: bytes | None = None
        if op != "delete":
            if position >= len(lines) or (position == len(lines) - 1 and not lines[position].strip()):
                raise ApiError(400, "action_request_validation_exception",
                               "Validation Failed: 1: source is missing;")
            source = lines[position]
            position += 1
        operations.append((op, meta, source))
    if not operations:
        raise ApiError(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
    return operations


class _ItemFailure(Exception):
    def __init__(self, index: str, doc_id: str | None, error: ApiError) -> None:
        super().__init__(error.reason)
        self.index = index
        self.doc_id = doc_id
        self.error = error


class _NoHandler(Exception):
    def __init__(self, path: str, method: str) -> None:
        super().__init__(f"no handler found for uri [{path}] and method [{method}]")


class _WrongMethod(Exception):
    def __init__(self, path: str, method: str, allowed: list[str]) -> None:
        super().__init__(f"Incorrect HTTP method for uri [{path}] and method [{method}], allowed: [{', '.join(allowed)}]")


# --- the HTTP server ----------------------------------------------------------------------------


class ElasticsearchStandIn:
    """An Elasticsearch stand-in on a loopback port, in the caller's event loop.

    ``async with ElasticsearchStandIn() as es:`` starts it (``es.url`` is
    ``http://127.0.0.1:PORT``); ``start()`` returns that URL and ``stop()``
    closes it, keeping its data and port so that ``start()`` serves the same
    data again on the same port. ``refuse()`` closes the listening socket and
    every open connection (clients get connection refused); ``accept()``
    listens again on the same port.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        version: str = "9.1.0",
        builtin_templates: bool = True,
        clock: Callable[[], float] = time.time,
        cluster_name: str = "stand-in",
    ) -> None:
        self.host = host
        self.port = port
        self.version = version
        self.faults = Faults()
        self.stats = Stats()
        self.cluster = Cluster(self.faults, self.stats, clock, builtin_templates, version, cluster_name)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def __aenter__(self) -> ElasticsearchStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> str:
        if self._runner is None:
            app = web.Application(client_max_size=MAX_CONTENT_LENGTH)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            self.port = runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def refuse(self) -> None:
        """Stop listening and drop open connections; the data and the port are kept for ``accept()``."""
        await self.stop()

    async def accept(self) -> None:
        """Listen again, on the same port as before."""
        await self.start()

    # introspection -------------------------------------------------------------------------

    def documents(self, pattern: str = "*") -> list[dict[str, Any]]:
        """Sources of the documents in the indices/data streams ``pattern`` names, in write order (copies)."""
        return [copy.deepcopy(doc.source) for doc in self.cluster.documents(pattern)]

    def ids(self, pattern: str) -> list[str]:
        return [doc.id for doc in self.cluster.documents(pattern)]

    def document(self, index: str, doc_id: str) -> dict[str, Any] | None:
        for doc in self.cluster.documents(index):
            if doc.id == doc_id:
                return copy.deepcopy(doc.source)
        return None

    def index_names(self) -> list[str]:
        return list(self.cluster.indices)

    def data_stream_names(self) -> list[str]:
        return list(self.cluster.data_streams)

    def mappings(self, index: str) -> dict[str, Any]:
        """The mappings of a concrete index or of a data stream's backing index."""
        return copy.deepcopy(self.cluster.resolve(index)[0].mappings)

    # HTTP ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        self.stats.requests[f"{request.method} {request.path}"] += 1
        if path.rstrip("/").endswith("/_bulk"):
            self.stats.bulk_requests += 1
        media_type = _response_media_type(request.headers.get("Accept"))
        await self.faults.wait_released()
        injected = self.faults.draw_request_failure(request.path)
        if injected is not None:
            self.stats.failed_requests += 1
            response = _injected_failure(injected, media_type)
        else:
            response = await self._answer(request, path, media_type)
        if self.faults.delay:
            await asyncio.sleep(self.faults.delay)
        return response

    async def _answer(self, request: web.Request, path: str, media_type: str) -> web.Response:
        try:
            problem = _media_type_problem(request.headers.get("Accept"), request.headers.get("Content-Type"),
                                          int(self.version.split(".")[0]), request.can_read_body)
            if problem is not None:
                raise problem
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(413, "content_too_long_exception",
                               f"request body is too large, exceeds the maximum of [{MAX_CONTENT_LENGTH}] bytes") from None
            segments = [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []
            call = Request(request.method, request.path, segments, {key: request.query[key] for key in request.query},
                           body)
            status, payload = self.cluster.handle(call)
        except ApiError as error:
            status, payload = error.status, error.body()
        except _WrongMethod as error:
            status, payload = 405, {"error": str(error), "status": 405}
        except _NoHandler as error:
            status, payload = 400, {"error": str(error), "status": 400}
        except Exception as error:  # a bug in the stand-in: answer like Elasticsearch would, and record it
            self.stats.internal_errors.append(f"{request.method} {request.path_qs}: {error!r}")
            status, payload = 500, ApiError(500, "exception", f"stand-in failure: {error!r}").body()
        if request.method == "HEAD":
            return web.Response(status=status, headers=_product_headers(media_type))
        if "filter_path" in request.query and isinstance(payload, (dict, list)):
            payload = filter_path(payload, request.query["filter_path"])
        return web.Response(status=status, body=orjson.dumps(payload), headers=_product_headers(media_type))


def _product_headers(media_type: str) -> dict[str, str]:
    return {"X-Elastic-Product": "Elasticsearch", "Content-Type": media_type}


def _compat_version(header: str | None) -> int | None:
    if not header or "vnd.elasticsearch+" not in header:
        return None
    found = re.search(r"compatible-with\s*=\s*(\d+)", header)
    return int(found.group(1)) if found else None


def _response_media_type(accept: str | None) -> str:
    version = _compat_version(accept)
    if version is None:
        return "application/json"
    return f"application/vnd.elasticsearch+json;compatible-with={version}"


def _media_type_problem(accept: str | None, content_type: str | None, major: int, has_body: bool) -> ApiError | None:
    accept_version = _compat_version(accept)
    content_version = _compat_version(content_type) if has_body else None
    for header, version in (("Accept", accept_version), ("Content-Type", content_version)):
        if version is not None and version not in (major, major - 1):
            return ApiError(400, "media_type_header_exception", f"Invalid media-type value on headers [{header}]",
                            caused_by={"type": "status_exception",
                                       "reason": f"Compatible version must be equal or less than the current version "
                                                 f"[{major}], and greater than or equal to [{major - 1}]"})
    if accept_version is not None and content_version is not None and accept_version != content_version:
        return ApiError(400, "media_type_header_exception", "Invalid media-type value on headers [Accept, Content-Type]",
                        caused_by={"type": "status_exception",
                                   "reason": f"A compatible version is required on both Content-Type and Accept headers "
                                             f"if either one has requested a compatible version and the compatible "
                                             f"versions must match. Accept={accept}, Content-Type={content_type}"})
    if has_body and content_type:
        base = content_type.split(";")[0].strip().lower()
        if base not in ("application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
                        "application/vnd.elasticsearch+x-ndjson"):
            return ApiError(406, "media_type_header_exception",
                            f"Content-Type header [{content_type}] is not supported")
    return None


def _injected_failure(status: int, media_type: str) -> web.Response:
    if status in (502, 504):
        # What a proxy in front of Elasticsearch answers: not Elasticsearch's header, not JSON.
        reason = "Bad Gateway" if status == 502 else "Gateway Timeout"
        return web.Response(status=status, text=f"{status} {reason}", content_type="text/plain")
    if status == 429:
        error = ApiError(429, "es_rejected_execution_exception",
                         "rejected execution of coordinating operation (injected by the Elasticsearch stand-in)")
    elif status == 503:
        error = ApiError(503, "cluster_block_exception",
                         "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized]; (injected by the "
                         "Elasticsearch stand-in)")
    else:
        error = ApiError(status, _ERROR_TYPES.get(status, "exception"),
                         "request failed (injected by the Elasticsearch stand-in)")
    return web.Response(status=status, body=json.dumps(error.body()).encode(), headers=_product_headers(media_type))


async def _serve_forever(host: str, port: int, builtin_templates: bool, check_mappings: bool) -> None:
    server = ElasticsearchStandIn(host, port, builtin_templates=builtin_templates)
    server.cluster.check_mappings = check_mappings
    url = await server.start()
    print(f"Elasticsearch stand-in listening on {url} (Ctrl-C or SIGTERM stops it)", flush=True)
    # Handlers of its own: a process started in the background by a non-interactive shell inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt, so Ctrl-C alone would not do.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar.testing.elastic",
                                     description="Serve the Elasticsearch stand-in until Ctrl-C.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--no-builtin-templates", action="store_true",
                        help="start without the logs/metrics/synthetics stack templates")
    parser.add_argument("--no-mapping-checks", action="store_true",
                        help="store documents without checking them against the mappings (the mapper, in Python, "
                             "caps ingest at a few thousand documents a second; for throughput measurements)")
    arguments = parser.parse_args(argv)
    try:
        asyncio.run(_serve_forever(arguments.host, arguments.port, not arguments.no_builtin_templates,
                                   not arguments.no_mapping_checks))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
