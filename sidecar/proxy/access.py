"""Who may pass: authentication, the failed-attempt throttle and rate limits, for the proxy.

The proxy asks twice per request. `identify` runs on the headers alone,
before any body byte is read: a caller without valid credentials is turned
away at once. `admit` runs once the request's model and `stream` flag are
known (only read when a check needs them): model allowlists (403) and rate
limits (429) decide there. What a request took (a stream slot) is given back,
and its token usage charged, by `settle` when the Exchange is final.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from sidecar.config import AuthConfig, LimitsConfig
from sidecar.exchange import ANONYMOUS, Exchange, Principal
from sidecar.proxy.auth.authenticator import Authenticator, AuthFailure, Identity
from sidecar.proxy.limits import ALLOWED, Decision, FailureThrottle, RateLimiter, retry_headers

_ANONYMOUS_IDENTITY = Identity(ANONYMOUS, None)
_CREDENTIAL_HEADERS = ("Authorization", "X-API-Key")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request turned away before it reached the upstream."""

    status: int
    error_type: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let through: whose bucket it drew on, and what to give back at the end."""

    subject: str
    tier: str | None
    decision: Decision


NOT_LIMITED = Admission("", None, ALLOWED)


class AccessControl:
    """Authentication (when `auth.enabled`) and rate limits (when `limits.enabled`), as one gate."""

    def __init__(self, auth: AuthConfig, limits: LimitsConfig) -> None:
        # Kept here, not in the authenticator, so a reload that rebuilds it does not reset the counts.
        self.auth_failures: Counter[str] = Counter()
        self.authenticator: Authenticator | None = None
        self.throttle: FailureThrottle | None = None
        self.limiter: RateLimiter | None = None
        self._auth: AuthConfig | None = None
        self._limits = limits
        self._limits_streams = False
        self.reconfigure(auth, limits)  # from nothing: builds each part the config turns on

    def reconfigure(self, auth: AuthConfig, limits: LimitsConfig) -> None:
        """Apply a (re)loaded config: credentials re-read, limits changed, bucket levels kept."""
        if auth != self._auth or self.authenticator is None:
            self.authenticator = Authenticator(auth, failures=self.auth_failures) if auth.enabled else None
        elif self.authenticator is not None:
            self.authenticator.reload()
        if self.throttle is not None and auth.failure_throttle.max_failures:
            self.throttle.reconfigure(auth.failure_throttle)
        else:
            self.throttle = (
                FailureThrottle(auth.failure_throttle) if auth.enabled and auth.failure_throttle.max_failures else None
            )
        if limits.enabled and self.limiter is not None:
            self.limiter.reconfigure(limits)
        else:
            self.limiter = RateLimiter(limits) if limits.enabled else None
        self._auth, self._limits = auth, limits
        self._limits_streams = _limits_streams(limits)

    # --- per request ------------------------------------------------------------

    def identify(self, headers: Mapping[str, str], path: str, raw_path: str, client: str | None) -> Identity | Refusal:
        """The caller, from the request head; a Refusal for missing or bad credentials."""
        authenticator = self.authenticator
        if authenticator is None or authenticator.exempt(path, raw_path):
            return _ANONYMOUS_IDENTITY
        throttle = self.throttle
        if throttle is not None and client is not None:
            wait = throttle.blocked(client)
            if wait is not None:
                return _too_many(
                    "rate_limited",
                    "too many failed authentication attempts from this address; retry later",
                    wait,
                )
        try:
            return authenticator.authenticate(headers)
        except AuthFailure as failure:
            if throttle is not None and client is not None:
                throttle.note_failure(client)
            return Refusal(failure.status, failure.error_type, failure.message, (("WWW-Authenticate", failure.challenge),))

    def needs_request_facts(self, identity: Identity) -> bool:
        """Whether `admit` must know the request's model and stream flag."""
        if identity.models is not None:
            return True
        return self._limits_streams

    def admit(
        self, identity: Identity, client: str | None, *, model: str | None, stream: bool, model_call: bool
    ) -> Admission | Refusal:
        """Model allowlist, then rate limits."""
        if model_call and identity.models is not None and self.authenticator is not None:
            try:
                self.authenticator.check_model(identity, model)
            except AuthFailure as failure:
                return Refusal(failure.status, failure.error_type, failure.message, (("WWW-Authenticate", failure.challenge),))
        limiter = self.limiter
        if limiter is None:
            return NOT_LIMITED
        principal = identity.principal
        subject = self._subject(principal, client)
        decision = limiter.admit(subject, principal.tier, stream=stream and model_call)
        if not decision.allowed:
            return Refusal(429, "rate_limited", decision.message, decision.headers)
        return Admission(subject, principal.tier, decision)

    def settle(self, admission: Admission, exchange: Exchange) -> None:
        """Give back the stream slot, charge the tokens the answer used."""
        limiter = self.limiter
        if limiter is None or admission is NOT_LIMITED:
            return
        if admission.decision.holds_stream:
            limiter.release_stream(admission.subject)
        gen_ai = exchange.gen_ai
        if gen_ai is not None:
            used = (gen_ai.input_tokens or 0) + (gen_ai.output_tokens or 0)
            if used:
                limiter.charge_tokens(admission.subject, admission.tier, used)

    def upstream_credentials(self, headers: CIMultiDict[str]) -> None:
        """Strip or replace the client's credentials on the upstream request, as configured."""
        if self.authenticator is None:
            return  # not ours: with authentication off the credentials are meant for the model server
        mode = self._auth.upstream_authorization
        if mode == "pass":
            return
        for name in _CREDENTIAL_HEADERS:
            headers.popall(name, None)
        if mode == "replace":
            headers["Authorization"] = f"Bearer {self._auth.upstream_token}"

    def _subject(self, principal: Principal, client: str | None) -> str:
        if principal.is_anonymous:
            return f"ip:{client}"
        if self._limits.per == "credential":
            return f"credential:{principal.auth_method}:{principal.credential_id or principal.user or principal.tenant}"
        return f"tenant:{principal.tenant}" if principal.tenant is not None else f"user:{principal.user}"


def _limits_streams(limits: LimitsConfig) -> bool:
    return limits.enabled and any(tier.concurrent_streams for tier in limits.tiers.values())


def _too_many(error_type: str, message: str, wait: float) -> Refusal:
    return Refusal(429, error_type, message, retry_headers(wait))
