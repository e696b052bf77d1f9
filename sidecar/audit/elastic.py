"""Elasticsearch: the audit sink, the index setup, and the queries auditors run.

The sink writes with the official async client's bulk helper
(`async_streaming_bulk`): `create` operations with `_id` = the document's
event.hash, so a retry or a replay can never store a document twice, and an
item answered 409 is one Elasticsearch already holds. Per item:

- 201/200 and 409: stored;
- 429 and 5xx: retried, only those items, with capped exponential backoff
  and full jitter, for as long as it takes: while they wait, the spool holds
  them and grows. (The helper's own `max_retries` is left at 0: its retries
  have no jitter, give up after a count, and cannot be counted for
  `/metrics`; it still does the chunking, serialising and per-item parsing.)
- any other 4xx (a mapping conflict, a document Elasticsearch cannot parse):
  written to the dead-letter file with the error and never retried, so one bad
  document cannot stall the pipeline.

A connection failure or timeout fails the whole batch, which is retried the
same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from elasticsearch import AsyncElasticsearch, BadRequestError
from elasticsearch.exceptions import ApiError, TransportError
from elasticsearch.helpers import async_streaming_bulk
from elasticsearch.serializer import OrjsonSerializer

from sidecar.audit.schema import es_mappings
from sidecar.audit.sinks import DeadLetters, SpooledRecord, document_id
from sidecar.config import ElasticsearchSinkConfig, format_duration

logger = logging.getLogger(__name__)

_WARN_EVERY_S = 60.0


def create_client(config: ElasticsearchSinkConfig, url: str | None = None) -> AsyncElasticsearch:
    """An async client (aiohttp transport) for `config`, or for `url` with the config's credentials."""
    hosts = [host.strip() for host in (url or config.url).split(",") if host.strip()]
    options: dict[str, Any] = {
        "request_timeout": config.request_timeout,
        # Retries are the sink's business (per item, with jitter, without end);
        # the transport's own would resend whole batches behind its back.
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": config.verify_certs,
        # The client's own orjson serializer: bulk action lines and per-item answers are
        # (de)serialised once per record, and the standard library's json took a fifth of delivery.
        "serializer": OrjsonSerializer(),
    }
    if config.api_key:
        options["api_key"] = config.api_key
    elif config.username:
        options["basic_auth"] = (config.username, config.password)
    if config.ca_file is not None:
        options["ca_certs"] = str(config.ca_file)
    return AsyncElasticsearch(hosts, **options)


_TENANT = re.compile(rb'"organization":\{"id":"((?:[^"\\]|\\.)*)"')
_NOT_NAMESPACE = re.compile(r"[^a-z0-9_]")


def tenant_namespace(tenant: str) -> str:
    """A tenant as a data stream namespace: lower case, a-z 0-9 _ only, at most 100 bytes."""
    return _NOT_NAMESPACE.sub("_", tenant.lower())[:100] or "_"


def target_router(config: ElasticsearchSinkConfig) -> Callable[[bytes], str]:
    """Which index or data stream a stored record goes to."""
    default = config.target
    if not config.per_tenant or config.index:
        return lambda record: default
    prefix = f"logs-{config.dataset}-"

    def route(record: bytes) -> str:
        # Records are canonical JSON (sorted keys, no spaces), so the tenant is found without parsing.
        match = _TENANT.search(record)
        if match is None:
            return default
        try:
            tenant = json.loads(b'"' + match.group(1) + b'"')
        except ValueError:
            return default
        return prefix + tenant_namespace(tenant)

    return route


class ElasticSink:
    name = "elasticsearch"

    def __init__(
        self,
        config: ElasticsearchSinkConfig,
        dead_letters: DeadLetters,
        *,
        client: AsyncElasticsearch | None = None,
        initial_backoff: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.target = config.target
        self._route = target_router(config)
        self.dead_letters = dead_letters
        self._client = client or create_client(config)
        self._initial_backoff = initial_backoff
        self._clock = clock
        self._reached = False
        """The last attempt got an answer; only for saying once when Elasticsearch becomes unreachable."""
        self._last_warning = -_WARN_EVERY_S
        # The transport warns on every failed attempt; the sink reports outages itself, once a minute.
        logging.getLogger("elastic_transport.node_pool").setLevel(logging.ERROR)
        self.stored = 0
        self.duplicates = 0
        self.retries = {"rejected": 0, "server_error": 0, "connection": 0}
        self.last_delivery = 0.0

    @property
    def dead_lettered(self) -> int:
        return self.dead_letters.count

    async def start(self) -> None:
        """Nothing to do: the first batch finds out whether Elasticsearch is there."""

    async def close(self) -> None:
        await self._client.close()

    async def deliver(self, records: Sequence[SpooledRecord]) -> None:
        pending = {document_id(record): record for _, record in records}
        attempt = 0
        while pending:
            retry, dead = await self._send(pending)
            if dead:
                await asyncio.to_thread(self.dead_letters.write, dead)
                logger.error(
                    "audit documents refused by Elasticsearch were dead-lettered",
                    extra={"count": len(dead), "file": str(self.dead_letters.path), "first_error": dead[0][2]},
                )
            pending = {doc_id: pending[doc_id] for doc_id in retry}
            if pending:
                attempt += 1
                # Full jitter (AWS architecture blog): many sidecars behind one
                # cluster must not retry in lockstep.
                ceiling = min(self.config.max_backoff, self._initial_backoff * 2**attempt)
                await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _send(self, pending: dict[str, bytes]) -> tuple[list[str], list[tuple[bytes, int | str, Any]]]:
        """One bulk round over `pending`: (ids to retry, dead letters)."""
        retry: list[str] = []
        dead: list[tuple[bytes, int | str, Any]] = []
        answered: set[str] = set()
        route = self._route

        def expand(doc_id: str) -> tuple[dict[str, Any], bytes]:
            record = pending[doc_id]
            return {"create": {"_index": route(record), "_id": doc_id}}, record

        try:
            async for ok, item in async_streaming_bulk(
                self._client,
                list(pending),
                chunk_size=self.config.batch_size,
                max_chunk_bytes=int(self.config.batch_bytes),
                expand_action_callback=expand,  # type: ignore[arg-type]
                raise_on_error=False,
                raise_on_exception=False,
                max_retries=0,
            ):
                self._reached = True
                result = next(iter(item.values()))
                doc_id = str(result.get("_id"))
                answered.add(doc_id)
                status = result.get("status")
                if ok or status == 409:
                    self.stored += 1
                    self.duplicates += status == 409
                elif isinstance(status, int) and 400 <= status < 500 and status != 429:
                    dead.append((pending[doc_id], status, result.get("error")))
                else:
                    self.retries["rejected" if status == 429 else "server_error"] += 1
                    retry.append(doc_id)
        except (TransportError, ApiError, OSError) as exc:
            was_reached, self._reached = self._reached, False
            self.retries["connection"] += 1
            now = time.monotonic()
            if was_reached or now - self._last_warning >= _WARN_EVERY_S:
                self._last_warning = now
                logger.warning(
                    "Elasticsearch unreachable; audit documents stay in the spool",
                    extra={"error": f"{exc.__class__.__name__}: {exc}", "pending": len(pending)},
                )
        retry.extend(doc_id for doc_id in pending if doc_id not in answered and doc_id not in retry)
        if len(retry) < len(pending):
            # Stored, already held or dead-lettered: each has left for good, which is what health means.
            self.last_delivery = self._clock()
        return retry, dead


# --- setup -------------------------------------------------------------------


def ilm_policy(config: ElasticsearchSinkConfig) -> dict[str, Any]:
    return {
        "phases": {
            "hot": {
                "actions": {
                    "rollover": {
                        "max_age": _es_duration(config.rollover_age),
                        "max_primary_shard_size": "50gb",
                    }
                }
            },
            "delete": {"min_age": _es_duration(config.retention), "actions": {"delete": {}}},
        }
    }


def _es_duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{max(1, int(seconds))}s"


def index_template(config: ElasticsearchSinkConfig, policy_name: str) -> dict[str, Any]:
    pattern = f"{config.index}*" if config.index else f"logs-{config.dataset}-*"
    template: dict[str, Any] = {
        "index_patterns": [pattern],
        # Above the built-in logs-*-* template (priority 100) so these mappings win.
        "priority": 200,
        "template": {
            "settings": {"index": {"lifecycle": {"name": policy_name}}},
            "mappings": es_mappings(),
        },
        "_meta": {"description": "inference-sidecar audit events", "managed_by": "sidecar es setup"},
    }
    if not config.index:
        template["data_stream"] = {}
    return template


async def setup_elasticsearch(client: AsyncElasticsearch, config: ElasticsearchSinkConfig) -> list[str]:
    """Install the lifecycle policy, the index template and the data stream (or index). Idempotent."""
    done: list[str] = []
    name = f"{config.dataset}" if not config.index else config.index
    policy_name = f"{name}-policy"
    await client.ilm.put_lifecycle(name=policy_name, policy=ilm_policy(config))
    done.append(
        f"lifecycle policy {policy_name}: rollover after {format_duration(config.rollover_age)}, "
        f"delete after {format_duration(config.retention)}"
    )
    template = index_template(config, policy_name)
    await client.indices.put_index_template(name=name, **template)
    done.append(f"index template {name} for {template['index_patterns'][0]}")
    try:
        if config.index:
            await client.indices.create(index=config.index)
        else:
            await client.indices.create_data_stream(name=config.target)
        done.append(f"created {config.target}")
    except BadRequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
        done.append(f"{config.target} already exists")
    return done


# --- reading -----------------------------------------------------------------


def search_query(
    *,
    user: str | None = None,
    tenant: str | None = None,
    since: float | None = None,
    outcome: str | None = None,
    trace_id: str | None = None,
    model: str | None = None,
    action: str | None = None,
) -> dict[str, Any]:
    """A bool filter query for the auditor's usual questions; `since` in seconds back from now."""
    filters: list[dict[str, Any]] = []
    if user:
        filters.append({"bool": {"should": [{"term": {"user.name": user}}, {"term": {"user.id": user}}]}})
    if tenant:
        filters.append({"term": {"organization.id": tenant}})
    if since is not None:
        filters.append({"range": {"@timestamp": {"gte": f"now-{max(1, int(since))}s"}}})
    if outcome:
        filters.append({"term": {"event.outcome": outcome}})
    if trace_id:
        filters.append({"term": {"trace.id": trace_id}})
    if model:
        filters.append(
            {"bool": {"should": [{"term": {"gen_ai.request.model": model}}, {"term": {"gen_ai.response.model": model}}]}}
        )
    if action:
        filters.append({"term": {"event.action": action}})
    return {"bool": {"filter": filters}} if filters else {"match_all": {}}


async def search_documents(
    client: AsyncElasticsearch, index: str, query: dict[str, Any], size: int
) -> list[dict[str, Any]]:
    response = await client.search(
        index=index, query=query, size=size, sort=[{"@timestamp": {"order": "desc"}}, {"event.sequence": "desc"}]
    )
    return [hit["_source"] for hit in response["hits"]["hits"]]


async def all_documents(
    client: AsyncElasticsearch, index: str, instance: str | None = None, page: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    """Every audit document in `index`, paged with search_after in chain order."""
    query: dict[str, Any] = {"term": {"service.node.name": instance}} if instance else {"match_all": {}}
    sort: list[Any] = [{"service.node.name": "asc"}, {"sidecar.chain.id": "asc"}, {"event.sequence": "asc"}]
    after: list[Any] | None = None
    while True:
        extra: dict[str, Any] = {"search_after": after} if after is not None else {}
        response = await client.search(index=index, query=query, size=page, sort=sort, **extra)
        hits = response["hits"]["hits"]
        for hit in hits:
            yield hit["_source"]
        if len(hits) < page:
            return
        after = hits[-1]["sort"]


def replay_actions(target: str | Callable[[bytes], str], records: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    """Bulk `create` actions for stored JSON Lines records, with the same ids (and, given the
    sink's router, the same targets) the sink uses."""
    route = target if callable(target) else (lambda record: target)
    for record in records:
        yield {"_op_type": "create", "_index": route(record), "_id": document_id(record), "_source": record}

