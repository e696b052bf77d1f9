"""What an OpenAI chat or text completion request asks of the sampler, checked as vLLM checks it.

    sampling = openai_sampling(body, default_max_tokens=64)
    Generation(model, prompt, sampling.max_tokens, sampling.temperature, sampling.seed, device, stop=sampling.stop)

A value of the wrong JSON type or out of range raises `BadRequest` naming the
parameter (`param`), which the server answers with 400 in vLLM's error body.
Fields this module does not read are ignored, as vLLM ignores fields it does
not know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# vLLM takes seeds as 64-bit signed integers (torch.long).
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1
# OpenAI's limit; vLLM takes any number, so a request within this one works on both.
MAX_STOP_SEQUENCES = 4
DEFAULT_TEMPERATURE = 0.8


class BadRequest(Exception):
    """A request the server answers with 400; `param` names the offending field, if one did."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    max_tokens_param: str
    """The field that set `max_tokens` (or would have), for errors about it."""
    temperature: float
    seed: int | None
    """None: a fresh random seed per request, as OpenAI and vLLM do without one."""
    stop: tuple[str, ...]


def openai_sampling(body: dict[str, Any], default_max_tokens: int) -> Sampling:
    """The sampling a `/v1/chat/completions` or `/v1/completions` body asks for."""
    n = _optional_int(body, "n")
    if n is not None and n < 1:
        raise BadRequest(f"n must be at least 1, got {n}.", "n")
    if n is not None and n > 1:
        raise BadRequest(f"n must be 1: this server returns one choice per request, got {n}.", "n")
    # As in vLLM: max_completion_tokens wins over the deprecated max_tokens when both are given.
    max_tokens, max_tokens_param = default_max_tokens, "max_tokens"
    for key in ("max_tokens", "max_completion_tokens"):
        value = _optional_int(body, key)
        if value is not None and value < 1:
            raise BadRequest(f"{key} must be at least 1, got {value}.", key)
        if value is not None:
            max_tokens, max_tokens_param = value, key
    temperature = _optional_number(body, "temperature")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise BadRequest(f"temperature must be in [0, 2], got {temperature}.", "temperature")
    seed = _optional_int(body, "seed")
    if seed is not None and not _SEED_MIN <= seed <= _SEED_MAX:
        raise BadRequest(f"seed must be a 64-bit signed integer, got {seed}.", "seed")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {_json_type(stream)}.", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(f"stream_options must be an object, got {_json_type(options)}.", "stream_options")
    if options is not None and not stream:
        raise BadRequest("Stream options can only be defined when `stream=True`.", "stream_options")
    return Sampling(max_tokens, max_tokens_param, DEFAULT_TEMPERATURE if temperature is None else temperature, seed, _stop(body.get("stop")))


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise BadRequest("stop must be a string or an array of strings.", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}.", "stop")
    if not all(stops):
        raise BadRequest("stop cannot contain an empty string.", "stop")
    return tuple(stops)


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRequest(f"{key} must be an integer, got {_json_type(value)}.", key)
    return value


def _optional_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    # Python's json module reads NaN and Infinity, which no JSON client means as a number.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a finite number, got {_json_type(value)}.", key)
    return float(value)


def _json_type(value: object) -> str:
    """The JSON name of a value's type: error messages name it rather than echo what the client sent."""
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "an array", dict: "an object"}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return names.get(type(value), "null")
