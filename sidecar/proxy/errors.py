"""Small JSON error bodies for responses the sidecar makes itself.

The shape is OpenAI's error object, so the LLM clients users already run
(openai-python, LangChain, curl scripts reading `.error.message`) show the
message instead of choking on HTML.
"""

from __future__ import annotations

import json

from aiohttp import web


def error_body(status: int, error_type: str, message: str, request_id: str | None) -> bytes:
    error: dict[str, object] = {"message": message, "type": error_type, "code": status}
    if request_id is not None:
        error["request_id"] = request_id
    return json.dumps({"error": error}, separators=(",", ":")).encode()


def error_response(
    status: int,
    error_type: str,
    message: str,
    *,
    request_id: str | None = None,
    request_id_header: str | None = None,
) -> web.Response:
    response = web.Response(
        status=status,
        body=error_body(status, error_type, message, request_id),
        content_type="application/json",
    )
    if request_id is not None and request_id_header:
        response.headers[request_id_header] = request_id
    return response
