"""Which headers cross the proxy, and which the proxy adds.

Hop-by-hop headers describe one connection, not the message, so they are
never forwarded (RFC 9110 §7.6.1). The list is the one Go's
net/http/httputil.ReverseProxy uses: the RFC's fields plus Proxy-Connection,
Proxy-Authenticate, Proxy-Authorization and Trailer, and any field named in
the Connection header. Expect is also consumed here: the sidecar answers
100-continue itself and sends the body upstream without waiting.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {"expect", "host"}
_FORWARDED_FOR = "X-Forwarded-For"
_FORWARDED_PROTO = "X-Forwarded-Proto"
_FORWARDED_HOST = "X-Forwarded-Host"
# Headers through which a client could claim another address; replaced or
# dropped unless the hop in front is trusted.
_FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Field names the sender declared hop-by-hop in its Connection header(s)."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    )


def end_to_end(
    headers: CIMultiDictProxy[str], drop: frozenset[str] = HOP_BY_HOP
) -> Iterable[tuple[str, str]]:
    """The (name, value) pairs of `headers` that are not hop-by-hop, in order."""
    listed = connection_listed(headers)
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in drop or lowered in listed:
            continue
        yield name, value


def upstream_request_headers(
    headers: CIMultiDictProxy[str],
    *,
    host: str,
    client_ip: str | None,
    scheme: str,
    client_host: str | None,
    forwarded: bool,
    trust_incoming_forwarded: bool,
    request_id_header: str,
    request_id: str | None,
    replaced: frozenset[str] = frozenset(),
) -> CIMultiDict[str]:
    """Headers for the upstream request built from the client's request headers.

    `replaced` names headers the caller writes itself (the trace context), so
    the client's copies are not forwarded beside them.
    """
    drop = _NOT_FORWARDED_UPSTREAM | replaced
    if forwarded and not trust_incoming_forwarded:
        drop = drop | _FORWARDED
    if request_id is not None:
        drop = drop | {request_id_header.lower()}
    out: CIMultiDict[str] = CIMultiDict(end_to_end(headers, drop))
    out["Host"] = host
    if request_id is not None:
        out[request_id_header] = request_id
    if forwarded:
        if client_ip:
            # Several X-Forwarded-For lines form one list (RFC 9110 §5.3).
            prior = ", ".join(out.getall(_FORWARDED_FOR, ())) if trust_incoming_forwarded else ""
            out[_FORWARDED_FOR] = f"{prior}, {client_ip}" if prior else client_ip
        if not (trust_incoming_forwarded and _FORWARDED_PROTO in out):
            out[_FORWARDED_PROTO] = scheme
        if client_host and not (trust_incoming_forwarded and _FORWARDED_HOST in out):
            out[_FORWARDED_HOST] = client_host
    return out


def client_response_headers(
    headers: CIMultiDictProxy[str], *, request_id_header: str, request_id: str | None
) -> CIMultiDict[str]:
    """Headers for the client's response built from the upstream's response headers."""
    out: CIMultiDict[str] = CIMultiDict(end_to_end(headers))
    if request_id is not None and request_id_header not in out:
        out[request_id_header] = request_id
    return out
