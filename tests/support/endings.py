"""Every way the proxy ends an exchange, as (status, error type, outcome): the README's table of
answers the sidecar makes itself, plus answers the upstream gave and how they can be cut short."""

from __future__ import annotations

from sidecar.exchange import Outcome

ENDINGS: tuple[tuple[int, str, Outcome], ...] = (
    # The upstream answered.
    (200, "", Outcome.COMPLETED),
    (404, "", Outcome.COMPLETED),
    (429, "", Outcome.COMPLETED),
    (500, "", Outcome.COMPLETED),
    (501, "", Outcome.COMPLETED),
    (503, "", Outcome.COMPLETED),
    # The sidecar refused the request.
    (400, "bad_request", Outcome.REJECTED),
    (401, "unauthenticated", Outcome.REJECTED),
    (403, "forbidden", Outcome.REJECTED),
    (408, "client_body_timeout", Outcome.REJECTED),
    (413, "request_body_too_large", Outcome.REJECTED),
    (414, "request_uri_too_long", Outcome.REJECTED),
    (429, "rate_limited", Outcome.REJECTED),
    (431, "request_header_fields_too_large", Outcome.REJECTED),
    (501, "unsupported_transfer_coding", Outcome.REJECTED),
    (505, "http_version_not_supported", Outcome.REJECTED),
    (503, "service_unavailable", Outcome.REJECTED),
    # The client went away, before or after the upstream's answer began.
    (499, "client_closed", Outcome.CLIENT_CLOSED),
    (200, "client_closed", Outcome.CLIENT_CLOSED),
    (500, "client_closed", Outcome.CLIENT_CLOSED),
    # The upstream failed.
    (502, "upstream_connect_error", Outcome.UPSTREAM_UNAVAILABLE),
    (504, "upstream_connect_timeout", Outcome.UPSTREAM_TIMEOUT),
    (504, "upstream_response_start_timeout", Outcome.UPSTREAM_TIMEOUT),
    (200, "upstream_idle_timeout", Outcome.UPSTREAM_TIMEOUT),
    (502, "upstream_disconnected", Outcome.UPSTREAM_ERROR),
    (502, "upstream_bad_response", Outcome.UPSTREAM_ERROR),
    (502, "upstream_error", Outcome.UPSTREAM_ERROR),
    (200, "upstream_response_incomplete", Outcome.UPSTREAM_ERROR),
    # The sidecar cut the exchange short.
    (503, "drain_timeout", Outcome.ABORTED),
    (200, "drain_timeout", Outcome.ABORTED),
    (200, "client_write_timeout", Outcome.ABORTED),
    (500, "client_write_timeout", Outcome.ABORTED),
)
