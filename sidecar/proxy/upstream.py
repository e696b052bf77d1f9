"""The one pooled HTTP client the proxy and the health prober share."""

from __future__ import annotations

import aiohttp

from sidecar.config import UpstreamConfig


def create_upstream_session(config: UpstreamConfig) -> aiohttp.ClientSession:
    """A client session that forwards requests faithfully to the configured upstream.

    Faithful means: no cookies remembered between clients (a shared jar would
    leak one user's session to the next), no headers invented (aiohttp adds
    User-Agent, Accept, Accept-Encoding and Content-Type by default), bodies
    left compressed as the upstream sent them, and no proxy settings read from
    the environment.
    """
    address = config.url
    connector: aiohttp.BaseConnector
    if address.unix_socket is not None:
        connector = aiohttp.UnixConnector(
            path=address.unix_socket,
            limit=config.max_connections,
            keepalive_timeout=config.keepalive_timeout,
        )
    else:
        connector = aiohttp.TCPConnector(
            limit=config.max_connections,
            limit_per_host=0,
            keepalive_timeout=config.keepalive_timeout,
            ttl_dns_cache=60,
        )
    # Requests pass their own timeouts (they follow config reloads); this
    # default only guards calls that pass none.
    timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        auto_decompress=False,
        trust_env=False,
        raise_for_status=False,
    )
