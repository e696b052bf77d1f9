from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.proxy.headers import client_response_headers, connection_listed, upstream_request_headers


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def forward(incoming: CIMultiDictProxy[str], **overrides):
    options = dict(
        host="upstream:8000",
        client_ip="192.0.2.7",
        scheme="http",
        client_host="sidecar:8080",
        forwarded=True,
        trust_incoming_forwarded=False,
        request_id_header="X-Request-Id",
        request_id="rid",
    )
    options.update(overrides)
    return upstream_request_headers(incoming, **options)


def test_connection_tokens_from_every_connection_header_are_hop_by_hop():
    listed = connection_listed(headers(("Connection", "keep-alive, X-A"), ("connection", " x-b ,")))
    assert listed == {"keep-alive", "x-a", "x-b"}


def test_upstream_headers_drop_hop_by_hop_expect_and_host_and_set_ours():
    out = forward(
        headers(
            ("Host", "sidecar:8080"),
            ("Connection", "X-A"),
            ("X-A", "1"),
            ("Expect", "100-continue"),
            ("Transfer-Encoding", "chunked"),
            ("X-Request-Id", "client-chosen"),
            ("Accept", "*/*"),
        )
    )
    assert list(out.items()) == [
        ("Accept", "*/*"),
        ("Host", "upstream:8000"),
        ("X-Request-Id", "rid"),
        ("X-Forwarded-For", "192.0.2.7"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "sidecar:8080"),
    ]


def test_forwarded_headers_off_passes_client_ones_untouched():
    out = forward(headers(("X-Forwarded-For", "10.1.1.1")), forwarded=False, request_id=None)
    assert out.getall("X-Forwarded-For") == ["10.1.1.1"]
    assert "X-Forwarded-Proto" not in out and "X-Request-Id" not in out


def test_response_headers_keep_repeats_and_add_the_request_id_once():
    out = client_response_headers(
        headers(("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Keep-Alive", "5"), ("Content-Length", "3")),
        request_id_header="X-Request-Id",
        request_id="rid",
    )
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "Keep-Alive" not in out
    assert out["Content-Length"] == "3" and out["X-Request-Id"] == "rid"
    kept = client_response_headers(headers(("X-Request-Id", "upstream's")), request_id_header="X-Request-Id", request_id="rid")
    assert kept.getall("X-Request-Id") == ["upstream's"]
