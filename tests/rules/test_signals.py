"""Which requests count as bad: the shipped classification (the service's failures, not a client's),
the error classes, a classification an SLO configures, and the outcome of each error type (what the
exported rules read instead of the outcome)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidecar.config import AlertRuleConfig, SloConfig
from sidecar.exchange import Outcome
from sidecar.rules.signals import (
    DEFAULT_BAD_EVENTS,
    ERROR_CLASSES,
    BadEvents,
    error_classes,
    outcome_of_error_type,
    status_codes,
    status_regex,
)
from tests.support.endings import ENDINGS
from tests.support.records import make_exchange


def bad_under(events: BadEvents) -> set[tuple[int, str]]:
    return {(status, error_type) for status, error_type, outcome in ENDINGS if events.counts(status, outcome)}


@pytest.mark.parametrize(("status", "error_type", "outcome"), ENDINGS)
def test_every_error_type_the_proxy_gives_is_read_as_its_outcome(
    status: int, error_type: str, outcome: Outcome
) -> None:
    assert outcome_of_error_type(error_type) is outcome
    assert outcome_of_error_type(None) is Outcome.COMPLETED


def test_the_shipped_classification_counts_what_the_service_failed_not_what_clients_did() -> None:
    assert bad_under(DEFAULT_BAD_EVENTS) == {
        # 5xx answers from the upstream, and the sidecar's own when it could not serve.
        (500, ""), (501, ""), (503, ""), (503, "service_unavailable"), (503, "drain_timeout"),
        (500, "client_write_timeout"),
        # Upstream failures, whatever status went out.
        (502, "upstream_connect_error"), (504, "upstream_connect_timeout"), (504, "upstream_response_start_timeout"),
        (200, "upstream_idle_timeout"), (502, "upstream_disconnected"), (502, "upstream_bad_response"),
        (502, "upstream_error"), (200, "upstream_response_incomplete"),
    }  # fmt: skip
    # Not bad: the refusals of bad requests (501 for a transfer coding, 505 for HTTP/2.0 request
    # lines, 4xx), rate limits, and clients that went away, even from an upstream's 500.
    assert not DEFAULT_BAD_EVENTS.is_bad(make_exchange(status=501, outcome=Outcome.REJECTED,
                                                       error_type="unsupported_transfer_coding"))  # fmt: skip
    assert not DEFAULT_BAD_EVENTS.is_bad(make_exchange(status=500, outcome=Outcome.CLIENT_CLOSED,
                                                       error_type="client_closed"))  # fmt: skip


def test_the_error_classes() -> None:
    assert ERROR_CLASSES["any"] == DEFAULT_BAD_EVENTS
    assert bad_under(ERROR_CLASSES["5xx"]) == {
        (status, error_type) for status, error_type in bad_under(DEFAULT_BAD_EVENTS) if status >= 500
    }
    assert bad_under(ERROR_CLASSES["timeout"]) == {
        (504, "upstream_connect_timeout"), (504, "upstream_response_start_timeout"), (200, "upstream_idle_timeout")
    }  # fmt: skip
    assert bad_under(ERROR_CLASSES["upstream_down"]) == {(502, "upstream_connect_error")}
    refused = make_exchange(status=501, outcome=Outcome.REJECTED, error_type="unsupported_transfer_coding")
    assert error_classes(refused) == ()
    timed_out = make_exchange(status=504, outcome=Outcome.UPSTREAM_TIMEOUT, error_type="upstream_connect_timeout")
    assert error_classes(timed_out) == ("any", "5xx", "timeout")


def test_an_slo_can_count_otherwise() -> None:
    strict = BadEvents.build(statuses=["5xx", "429"], outcomes=["upstream_timeout", "client_closed"])
    bad = bad_under(strict)
    assert {(429, ""), (429, "rate_limited"), (501, "unsupported_transfer_coding")} <= bad
    assert {(499, "client_closed"), (200, "client_closed"), (200, "upstream_idle_timeout")} <= bad
    assert (200, "upstream_response_incomplete") not in bad  # upstream_error is not among its outcomes
    lenient = BadEvents.build(statuses=["500", "502", "504"], good_refusals=["5xx"], good_outcomes=["aborted"])
    assert bad_under(lenient) == {(500, ""), (502, "upstream_connect_error"), (504, "upstream_connect_timeout"),
                                  (504, "upstream_response_start_timeout"), (502, "upstream_disconnected"),
                                  (502, "upstream_bad_response"), (502, "upstream_error"), (500, "client_closed")}
    # Named by what it counts, whatever the order it was written in.
    assert BadEvents.build(statuses=["429", "5xx"]).key == BadEvents.build(statuses=["5xx", 429]).key
    assert strict.key != DEFAULT_BAD_EVENTS.key


def test_statuses_and_their_regular_expression() -> None:
    assert status_codes(["5xx"]) == frozenset(range(500, 600))
    assert status_codes([429, "503"]) == {429, 503}
    assert status_regex(status_codes(["5xx", "429"])) == "429|5.."
    assert status_regex({501, 505}) == "501|505"


def test_the_slo_config_holds_the_shipped_classification_and_refuses_what_cannot_be_counted() -> None:
    slo = SloConfig(name="availability", objective=99.9)
    assert BadEvents.build(statuses=slo.bad_statuses, outcomes=slo.bad_outcomes, good_refusals=slo.good_refusals,
                           good_outcomes=slo.good_outcomes) == DEFAULT_BAD_EVENTS  # fmt: skip
    assert (slo.min_events, slo.min_bad_events) == (20, 5)
    assert SloConfig(name="a", objective=99, bad_statuses=[503, "5XX"]).bad_statuses == ["503", "5xx"]
    problems = {
        "expected an HTTP status from 400 to 599 (503) or a class (4xx, 5xx), got '2xx'": {"bad_statuses": ["2xx"]},
        "got 600": {"good_refusals": [600]},
        "expected an outcome: completed, client_closed": {"bad_outcomes": ["timeout"]},
        "expected no completed in bad_outcomes": {"bad_outcomes": ["completed"]},
        "not both: client_closed": {"bad_outcomes": ["client_closed"]},
        "nothing would be bad": {"bad_statuses": [], "bad_outcomes": []},
        "expected no bad_statuses in slo 'a': it applies to sli: availability": {
            "sli": "latency", "latency_threshold": "1s", "bad_statuses": ["5xx", "429"]},
        "greater than or equal to 0": {"min_events": -1},
    }  # fmt: skip
    for message, fields in problems.items():
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SloConfig.model_validate({"name": "a", "objective": 99, **fields})


def test_an_alert_rules_minimum_of_evidence_applies_to_error_ratio_only() -> None:
    rule = AlertRuleConfig.model_validate({"name": "E", "signal": "error_ratio", "threshold": 0.1})
    assert (rule.min_events, rule.min_bad_events) == (20, 5)
    with pytest.raises(ValidationError, match="expected no min_events in rule 'T': it applies to error_ratio"):
        AlertRuleConfig.model_validate({"name": "T", "signal": "gpu_temperature", "threshold": 80, "min_events": 3})
    # What the effective config shows (every key, defaults included) loads again.
    shown = AlertRuleConfig.model_validate({"name": "T", "signal": "gpu_temperature", "threshold": 80})
    assert AlertRuleConfig.model_validate(shown.model_dump(by_alias=True)) == shown
    latency = SloConfig(name="l", objective=99, sli="latency", latency_threshold=1.0)
    assert SloConfig.model_validate(latency.model_dump()) == latency
