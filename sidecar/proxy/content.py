"""Keeps what the audit asks of the bodies (`audit.content`): digests, or capped heads.

Fed chunk by chunk as the bytes pass, after each chunk is written on, so
keeping bodies never delays them. SHA-256 costs about a millisecond per
megabyte; heads are copied only up to the cap.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from sidecar.exchange import BodyContent

ContentMode = Literal["none", "sha256", "redacted"]


class BodyRecorder:
    __slots__ = ("_digests", "_cap", "_request", "_response", "_request_head", "_response_head", "_truncated")

    def __init__(self, mode: ContentMode, cap: int) -> None:
        self._digests = mode == "sha256"
        self._cap = cap if mode == "redacted" else 0
        self._request = hashlib.sha256() if self._digests else None
        self._response = hashlib.sha256() if self._digests else None
        self._request_head = bytearray()
        self._response_head = bytearray()
        self._truncated = False

    def request(self, chunk: bytes) -> None:
        if self._request is not None:
            self._request.update(chunk)
        elif self._cap:
            self._keep(self._request_head, chunk)

    def response(self, chunk: bytes) -> None:
        if self._response is not None:
            self._response.update(chunk)
        elif self._cap:
            self._keep(self._response_head, chunk)

    def _keep(self, head: bytearray, chunk: bytes) -> None:
        room = self._cap - len(head)
        if len(chunk) > room:
            self._truncated = True
        if room > 0:
            head += chunk[:room]

    def result(self) -> BodyContent:
        if self._request is not None and self._response is not None:
            return BodyContent(request_sha256=self._request.hexdigest(), response_sha256=self._response.hexdigest())
        return BodyContent(
            request_head=bytes(self._request_head),
            response_head=bytes(self._response_head),
            truncated=self._truncated,
        )
