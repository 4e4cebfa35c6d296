"""The fake providers' OpenAI Chat Completions API: ``POST .../chat/completions``.

Plain JSON or SSE ``data:`` chunks ending with ``data: [DONE]``; with
``stream_options.include_usage`` every chunk carries ``usage`` (null but on the
last). The script (RULE_KEYS in provider.py) sets chunks, delays, cuts, content,
a tool call and the finish reason.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakes.common import Answer, abort, content_text, split
from tests.fakes.compress import Encoder

_ERRORS: dict[int, tuple[str, str, str]] = {
    # status: (message, type, code)
    400: (
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens.",
        "invalid_request_error",
        "context_length_exceeded",
    ),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "permission_error", "permission_denied"),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "timeout_error", "timeout"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", "server_error"),
    502: ("Bad gateway.", "server_error", "bad_gateway"),
    503: ("The engine is currently overloaded.", "server_error", "service_unavailable"),
    504: ("Gateway timeout.", "server_error", "timeout"),
    529: ("Overloaded.", "overloaded_error", "overloaded"),
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """The OpenAI-format error body the fakes send for ``status``."""
    default = _ERRORS.get(status, (f"Fake error {status}.", "server_error", f"http_{status}"))
    msg, typ, code = default
    return {"error": {"message": message or msg, "type": typ, "param": None, "code": code}}


def _prompt_text(body: Mapping[str, Any]) -> str:
    return "".join(content_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }

def _finish(answer: Answer) -> str:
    return "stop" if answer.finish == "stop_sequence" else answer.finish


async def _complete(
    request: web.Request,
    body: Mapping[str, Any],
    answer: Answer,
    rule: Mapping[str, Any],
    headers: dict[str, str],
) -> web.StreamResponse:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_name:
        message["tool_calls"] = [{"id": "call_fake_0", "type": "function",
                                  "function": {"name": answer.tool_name, "arguments": answer.tool_arguments}}]
    payload = {
        "id": f"chatcmpl-fake-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish(answer),
                "logprobs": None,
            }
        ],
        "usage": _usage(answer),
    }
    data = json.dumps(payload).encode()
    if "Content-Encoding" in headers:
        data = Encoder(headers["Content-Encoding"]).whole(data)
    if "cut_after_chunks" not in rule:
        return web.Response(body=data, content_type="application/json", headers=headers)
    # Promise the full length, send half, then drop the connection.
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "application/json"
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    return abort(request)

async def _stream(
    request: web.Request,
    body: Mapping[str, Any],
    answer: Answer,
    rule: Mapping[str, Any],
    headers: dict[str, str],
) -> web.StreamResponse:
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "text/event-stream"
    resp.headers["Cache-Control"] = "no-cache"
    await resp.prepare(request)

    base = {
        "id": f"chatcmpl-fake-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.model,
    }
    encoder = Encoder(headers["Content-Encoding"]) if "Content-Encoding" in headers else None
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunk_delay = float(rule.get("chunk_delay", 0))
    cut_after = rule.get("cut_after_chunks")

    async def send(delta: dict[str, Any], finish: str | None, usage: Any = None) -> None:
        chunk = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])
        if include_usage:
            chunk["usage"] = usage
        event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        await resp.write(encoder.chunk(event) if encoder else event)

    await send({"role": "assistant", "content": ""}, None)
    for i, piece in enumerate(split(answer.content, int(rule.get("chunks", 3)))):
        if chunk_delay:  # before the cut too: what was sent gets read before the reset
            await asyncio.sleep(chunk_delay)
        if cut_after is not None and i >= int(cut_after):
            return abort(request)
        await send({"content": piece}, None)
    if cut_after is not None and int(cut_after) <= 0:
        return abort(request)
    if answer.tool_name:
        await send({"tool_calls": [{"index": 0, "id": "call_fake_0", "type": "function",
                                    "function": {"name": answer.tool_name, "arguments": ""}}]}, None)
        for piece in split(answer.tool_arguments, 2):
            await send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None)
    await send({}, _finish(answer), _usage(answer))
    done = b"data: [DONE]\n\n"
    await resp.write(encoder.chunk(done) + encoder.finish() if encoder else done)
    await resp.write_eof()
    return resp


async def answer(request: web.Request, name: str, body: dict[str, Any], rule: dict[str, Any],
                 headers: dict[str, str]) -> web.StreamResponse:
    ans = Answer.scripted(name, body, rule, _prompt_text(body))
    if body.get("stream"):
        return await _stream(request, body, ans, rule, headers)
    return await _complete(request, body, ans, rule, headers)
