"""OpenTelemetry semantic-convention values shared by metrics and spans.

HTTP as of semantic conventions 1.44.0; GenAI as of 1.41.0, the last release
that defined them in the main repository (1.44.0 carries them unchanged).
"""

from __future__ import annotations

from urllib.parse import unquote_plus

SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
"""The schema of the conventions the spans follow, on the tracer and the resource."""

# RFC 9110's methods, PATCH (RFC 5789) and QUERY (known since 1.38).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"})

UNKNOWN_PROVIDER = "unknown"
"""gen_ai.provider.name when `llm.provider_name` is not set. The wire protocol does not say which
product spoke it (vLLM, SGLang, llama.cpp and Ollama all speak OpenAI's), and `openai` would
claim OpenAI's service, which backends use to price and group calls; so a custom value that says
nothing, as the conventions allow where no well-known value applies."""

REDACTED = "REDACTED"

# Query keys whose values OpenTelemetry says to redact; matched case-sensitively, as it says.
_OTEL_SENSITIVE_KEYS = frozenset(
    {"X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "X-Goog-Signature"}
)

# Keys that name a credential, by their last word (api_key, apiKey, access-token, client.secret)
# or their last two (session_id), in any case: the words the audit's redactor treats as secret.
_CREDENTIAL_WORDS = frozenset({
    "key", "apikey", "token", "accesstoken", "authtoken", "idtoken", "refreshtoken", "secret", "clientsecret",
    "password", "passwd", "passphrase", "pwd", "auth", "authorization", "sig", "signature", "credential",
    "credentials", "session", "sessionid", "cookie", "jwt",
})  # fmt: skip
_WORD_BREAKS = str.maketrans("-_.[]", "     ")


def method_label(method: str) -> str:
    """http.request.method: the method if it is a known one, else `_OTHER`."""
    return method if method in KNOWN_METHODS else "_OTHER"


def scheme_label(scheme: str) -> str:
    """url.scheme of a request the proxy received: `http` or `https`, nothing else."""
    return "https" if scheme == "https" else "http"


def gen_ai_provider(configured: str) -> str:
    """gen_ai.provider.name: `llm.provider_name` as configured, else `unknown`."""
    return configured or UNKNOWN_PROVIDER


def redacted_query(query: str) -> str:
    """url.query with the values of credential-bearing keys replaced by `REDACTED`, keys kept.

    `redacted_query("q=x&sig=abc&api_key=k")  # "q=x&sig=REDACTED&api_key=REDACTED"`
    """
    pairs = query.split("&")
    for index, pair in enumerate(pairs):
        key, equals, value = pair.partition("=")
        if value and _is_credential_key(key):
            pairs[index] = f"{key}{equals}{REDACTED}"
    return "&".join(pairs)


def _is_credential_key(key: str) -> bool:
    if key in _OTEL_SENSITIVE_KEYS:
        return True
    if "%" in key or "+" in key:
        key = unquote_plus(key)
    words = key.lower().translate(_WORD_BREAKS).split()
    if not words:
        return False
    return words[-1] in _CREDENTIAL_WORDS or (len(words) > 1 and words[-2] + words[-1] in _CREDENTIAL_WORDS)
