"""Builds every part from the config, wires them together, and owns their lifecycle.

Start order: data dir, metrics, upstream client, proxy, health prober, admin
listener. Stop order (SIGTERM/SIGINT): mark not ready, stop accepting, let
in-flight requests finish within `proxy.drain_timeout`, cancel what is left,
then stop the prober, the upstream client and the admin listener last, so
`/-/ready` reports the drain while it happens. A second SIGTERM/SIGINT cuts
the drain short. SIGHUP reloads the config: settings that can change live do,
and the log names those that need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.audit.build import AuditSetupError, audit_directory, build_pipeline, build_redactor
from sidecar.audit.events import AuditIdentity, iso_time
from sidecar.audit.metrics import AuditCollector
from sidecar.audit.pipeline import AuditPipeline, Lifecycle
from sidecar.audit.redact import Redactor

from sidecar.config import (
    Config,
    ConfigError,
    KeyPath,
    ListenAddress,
    effective_config,
    load_config,
    masked_config,
)
from sidecar.exchange import Exchange, GenAiCall, GpuEvent, GpuSample, GpuUsage, HealthResult
from sidecar.gpu.attribution import Attribution
from sidecar.gpu.cost import CostModel, Payback
from sidecar.gpu.dcgm import DcgmExporterScraper, DcgmReexportCollector
from sidecar.gpu.fields import FIELDS_BY_NAME, XID_ERRORS_TOTAL
from sidecar.gpu.metrics import GpuMetricsCollector
from sidecar.gpu.nvml import NvmlCollector
from sidecar.gpu.probe_metrics import ProbeGauges
from sidecar.gpu.usage_metrics import UnattributedCollector, UsageMetrics
from sidecar.logs import AccessLog, LogPipeline
from sidecar.rules.alert import Alert, AlertState, AlertTransition
from sidecar.rules.engine import RuleEngine
from sidecar.rules.metrics import RulesCollector
from sidecar.rules.notify import Notifier
from sidecar.rules.notify_metrics import NotifierCollector
from sidecar.rules.runner import RulesRunner, restore_engine, restore_notifier
from sidecar.rules.spec import SpecError, effective_rules
from sidecar.rules.state import StateFile
from sidecar.observe import Broadcast
from sidecar.proxy.access import AccessControl
from sidecar.proxy.access_metrics import AccessCollector
from sidecar.proxy.auth.authenticator import AuthSetupError as CredentialsError
from sidecar.proxy.handler import ProxyHandler, ProxySettings
from sidecar.proxy.health import HealthProber
from sidecar.proxy.server import ParserLimits, ProxyServer
from sidecar.proxy.upstream import create_upstream_session
from sidecar.telemetry.admin import AdminGuard, AdminTlsError, admin_ssl_context, create_admin_app
from sidecar.telemetry.status import AuditReading, CostSource, StatusPage, StatusSources
from sidecar.telemetry.instance import stable_instance_id
from sidecar.telemetry.tracing import Tracing
from sidecar.telemetry.metrics import (
    BoundedLabel,
    ExchangeMetrics,
    GenAiMetrics,
    HealthMetrics,
    LiveGauges,
    TenantMetrics,
    register_build_info,
)

logger = logging.getLogger(__name__)

# Keys whose new value only takes effect after a restart: they are bound into
# listening sockets, the connection pool or the event loop at start.
RESTART_REQUIRED = (
    "data_dir",
    "instance_id",
    "proxy.listen",
    "proxy.keepalive_timeout",
    # The admin listener's socket, TLS context and token check are set up at start.
    "admin.",
    "upstream.url",
    "upstream.max_connections",
    "upstream.keepalive_timeout",
    # The interpreter is set up once, before the event loop starts.
    "runtime.",
    # The tracer provider and the metric families are built once at start.
    "tracing.",
    "metrics.",
    "llm.provider_name",
    # The spool, sink, keys and redaction rules are opened once at start.
    "audit.",
    # Collectors and the cost model are built at start.
    "gpu.",
    # The rule set fixes the windows kept; a restart keeps them through the state file.
    "rules.",
)

# The dcgm-exporter families the NVML collector serves itself.
NVML_FAMILIES = frozenset(FIELDS_BY_NAME) | {XID_ERRORS_TOTAL.name}

# After the drain, handlers still running get this long to unwind once cancelled.
_CANCEL_GRACE_S = 1.0

# How often the key file and JWT key material are checked for changes.
_CREDENTIALS_POLL_S = 2.0


class StartupError(Exception):
    """The sidecar cannot start; the message says what to change."""


class ConfigSource:
    """Where the config came from, so that SIGHUP can read it again the same way."""

    def __init__(
        self,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        flags: Mapping[KeyPath, Any] | None = None,
    ) -> None:
        self.path = path
        self.env = env
        self.flags = dict(flags or {})

    def load(self) -> Config:
        return load_config(self.path, env=self.env, flags=self.flags)


class Sidecar:
    """The running sidecar: every part, built from one Config."""

    def __init__(
        self,
        config: Config,
        source: ConfigSource | None = None,
        logs: LogPipeline | None = None,
        *,
        nvml: Any = None,
    ) -> None:
        """`nvml` replaces the pynvml module (tests use `sidecar.testing.nvml`)."""
        self.config = config
        self._nvml_module = nvml
        self._source = source
        self._logs = logs
        self.registry = CollectorRegistry(auto_describe=True)
        self.exchanges: Broadcast[Exchange] = Broadcast("exchanges")
        self.health_results: Broadcast[HealthResult] = Broadcast("health")
        self.gpu_samples: Broadcast[GpuSample] = Broadcast("gpu_samples")
        self.gpu_events: Broadcast[GpuEvent] = Broadcast("gpu_events")
        self.nvml: NvmlCollector | None = None
        self.dcgm: DcgmExporterScraper | None = None
        self.attribution: Attribution | None = None
        self.gpus_simulated = False
        """Whether the GPU readings come from gpu.nvml.simulate rather than a GPU."""
        self._cost: CostModel | None = None
        self._payback: Payback | None = None
        self.status_page: StatusPage | None = None
        self._access_log = AccessLog(config.log.access_log)
        self.audit: AuditPipeline | None = None
        self.rule_engine: RuleEngine | None = None
        self.rules: RulesRunner | None = None
        self._rules_state: StateFile | None = None
        self._notify_state: Any = None
        """The notifier's part of the rules state file, read with the engine's, until the notifier exists."""
        self._session: aiohttp.ClientSession | None = None
        self._proxy: ProxyHandler | None = None
        self.access: AccessControl | None = None
        self._credentials_watch: asyncio.Task[None] | None = None
        self._proxy_server: ProxyServer | None = None
        self._proxy_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._prober: HealthProber | None = None
        self.tracing: Tracing | None = None
        self._stop_requested = asyncio.Event()
        self._cut_drain_short = asyncio.Event()
        self._reloads: set[asyncio.Task[bool]] = set()
        self.proxy_address: ListenAddress | None = None
        self.admin_address: ListenAddress | None = None

    # --- wiring -------------------------------------------------------------

    @property
    def proxy(self) -> ProxyHandler:
        if self._proxy is None:
            raise RuntimeError("the sidecar has not been started")
        return self._proxy

    @property
    def prober(self) -> HealthProber:
        if self._prober is None:
            raise RuntimeError("the sidecar has not been started")
        return self._prober

    def _prepare_data_dir(self) -> None:
        data_dir = self.config.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"data_dir: cannot create {data_dir}: {exc.strerror}") from None
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise StartupError(f"data_dir: {data_dir} is not writable by this user")

    def _data_dir_not_ready(self) -> str | None:
        if os.access(self.config.data_dir, os.W_OK | os.X_OK):
            return None
        return f"data dir {self.config.data_dir} is not writable"

    async def _start_audit(self, instance: str, redactor: Redactor) -> None:
        config = self.config
        identity = AuditIdentity(
            service_name=config.tracing.service_name,
            node_name=instance,
            service_version=__version__,
            host_name=socket.gethostname(),
            dataset=config.audit.elasticsearch.dataset,
            namespace=config.audit.elasticsearch.namespace,
            currency=config.gpu.cost.currency,
            gen_ai_system=config.llm.provider_name or None,
        )
        try:
            self.audit = build_pipeline(config, identity, redactor)
            await self.audit.start(
                Lifecycle(
                    action="sidecar-start",
                    category=("process",),
                    types=("start",),
                    message=f"sidecar {__version__} started",
                    at=time.time(),
                    outcome="success",
                    sidecar={"config": {"sha256": _config_digest(config)}},
                )
            )
        except AuditSetupError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"audit: cannot open {audit_directory(config)}: {exc}") from None
        self.exchanges.subscribe("audit", self.audit)
        self.registry.register(AuditCollector(self.audit))

    def _exchange_usage(
        self, started_at: float, duration_s: float, call: GenAiCall | None, processed: bool
    ) -> GpuUsage | None:
        attribution = self.attribution
        if attribution is None:
            return None
        return attribution.usage_of(started_at, duration_s, call, self._cost, processed)

    async def _start_gpu(self, instance: str, proxy: ProxyHandler) -> None:
        gpu = self.config.gpu
        loop = asyncio.get_running_loop()
        hostname = socket.gethostname()
        if gpu.probe_at_start:
            await self._probe_gpu()
        self.gpu_events.subscribe("log", _log_gpu_event)
        if self.audit is not None:
            self.gpu_events.subscribe("audit", _gpu_event_recorder(self.audit))
        if gpu.attribution and (gpu.nvml.enabled or gpu.dcgm_exporter.enabled):
            self.attribution = Attribution(
                request_seconds=proxy.request_seconds,
                occupied_seconds=proxy.occupied_seconds,
                idle_power=gpu.idle_power,
            )
            self._cost = CostModel(gpu.cost, gpus=gpu.cost.gpus)
            self._payback = Payback(gpu.cost)
            self.gpu_samples.subscribe("attribution", self.attribution.observe)
            self.registry.register(UnattributedCollector(self.attribution.unattributed, self._cost))
            self.exchanges.subscribe(
                "gpu_usage_metrics",
                UsageMetrics(
                    self.registry,
                    label_model=BoundedLabel(self.config.metrics.max_models),
                    label_tenant=BoundedLabel(self.config.metrics.max_tenants),
                    payback=self._payback,
                    currency=gpu.cost.currency,
                ),
            )
        nvml_module = self._nvml_module
        if gpu.nvml.enabled and nvml_module is None and gpu.nvml.simulate:
            from sidecar.testing.nvml import FakeNvml

            logger.warning("GPU readings are simulated (gpu.nvml.simulate: %d): not a real GPU", gpu.nvml.simulate)
            # Busy while requests are at the model server, idle otherwise, as a real GPU behind it would be.
            nvml_module = FakeNvml(gpu.nvml.simulate, pcie_delay=0.0, load=proxy.occupied_seconds)
            self.gpus_simulated = True
        if gpu.nvml.enabled:
            # NVML answers on the collector's threads; records are handed to the loop.
            self.nvml = NvmlCollector(
                gpu.nvml,
                hostname,
                on_sample=lambda sample: loop.call_soon_threadsafe(self.gpu_samples.publish, sample),
                on_event=lambda event: loop.call_soon_threadsafe(self.gpu_events.publish, event),
                nvml=nvml_module,
                simulated=self.gpus_simulated,
            )
            await asyncio.to_thread(self.nvml.start)
            self.registry.register(GpuMetricsCollector(self.nvml))
        if gpu.dcgm_exporter.enabled:
            self.dcgm = DcgmExporterScraper(
                gpu.dcgm_exporter, hostname, on_sample=self.gpu_samples.publish, on_event=self.gpu_events.publish
            )
            await self.dcgm.start()
            # Where NVML serves a field itself, its finer-grained series wins over the re-exposed one.
            self.registry.register(
                DcgmReexportCollector(self.dcgm, reexpose=gpu.dcgm_exporter.reexpose, exclude=self._served_by_nvml)
            )

    def _served_by_nvml(self) -> frozenset[str]:
        if self.nvml is None or not self.nvml.nvml_available:
            return frozenset()
        return NVML_FAMILIES

    async def _probe_gpu(self) -> None:
        try:
            from sidecar.gpu.probe import format_probe, run_probe
        except ImportError as exc:
            raise StartupError(f"gpu.probe_at_start: {exc}") from None
        try:
            result = await asyncio.to_thread(run_probe)
        except Exception as exc:
            # A probe that cannot run is a finding about the GPU, not a reason to stay down.
            logger.error("GPU probe failed", extra={"error": f"{exc.__class__.__name__}: {exc}"})
            return
        level = logging.WARNING if result.degraded else logging.INFO
        logger.log(level, "GPU probe: " + format_probe(result).replace("\n", "; "), extra={"probe": result.as_dict()})
        self.registry.register(ProbeGauges(result))

    async def _stop_gpu(self) -> None:
        if self.nvml is not None:
            await asyncio.to_thread(self.nvml.stop)
        if self.dcgm is not None:
            await self.dcgm.stop()

    async def _build_rule_engine(self, instance: str) -> None:
        """The engine, resumed from the state file and then subscribed to every record before traffic
        starts: no request goes uncounted, and none is replaced by the saved windows."""
        try:
            ruleset = effective_rules(self.config.rules)
        except SpecError as exc:
            raise StartupError(str(exc)) from None
        engine = RuleEngine(
            ruleset,
            instance=instance,
            external_labels=self.config.rules.external_labels,
            resolved_retention_s=self.config.rules.resolved_retention,
        )
        state = StateFile(self.config.rules.state_file or self.config.data_dir / "rules" / "state.json")
        self._rules_state = state
        # The notifier's part waits for the notifier (`_start_rules`).
        self._notify_state = await restore_engine(engine, state)
        self.exchanges.subscribe("rules", engine.observe_exchange)
        self.health_results.subscribe("rules", engine.observe_health)
        self.gpu_samples.subscribe("rules", engine.observe_gpu_sample)
        self.gpu_events.subscribe("rules", engine.observe_gpu_event)
        audit = self.audit
        if audit is not None:
            spool, sink, stats = audit.spool, audit.sink, audit.stats
            engine.add_reading("audit_spool_fill_ratio", lambda: spool.used_bytes / spool.max_bytes if spool.max_bytes else None)
            engine.add_reading("audit_sink_up", lambda: 1.0 if audit.sink_up else 0.0)
            engine.add_reading("audit_delivery_lag_seconds", lambda: audit.delivery_lag)
            engine.add_counter("audit_events_dropped", lambda: float(sum(stats.dropped.values())))
            engine.add_counter("audit_dead_letters", lambda: float(sink.dead_lettered))
        self.registry.register(RulesCollector(engine))
        self.rule_engine = engine

    async def _start_rules(self, engine: RuleEngine) -> None:
        rules = self.config.rules
        state = self._rules_state
        notifier = None
        if rules.alertmanagers or rules.webhooks:
            notifier = Notifier(rules, external_url=self.external_url)
            self.registry.register(NotifierCollector(notifier))
            if state is not None:
                restore_notifier(notifier, self._notify_state, state.path)
        self._notify_state = None
        self.rules = RulesRunner(
            engine,
            notifier,
            state,
            interval_s=rules.interval,
            save_interval_s=rules.state_save_interval,
            on_transition=self._alert_transition,
        )
        await self.rules.start()

    @property
    def external_url(self) -> str:
        """Where alerts link to: `rules.external_url`, else the admin listener."""
        if self.config.rules.external_url:
            return self.config.rules.external_url.rstrip("/")
        address = self.admin_address or self.config.admin.listen
        host = address.host if address.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"http://{'[' + host + ']' if ':' in host else host}:{address.port}"

    def _admin_views(self) -> dict[str, tuple[Callable[[], object], str]]:
        engine = self.rule_engine
        if engine is None:
            return {}
        return {
            "/-/alerts": (lambda: alerts_view(engine), "alerts (pending, firing, recently resolved) and every rule's state"),
            "/-/slo": (lambda: [status.as_dict() for status in engine.slo_status()], "SLOs: error budget, burn rates"),
        }

    def _alert_transition(self, transition: AlertTransition) -> None:
        alert = transition.alert
        level = logging.WARNING if alert.state is AlertState.FIRING else logging.INFO
        logger.log(
            level,
            f"alert {alert.name} {alert.state.value}",
            extra={"alert": alert.name, "state": alert.state.value, "labels": dict(alert.labels),
                   "value": _finite(alert.value)},
        )
        if self.audit is not None and alert.state in (AlertState.FIRING, AlertState.RESOLVED):
            self.audit.record(alert_record(alert, transition.at))

    def _build_status_page(self, instance: str, readiness: Mapping[str, Callable[[], str | None]]) -> StatusPage:
        """The status page's sources: each part that is on, and why the others are off."""
        config = self.config
        engine, audit, payback = self.rule_engine, self.audit, self._payback
        gpu_on = config.gpu.nvml.enabled or config.gpu.dcgm_exporter.enabled
        off: dict[str, str] = {}
        if engine is None:
            for section in ("requests", "slo", "alerts"):
                off[section] = "rules are off (rules.enabled: false): request history, SLOs and alerts come from " \
                               "the rules engine"  # fmt: skip
        if not gpu_on:
            off["gpu"] = "GPU readings are off (gpu.nvml.enabled and gpu.dcgm_exporter.enabled are false)"
        if audit is None:
            off["audit"] = "the audit trail is off (audit.enabled: false)"
        if payback is None:
            off["cost"] = ("GPU attribution is off (gpu.attribution: false): requests are not priced" if gpu_on
                           else "cost is priced from GPU readings, which are off")  # fmt: skip
        sources = StatusSources(
            instance=instance,
            version=__version__,
            upstream=str(config.upstream.url),
            readiness=lambda: {name: check() for name, check in readiness.items()},
            request_slots=engine.recent_slots if engine is not None else None,
            slos=engine.slo_status if engine is not None else None,
            alerts=engine.alerts if engine is not None else None,
            rules=engine.rule_states if engine is not None else None,
            gpu_problem=self._gpu_problem if gpu_on else None,
            audit=functools.partial(_audit_reading, audit) if audit is not None else None,
            cost=CostSource(
                currency=config.gpu.cost.currency,
                hardware_price=config.gpu.cost.hardware_price,
                cloud_priced=bool(config.gpu.cost.cloud_prices),
                savings=payback.savings,
                payback_months=payback.months,
                unattributed=self._unattributed_cost,
                idle_power=config.gpu.idle_power,
            ) if payback is not None else None,
            off=off,
        )  # fmt: skip
        page = StatusPage(sources)
        self.gpu_samples.subscribe("status_page", page.observe_gpu_sample)
        if payback is not None:
            self.exchanges.subscribe("status_page", page.observe_exchange)
        return page

    def _unattributed_cost(self) -> float:
        attribution, cost = self.attribution, self._cost
        if attribution is None or cost is None:
            return 0.0
        loose = attribution.unattributed()
        return cost.local(loose.energy_joules, loose.gpu_seconds)

    def _gpu_problem(self) -> str | None:
        if self.nvml is not None and not self.nvml.nvml_available and self.dcgm is None:
            return "NVML is not available: no NVIDIA driver or GPU on this host"
        return None

    def _not_draining(self) -> str | None:
        return "draining for shutdown" if self._proxy is not None and self._proxy.draining else None

    async def start(self) -> None:
        config = self.config
        self._prepare_data_dir()
        instance = config.instance_id or socket.gethostname()
        try:
            redactor = build_redactor(config.audit.redaction, audit_directory(config))
        except AuditSetupError as exc:
            raise StartupError(str(exc)) from None
        # Paths repeat (a handful of routes), so each is redacted once.
        scrub = functools.lru_cache(maxsize=4096)(redactor.text)
        self._access_log = AccessLog(config.log.access_log, scrub)
        register_build_info(self.registry)
        self.exchanges.subscribe("metrics", ExchangeMetrics(self.registry))
        self.exchanges.subscribe(
            "gen_ai_metrics",
            GenAiMetrics(self.registry, max_models=config.metrics.max_models, provider_name=config.llm.provider_name),
        )
        self.exchanges.subscribe("access_log", self._access_log)
        self.health_results.subscribe("metrics", HealthMetrics(self.registry))
        if config.audit.enabled:
            await self._start_audit(instance, redactor)

        self._session = create_upstream_session(config.upstream)
        if config.tracing.enabled:
            # The readable `instance` names audit chains and alerts; spans want an id unique to this sidecar.
            try:
                service_instance = config.instance_id or stable_instance_id(config.data_dir)
            except ValueError as exc:
                raise StartupError(f"data_dir: {exc}") from None
            self.tracing = Tracing(
                config.tracing, service_instance, provider_name=config.llm.provider_name, scrub=scrub
            )
        audit = self.audit
        if config.auth.enabled or config.limits.enabled:
            try:
                self.access = AccessControl(config.auth, config.limits)
            except CredentialsError as exc:
                raise StartupError(str(exc)) from None
            self.registry.register(AccessCollector(self.access))
            self.exchanges.subscribe("tenant_metrics", TenantMetrics(self.registry, BoundedLabel(config.metrics.max_tenants)))
        self._proxy = ProxyHandler(
            ProxySettings.from_config(config),
            self._session,
            self.exchanges.publish,
            self.tracing,
            admission=audit.admission_refusal if audit and config.audit.spool.when_full == "fail_closed" else None,
            settle=audit.settle if audit and config.audit.hold_response else None,
            access=self.access,
            usage=self._exchange_usage,
        )
        self._prober = HealthProber(self._session, config.upstream, self.health_results.publish)
        proxy = self._proxy
        await self._start_gpu(instance, proxy)
        if config.rules.enabled:
            await self._build_rule_engine(instance)
        readiness = {
            "upstream": self._prober.not_ready_reason,
            "data_dir": self._data_dir_not_ready,
            "shutdown": self._not_draining,
        }
        if self.audit is not None:
            readiness["audit"] = self.audit.not_ready_reason
        # Before traffic starts, so the page prices every request.
        status_page = self.status_page = self._build_status_page(instance, readiness)
        self.registry.register(
            LiveGauges(
                active_requests=proxy.active_requests_by,
                spans_dropped=lambda: self.tracing.spans_dropped if self.tracing else 0,
                invalid_trace_headers=lambda: self.tracing.invalid_trace_headers if self.tracing else 0,
                draining=lambda: proxy.draining,
                header_timeouts=lambda: self._proxy_server.header_timeouts if self._proxy_server else 0,
                observer_failures=lambda: {
                    f"{broadcast.name}/{name}": count
                    for broadcast in (self.exchanges, self.health_results)
                    for name, count in broadcast.failures().items()
                },
            )
        )
        self._proxy_server = ProxyServer(
            proxy,
            limits=_parser_limits(config),
            on_rejected=proxy.reject_unparsable,
            keepalive_timeout=config.proxy.keepalive_timeout,
        )
        # Requests are drained and cancelled by stop() itself; aiohttp's own
        # shutdown wait only has idle connections left to close.
        self._proxy_runner = web.ServerRunner(self._proxy_server, handle_signals=False, shutdown_timeout=0.1)
        await self._proxy_runner.setup()
        self.proxy_address = await _listen(self._proxy_runner, config.proxy.listen, "proxy.listen")

        admin_app = create_admin_app(
            self.registry,
            readiness,
            self._admin_views(),
            status_page,
            guard=AdminGuard(config.admin.token, config.admin.open_paths) if config.admin.token else None,
            config_view=lambda: masked_config(self.config),
        )
        self._admin_runner = web.AppRunner(admin_app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._admin_runner.setup()
        try:
            ssl_context = admin_ssl_context(config.admin.tls) if config.admin.tls.enabled else None
        except AdminTlsError as exc:
            raise StartupError(str(exc)) from None
        self.admin_address = await _listen(self._admin_runner, config.admin.listen, "admin.listen", ssl_context)
        if self.rule_engine is not None:
            await self._start_rules(self.rule_engine)
        await status_page.start()
        self._prober.start()
        if self.access is not None and self.access.authenticator is not None:
            self._credentials_watch = asyncio.create_task(self._watch_credentials(), name="credentials-watch")
        logger.info(
            "sidecar started",
            extra={
                "proxy": str(self.proxy_address),
                "admin": str(self.admin_address),
                "upstream": str(config.upstream.url),
                "pid": os.getpid(),
            },
        )

    async def _watch_credentials(self) -> None:
        """Pick up a changed key file or JWKS within a few seconds, as well as on SIGHUP."""
        while True:
            await asyncio.sleep(_CREDENTIALS_POLL_S)
            access = self.access
            if access is None or access.authenticator is None:
                continue
            try:
                changed = await asyncio.to_thread(access.authenticator.changed_files)
                if changed:
                    await asyncio.to_thread(access.authenticator.reload)
            except Exception:
                logger.exception("checking the credential files failed")

    # --- lifecycle ----------------------------------------------------------

    def request_stop(self) -> None:
        """First call starts a graceful drain; a second one cuts the drain short."""
        if self._stop_requested.is_set():
            logger.warning("second stop signal: cutting the drain short")
            self._cut_drain_short.set()
        self._stop_requested.set()

    async def stop(self) -> None:
        proxy = self._proxy
        if proxy is not None:
            proxy.start_draining()
            in_flight = proxy.active_requests
            logger.info(
                "draining",
                extra={"in_flight": in_flight, "drain_timeout_s": self.config.proxy.drain_timeout},
            )
        if self._proxy_runner is not None:
            # Stop accepting, and close keep-alive connections that sit idle.
            for site in list(self._proxy_runner.sites):
                await site.stop()
            if self._proxy_server is not None:
                self._proxy_server.pre_shutdown()
        if proxy is not None:
            drained = await self._drain(proxy)
            if not drained:
                logger.warning(
                    "drain timeout: cancelling requests still in flight",
                    extra={"in_flight": proxy.active_requests},
                )
                # Cancelled here rather than by aiohttp's cleanup, so each is
                # recorded as aborted by the sidecar, not as a client leaving.
                await proxy.abort_in_flight(_CANCEL_GRACE_S)
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        for task in list(self._reloads):
            task.cancel()
        if self._credentials_watch is not None:
            self._credentials_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._credentials_watch
        if self._prober is not None:
            await self._prober.stop()
        if self.rules is not None:
            # After the drain (its requests count), before audit stops (transitions are recorded).
            await self.rules.stop()
        if self.status_page is not None:
            await self.status_page.stop()
        await self._stop_gpu()
        if self.audit is not None:
            # After the drain, so every request's record is in before the final checkpoint.
            await self.audit.stop(
                Lifecycle(
                    action="sidecar-stop",
                    category=("process",),
                    types=("end",),
                    message="sidecar stopped",
                    at=time.time(),
                    outcome="success",
                )
            )
        if self._session is not None:
            await self._session.close()
        if self.tracing is not None:
            # Flushing can wait on a slow collector; never on the event loop,
            # and never past a few seconds (the export thread is a daemon).
            loop = asyncio.get_running_loop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await loop.run_in_executor(None, self.tracing.shutdown, 2.0)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        logger.info("sidecar stopped")

    async def _drain(self, proxy: ProxyHandler) -> bool:
        idle = asyncio.ensure_future(proxy.wait_idle(self.config.proxy.drain_timeout))
        cut = asyncio.ensure_future(self._cut_drain_short.wait())
        await asyncio.wait((idle, cut), return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        if not idle.done():
            idle.cancel()
            return False
        return idle.result()

    async def run(self, on_started: Callable[[], object] | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully. SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        if on_started is not None:
            on_started()
        try:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
            await self._stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            # A signal during the drain still cuts it short; a SIGHUP must not
            # kill the process (its default action) while streams finish.
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: logger.warning("reload ignored: shutting down"))
            try:
                await self.stop()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the process exits

    # --- reload -------------------------------------------------------------

    def _schedule_reload(self) -> None:
        task = asyncio.create_task(self.reload(), name="config-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Re-read the config; apply what can change live. False if the new config is invalid."""
        if self._source is None:
            logger.warning("reload requested, but the config was not loaded from a source")
            return False
        try:
            new = self._source.load()
        except ConfigError as exc:
            logger.error("config reload failed; keeping the running config", extra={"problems": exc.problems})
            return False
        changed = _changed_keys(self.config, new)
        needs_restart = [key for key in changed if key.startswith(RESTART_REQUIRED)]
        self.apply_live(_keep_running_values(self.config, new))
        logger.info("config reloaded", extra={"changed": changed})
        if self.audit is not None:
            self.audit.record(
                Lifecycle(
                    action="config-reload",
                    category=("configuration",),
                    types=("change",),
                    message=f"configuration reloaded: {len(changed)} key(s) changed",
                    at=time.time(),
                    reason="SIGHUP",
                    outcome="success",
                    sidecar={
                        "config": {
                            "changed": changed or None,
                            "restart_required": needs_restart or None,
                            "sha256": _config_digest(new),
                        }
                    },
                )
            )
        if needs_restart:
            logger.warning(
                "these settings changed but take effect only after a restart",
                extra={"restart_required": needs_restart},
            )
        return True

    def apply_live(self, new: Config) -> None:
        """Switch every live-changeable part to `new`; the rest keeps running as started."""
        self.config = new
        if self._proxy is not None:
            # One reference swap: a request reads its settings once, so none sees a mix.
            self._proxy.settings = ProxySettings.from_config(new)
        if self._proxy_server is not None:
            self._proxy_server.limits = _parser_limits(new)
        if self.access is not None:
            try:
                self.access.reconfigure(new.auth, new.limits)
            except CredentialsError as exc:
                logger.error("the new credentials cannot be loaded; keeping the old ones", extra={"problem": str(exc)})
        elif new.auth.enabled or new.limits.enabled:
            logger.warning("auth or limits were off at start; turning them on takes a restart")
        if self._prober is not None:
            self._prober.reconfigure(new.upstream)
            self._prober.start()
        self._access_log.enabled = new.log.access_log
        if self._logs is not None:
            self._logs.configure(new.log.level, new.log.format)


def _parser_limits(config: Config) -> ParserLimits:
    return ParserLimits(
        max_url_bytes=int(config.proxy.max_url_bytes),
        max_header_bytes=int(config.proxy.max_header_bytes),
        max_header_count=config.proxy.max_header_count,
        header_timeout=config.proxy.request_header_timeout,
    )


async def _listen(
    runner: web.BaseRunner, address: ListenAddress, key: str, ssl_context: ssl.SSLContext | None = None
) -> ListenAddress:
    site = web.TCPSite(runner, address.host, address.port, backlog=1024, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"{key}: cannot listen on {address}: {reason}") from None
    host, port = runner.addresses[-1][:2]
    return ListenAddress(host, port)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _keep_running_values(running: Config, new: Config) -> Config:
    """`new` with every restart-only key (or whole section) set back to the running value."""
    data, current = effective_config(new), effective_config(running)
    for dotted in RESTART_REQUIRED:
        *sections, key = dotted.rstrip(".").split(".")
        source, target = current, data
        for part in sections:
            source, target = source[part], target[part]
        target[key] = source[key]
    return Config.model_validate(data)


def alerts_view(engine: RuleEngine) -> dict[str, object]:
    """`/-/alerts`: what Prometheus's /api/v1/alerts and /api/v1/rules would say, in one answer."""
    return {
        "alerts": [
            {
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "state": alert.state.value,
                "value": _finite(alert.value),
                "activeAt": iso_time(alert.active_at),
                "firedAt": iso_time(alert.fired_at) if alert.fired_at else None,
                "resolvedAt": iso_time(alert.resolved_at) if alert.resolved_at else None,
                "fingerprint": alert.fingerprint,
            }
            for alert in engine.alerts()
        ],
        "rules": [state.as_dict() for state in engine.rule_states()],
    }


def alert_record(alert: Alert, at: float) -> Lifecycle:
    """An alert's firing or resolution for the audit trail."""
    firing = alert.state is AlertState.FIRING
    return Lifecycle(
        action="alert-firing" if firing else "alert-resolved",
        # ECS expects `info` with both categories; firing or resolved is in the action. No outcome on alerts.
        category=("host",) if "gpu" in alert.labels else ("web",),
        types=("info",),
        message=alert.annotations.get("summary") or f"alert {alert.name} {alert.state.value}",
        at=at,
        kind="alert",
        rule={
            "name": alert.name,
            "description": alert.annotations.get("summary"),
            "ruleset": f"slo:{alert.labels['slo']}" if "slo" in alert.labels else "sidecar",
        },
        sidecar={
            "alert": {
                "state": alert.state.value,
                "severity": alert.labels.get("severity"),
                "fingerprint": alert.fingerprint,
                "labels": dict(alert.labels),
                "value": _finite(alert.value),
                "active_at": iso_time(alert.active_at),
            }
        },
    )


def _finite(value: float) -> float | None:
    """An alert's value as JSON can carry it: NaN and infinities (no number, or none JSON has) as None."""
    return value if math.isfinite(value) else None


def _audit_reading(audit: AuditPipeline) -> AuditReading:
    """The audit pipeline's counters for the status page (the same ones `/metrics` exposes)."""
    stats, spool, sink = audit.stats, audit.spool, audit.sink
    levels = spool.levels  # used bytes and lag from the same moment
    return AuditReading(
        sink=sink.name,
        sink_up=audit.sink_up,
        accepted=float(stats.accepted),
        dropped=float(sum(stats.dropped.values())),
        dead_letters=float(sink.dead_lettered),
        spool_used_bytes=float(levels.used_bytes),
        spool_max_bytes=float(spool.max_bytes),
        lag_events=float(max(0, levels.next_offset - levels.committed_offset)),
    )


def _log_gpu_event(event: GpuEvent) -> None:
    level = logging.INFO if event.kind == "recovered" else logging.WARNING
    logger.log(level, event.message, extra={"gpu": event.gpu, "uuid": event.uuid, "kind": event.kind, "xid": event.xid})


def _gpu_event_recorder(audit: AuditPipeline) -> Callable[[GpuEvent], None]:
    """GPU events on the audit trail: an XID or a lost GPU explains the failed requests around it."""

    def record(event: GpuEvent) -> None:
        audit.record(
            Lifecycle(
                action="gpu-" + event.kind.removeprefix("gpu_").replace("_", "-"),
                # What the sidecar saw of a GPU, not an attempt of its own: no outcome. A GPU lost,
                # gone stale or back is a change of the host; an XID or a slow read is a report.
                category=("host",),
                types=("info",) if event.kind in ("xid", "read_timeout") else ("change",),
                message=event.message,
                at=event.at,
                sidecar={"gpu_event": {"gpu": event.gpu, "uuid": event.uuid, "xid": event.xid}},
            )
        )

    return record


def _config_digest(config: Config) -> str:
    """SHA-256 of the effective config, so the audit trail shows which config served each period."""
    # Over the masked config: a digest of secrets could be brute-forced offline. A changed
    # secret still shows, by key name, in the reload record's `changed` list.
    return hashlib.sha256(json.dumps(masked_config(config), sort_keys=True).encode()).hexdigest()


def _changed_keys(old: Config, new: Config) -> list[str]:
    before, after = _flatten(effective_config(old)), _flatten(effective_config(new))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


async def serve(
    config: Config,
    source: ConfigSource | None = None,
    logs: LogPipeline | None = None,
    on_started: Callable[[], object] | None = None,
) -> None:
    """Run the sidecar until it is told to stop; `on_started` runs once it serves."""
    await Sidecar(config, source, logs).run(on_started)
