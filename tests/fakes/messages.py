"""The fake providers' Anthropic Messages API: ``POST .../messages``.

Like Anthropic: the key in ``x-api-key`` or as a Bearer token (anthropic SDK 2.x
sends that), ``anthropic-version`` required (any value), ``max_tokens``
required, errors as ``{"type": "error", "error": {"type", "message"}}``; streams are
named events (message_start, content_block_start/delta/stop, ping, message_delta,
message_stop). The script (RULE_KEYS in provider.py) works as for chat: chunks,
chunk_delay, cut_after_chunks, content, tool_call, finish_reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakes.common import Answer, abort, content_text, split

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}
_MESSAGES = {401: "invalid x-api-key", 429: "Number of request tokens has exceeded your per-minute rate limit",
             529: "Overloaded"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
                "stop_sequence": "stop_sequence"}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """The Anthropic-format error body the fakes send for ``status``."""
    kind = _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message or _MESSAGES.get(status, f"Fake error {status}.")}}


def _prompt(body: Mapping[str, Any]) -> str:
    system = body.get("system")
    parts = [content_text(system)] if system else []
    parts += [content_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
    return "".join(parts)


def _problem(request: web.Request, body: Mapping[str, Any]) -> str | None:
    """What Anthropic would refuse with a 400 (the checks that matter to a translator)."""
    if not request.headers.get("anthropic-version"):
        return "anthropic-version: header is required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list):
        return "messages: Field required"
    return None


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def message(answer: Answer, body: Mapping[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": answer.content}]
    if answer.tool_name:
        content.append({"type": "tool_use", "id": "toolu_fake_0", "name": answer.tool_name,
                        "input": json.loads(answer.tool_arguments)})
    stops = body.get("stop_sequences") or [None]
    return {"id": f"msg_fake_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": answer.model, "content": content, "stop_reason": STOP_REASONS.get(answer.finish, "end_turn"),
            "stop_sequence": stops[0] if answer.finish == "stop_sequence" else None,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens}}


async def answer(request: web.Request, name: str, body: dict[str, Any], rule: dict[str, Any],
                 headers: dict[str, str]) -> web.StreamResponse:
    problem = _problem(request, body)
    if problem:
        return web.json_response(error_body(400, problem), status=400)
    ans = Answer.scripted(name, body, rule, _prompt(body))
    msg = message(ans, body)
    if not body.get("stream"):
        data = json.dumps(msg).encode()
        if "cut_after_chunks" not in rule:
            return web.Response(body=data, content_type="application/json", headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_type, resp.content_length = "application/json", len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        return abort(request)

    resp = web.StreamResponse(headers=headers)
    resp.content_type = "text/event-stream"
    resp.headers["Cache-Control"] = "no-cache"
    await resp.prepare(request)
    chunk_delay = float(rule.get("chunk_delay", 0))
    cut_after = rule.get("cut_after_chunks")
    start = {**msg, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": ans.prompt_tokens, "output_tokens": 1}}
    await resp.write(_event({"type": "message_start", "message": start}))
    await resp.write(_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
    await resp.write(_event({"type": "ping"}))
    for i, piece in enumerate(split(ans.content, int(rule.get("chunks", 3)))):
        if chunk_delay:
            await asyncio.sleep(chunk_delay)
        if cut_after is not None and i >= int(cut_after):
            return abort(request)
        await resp.write(_event({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": piece}}))
    if cut_after is not None and int(cut_after) <= 0:
        return abort(request)
    await resp.write(_event({"type": "content_block_stop", "index": 0}))
    if ans.tool_name:
        tool = {**msg["content"][1], "input": {}}
        await resp.write(_event({"type": "content_block_start", "index": 1, "content_block": tool}))
        for piece in split(ans.tool_arguments, 2):
            await resp.write(_event({"type": "content_block_delta", "index": 1,
                                     "delta": {"type": "input_json_delta", "partial_json": piece}}))
        await resp.write(_event({"type": "content_block_stop", "index": 1}))
    await resp.write(_event({"type": "message_delta",
                             "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": msg["stop_sequence"]},
                             "usage": {"output_tokens": ans.completion_tokens}}))
    await resp.write(_event({"type": "message_stop"}))
    await resp.write_eof()
    return resp
