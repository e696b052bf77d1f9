from __future__ import annotations

import math

import pytest

from sidecar.demo.sampling import BadRequest, Sampling, openai_sampling


def test_defaults_and_what_each_parameter_sets():
    assert openai_sampling({}, 64) == Sampling(64, "max_tokens", 0.8, None, ())
    assert openai_sampling({"max_tokens": 10, "temperature": 0, "seed": -3, "stop": "\n", "n": 1}, 64) == Sampling(10, "max_tokens", 0.0, -3, ("\n",))
    assert openai_sampling({"max_completion_tokens": 40, "stop": ["a", "bc"], "stream": True, "stream_options": {"include_usage": True}}, 64) == Sampling(
        40, "max_completion_tokens", 0.8, None, ("a", "bc"))  # fmt: skip
    # null is "not given", as OpenAI's clients send it.
    assert openai_sampling({"max_tokens": None, "temperature": None, "seed": None, "stop": None, "n": None, "stream": None}, 64) == Sampling(64, "max_tokens", 0.8, None, ())


def test_max_completion_tokens_wins_over_max_tokens_in_either_order():
    assert openai_sampling({"max_completion_tokens": 7, "max_tokens": 30}, 64).max_tokens == 7
    assert openai_sampling({"max_tokens": 30, "max_completion_tokens": 7}, 64).max_tokens == 7


def test_unknown_and_unhonoured_fields_are_ignored():
    assert openai_sampling({"top_p": 0.1, "logprobs": True, "frobnicate": [1]}, 64) == openai_sampling({}, 64)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"max_completion_tokens": 0}, "max_completion_tokens", "max_completion_tokens must be at least 1, got 0."),
        ({"max_completion_tokens": "40"}, "max_completion_tokens", "max_completion_tokens must be an integer, got a string."),
        ({"max_tokens": 2.0}, "max_tokens", "max_tokens must be an integer, got a number."),
        ({"max_tokens": True}, "max_tokens", "max_tokens must be an integer, got a boolean."),
        ({"max_tokens": -1, "max_completion_tokens": 5}, "max_tokens", "max_tokens must be at least 1, got -1."),
        ({"temperature": 2.5}, "temperature", "temperature must be in [0, 2], got 2.5."),
        ({"temperature": -0.1}, "temperature", "temperature must be in [0, 2], got -0.1."),
        ({"temperature": "hot"}, "temperature", "temperature must be a finite number, got a string."),
        ({"temperature": math.nan}, "temperature", "temperature must be a finite number, got nan."),
        ({"seed": 1.5}, "seed", "seed must be an integer, got a number."),
        ({"seed": 2**63}, "seed", f"seed must be a 64-bit signed integer, got {2**63}."),
        ({"n": 2}, "n", "n must be 1: this server returns one choice per request, got 2."),
        ({"n": 0}, "n", "n must be at least 1, got 0."),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop takes at most 4 sequences, got 5."),
        ({"stop": [""]}, "stop", "stop cannot contain an empty string."),
        ({"stop": ""}, "stop", "stop cannot contain an empty string."),
        ({"stop": ["a", 1]}, "stop", "stop must be a string or an array of strings."),
        ({"stop": {"a": 1}}, "stop", "stop must be a string or an array of strings."),
        ({"stream": "yes"}, "stream", "stream must be a boolean, got a string."),
        ({"stream_options": {"include_usage": True}}, "stream_options", "Stream options can only be defined when `stream=True`."),
        ({"stream": True, "stream_options": [1]}, "stream_options", "stream_options must be an object, got an array."),
    ],
)
def test_a_wrong_type_or_range_is_refused_naming_the_parameter(body, param, message):
    with pytest.raises(BadRequest) as refused:
        openai_sampling(body, 64)
    assert (refused.value.param, str(refused.value)) == (param, message)
