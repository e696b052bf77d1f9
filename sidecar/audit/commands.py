"""`sidecar audit verify|search|replay` and `sidecar es setup`: the auditor's and operator's tools.

Elasticsearch credentials, TLS settings and the data stream name come from
the same configuration the sidecar runs with (`--config FILE`, or
`SIDECAR_AUDIT__ELASTICSEARCH__*` variables), so the tools reach the same
index with the same rights; `--es` and `--index` override the address and
target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from sidecar.config import ENV_CONFIG_FILE, ConfigError, ElasticsearchSinkConfig, load_config, parse_duration

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="verify, search and replay the audit trail")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = actions.add_parser("verify", help="walk the hash chain and report altered, deleted or cut-off records")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, metavar="PATH", help="JSON Lines file, or a directory of them")
    source.add_argument("--es", metavar="URL", help="Elasticsearch URL")
    verify.add_argument("--index", metavar="PATTERN", help="index or data stream pattern (default: the configured one)")
    verify.add_argument("--instance", metavar="ID", help="only this instance's chain (service.node.name)")
    key = verify.add_mutually_exclusive_group()
    key.add_argument("--public-key", type=Path, metavar="FILE", help="Ed25519 public key (PEM) to check checkpoints")
    key.add_argument("--hmac-key", type=Path, metavar="FILE", help="shared HMAC key to check checkpoints")
    verify.add_argument(
        "--allow-missing-head", action="store_true",
        help="accept chains whose oldest records are gone (deleted by the retention policy)",
    )  # fmt: skip
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    _config_argument(verify)
    verify.set_defaults(handler=_verify)

    search = actions.add_parser("search", help="find audit records without Kibana")
    search.add_argument("--es", metavar="URL", help="Elasticsearch URL (default: the configured one)")
    search.add_argument("--index", metavar="PATTERN")
    search.add_argument("--user", metavar="U", help="user.name or user.id")
    search.add_argument("--tenant", metavar="T", help="organization.id")
    search.add_argument("--since", metavar="DURATION", help="e.g. 24h, 7d, 30m")
    search.add_argument("--outcome", choices=("success", "failure", "unknown"))
    search.add_argument("--trace-id", metavar="ID")
    search.add_argument("--model", metavar="M", help="requested or responding model")
    search.add_argument("--action", metavar="A", help="event.action, e.g. model-call, config-reload")
    search.add_argument("--size", type=int, default=50, metavar="N", help="newest N records (default 50)")
    search.add_argument("--format", choices=("table", "json"), default="table")
    _config_argument(search)
    search.set_defaults(handler=_search)

    replay = actions.add_parser("replay", help="ship JSON Lines audit files to Elasticsearch (idempotent)")
    replay.add_argument("--file", type=Path, required=True, metavar="PATH", help="file, or a directory of them")
    replay.add_argument("--es", metavar="URL", help="Elasticsearch URL (default: the configured one)")
    replay.add_argument("--index", metavar="TARGET", help="data stream or index (default: the configured one)")
    _config_argument(replay)
    replay.set_defaults(handler=_replay)

    es = commands.add_parser("es", help="prepare Elasticsearch for the audit trail")
    es_actions = es.add_subparsers(dest="es_command", metavar="ACTION", required=True)
    setup = es_actions.add_parser(
        "setup", help="install the lifecycle policy, index template and data stream (idempotent)"
    )
    setup.add_argument("--es", metavar="URL", help="Elasticsearch URL (default: the configured one)")
    _config_argument(setup)
    setup.set_defaults(handler=_es_setup)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE",
        help=f"sidecar config for credentials, TLS and names (default: ${ENV_CONFIG_FILE}, else defaults)",
    )  # fmt: skip


def _es_config(args: argparse.Namespace) -> ElasticsearchSinkConfig:
    try:
        config = load_config(args.config or os.environ.get(ENV_CONFIG_FILE))
    except ConfigError as exc:
        raise _UsageError("invalid configuration: " + "; ".join(exc.problems)) from None
    es = config.audit.elasticsearch
    url = getattr(args, "es", None) or es.url
    if not url:
        raise _UsageError("no Elasticsearch URL: pass --es URL or set audit.elasticsearch.url")
    return es.model_copy(update={"url": url})


class _UsageError(Exception):
    pass


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        return int(asyncio.run(handler(args)))
    except _UsageError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE


# --- verify --------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    return _run(_verify_async, args)


async def _verify_async(args: argparse.Namespace) -> int:
    from sidecar.audit.chain import load_verifier
    from sidecar.audit.sinks import audit_files, read_documents
    from sidecar.audit.verify import verify_documents

    verifier = None
    if args.public_key or args.hmac_key:
        try:
            verifier = load_verifier(args.public_key or args.hmac_key, hmac_key=bool(args.hmac_key))
        except ValueError as exc:
            raise _UsageError(f"--{'hmac-key' if args.hmac_key else 'public-key'}: {exc}") from None
    problems: list[str] = []
    if args.file is not None:
        if not args.file.exists():
            raise _UsageError(f"--file: {args.file} does not exist")
        documents: Iterable[dict[str, Any]] = list(read_documents(audit_files(args.file), problems))
    else:
        es = _es_config(args)
        documents = await _collect(_es_documents(es, args.index or es.read_target, args.instance))
    report = verify_documents(
        documents,
        verifier=verifier,
        now=time.time(),
        instance=args.instance,
        allow_missing_head=args.allow_missing_head,
    )
    report.unreadable.extend(problems)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.text())
    return EXIT_OK if report.ok else EXIT_FINDINGS


async def _collect(documents: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [document async for document in documents]


async def _es_documents(
    es: ElasticsearchSinkConfig, index: str, instance: str | None
) -> AsyncIterator[dict[str, Any]]:
    from elasticsearch import NotFoundError
    from elasticsearch.exceptions import TransportError

    from sidecar.audit.elastic import all_documents, create_client

    client = create_client(es)
    try:
        async for document in all_documents(client, index, instance):
            yield document
    except NotFoundError:
        raise _UsageError(f"--index: {index} not found at {es.url}") from None
    except TransportError as exc:
        raise _UsageError(f"--es: cannot reach {es.url}: {exc}") from None
    finally:
        await client.close()


# --- search --------------------------------------------------------------------


def _search(args: argparse.Namespace) -> int:
    return _run(_search_async, args)


_COLUMNS = (
    ("@timestamp", "time"),
    ("event.action", "action"),
    ("event.outcome", "outcome"),
    ("organization.id", "tenant"),
    ("user.name", "user"),
    ("http.request.method", "method"),
    ("url.path", "path"),
    ("http.response.status_code", "status"),
    ("gen_ai.request.model", "model"),
    ("trace.id", "trace"),
)


async def _search_async(args: argparse.Namespace) -> int:
    from elasticsearch import NotFoundError
    from elasticsearch.exceptions import TransportError

    from sidecar.audit.elastic import create_client, search_documents, search_query
    from sidecar.audit.events import get_path

    es = _es_config(args)
    since = None
    if args.since:
        try:
            since = parse_duration(args.since)
        except ValueError as exc:
            raise _UsageError(f"--since: got {args.since!r}; expected {exc}") from None
    query = search_query(
        user=args.user,
        tenant=args.tenant,
        since=since,
        outcome=args.outcome,
        trace_id=args.trace_id,
        model=args.model,
        action=args.action,
    )
    client = create_client(es)
    try:
        documents = await search_documents(client, args.index or es.read_target, query, args.size)
    except NotFoundError:
        raise _UsageError(f"--index: {args.index or es.read_target} not found at {es.url}") from None
    except TransportError as exc:
        raise _UsageError(f"--es: cannot reach {es.url}: {exc}") from None
    finally:
        await client.close()
    if args.format == "json":
        for document in documents:
            print(json.dumps(document, ensure_ascii=False))
        return EXIT_OK
    rows = [[_cell(get_path(document, field)) for field, _ in _COLUMNS] for document in documents]
    headers = [title for _, title in _COLUMNS]
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(headers)]
    print("  ".join(title.ljust(width) for title, width in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"({len(rows)} record{'s' if len(rows) != 1 else ''})", file=sys.stderr)
    return EXIT_OK


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    # A cell must never carry a control character onto the auditor's terminal.
    return "".join(char if char.isprintable() else "?" for char in text)[:80]


# --- replay --------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    return _run(_replay_async, args)


async def _replay_async(args: argparse.Namespace) -> int:
    from elasticsearch.exceptions import TransportError
    from elasticsearch.helpers import async_streaming_bulk

    from sidecar.audit.elastic import create_client, replay_actions, target_router
    from sidecar.audit.sinks import audit_files

    if not args.file.exists():
        raise _UsageError(f"--file: {args.file} does not exist")
    es = _es_config(args)
    target = args.index or target_router(es)
    counts = {"created": 0, "already stored": 0, "failed": 0}
    failures: list[str] = []

    def records() -> Iterable[bytes]:
        for path in audit_files(args.file):
            with open(path, "rb") as file:
                for line in file:
                    if line.strip():
                        yield line.rstrip(b"\n")

    client = create_client(es)
    try:
        async for ok, item in async_streaming_bulk(
            client,
            replay_actions(target, records()),
            chunk_size=es.batch_size,
            max_chunk_bytes=int(es.batch_bytes),
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=8,
            initial_backoff=0.5,
            max_backoff=es.max_backoff,
            retry_on_status=(429, 500, 502, 503, 504),
        ):
            result = next(iter(item.values()))
            if ok:
                counts["created"] += 1
            elif result.get("status") == 409:
                counts["already stored"] += 1
            else:
                counts["failed"] += 1
                if len(failures) < 10:
                    failures.append(f"{result.get('_id')}: {result.get('status')} {result.get('error')}")
    except TransportError as exc:
        raise _UsageError(f"--es: cannot reach {es.url}: {exc}") from None
    except ValueError as exc:
        raise _UsageError(f"--file: {exc}") from None
    finally:
        await client.close()
    print(", ".join(f"{count} {what}" for what, count in counts.items()) + f" into {args.index or es.read_target}")
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return EXIT_OK if counts["failed"] == 0 else EXIT_FINDINGS


# --- es setup ------------------------------------------------------------------


def _es_setup(args: argparse.Namespace) -> int:
    return _run(_es_setup_async, args)


async def _es_setup_async(args: argparse.Namespace) -> int:
    from elasticsearch.exceptions import ApiError, TransportError

    from sidecar.audit.elastic import create_client, setup_elasticsearch

    es = _es_config(args)
    client = create_client(es)
    try:
        for line in await setup_elasticsearch(client, es):
            print(line)
    except ApiError as exc:
        print(f"sidecar: Elasticsearch refused the setup: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    except TransportError as exc:
        raise _UsageError(f"--es: cannot reach {es.url}: {exc}") from None
    finally:
        await client.close()
    return EXIT_OK
