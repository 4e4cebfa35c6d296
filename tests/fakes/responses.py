"""The fake providers' OpenAI Responses API: ``POST .../responses``.

Like OpenAI: Bearer key, ``input`` required, OpenAI error bodies; answers are
``response`` objects, streams the typed events (response.created, in_progress,
output_item.added, content_part.added, output_text.delta/done, content_part.done,
output_item.done, function_call_arguments.delta/done, response.completed or
response.incomplete), each with a sequence_number. Server state: the ids of
answers given with ``store`` (default true) are kept, and a ``previous_response_id``
naming another id is refused (400 previous_response_not_found), as OpenAI would.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakes.common import Answer, abort, content_text, split


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


def _prompt(body: Mapping[str, Any]) -> str:
    raw = body.get("input")
    parts = [str(body.get("instructions") or "")]
    if isinstance(raw, str):
        parts.append(raw)
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, dict):
            parts.append(content_text(item.get("content")) + content_text(item.get("output")))
    return "".join(parts)


def response(answer: Answer, body: Mapping[str, Any], resp_id: str, status: str,
             output: list[dict[str, Any]]) -> dict[str, Any]:
    incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(answer.finish)
    done = status != "in_progress"
    return {"id": resp_id, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": {"reason": incomplete} if done and incomplete else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": answer.model, "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"), "store": body.get("store", True),
            "temperature": body.get("temperature"), "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p"), "truncation": "disabled", "metadata": {},
            "usage": {"input_tokens": answer.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": answer.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens} if done else None}


def _items(answer: Answer) -> list[dict[str, Any]]:
    items = [{"id": "msg_fake_0", "type": "message", "status": "completed", "role": "assistant",
              "content": [{"type": "output_text", "text": answer.content, "annotations": []}]}]
    if answer.tool_name:
        items.append({"id": "fc_fake_1", "type": "function_call", "status": "completed", "call_id": "call_fake_0",
                      "name": answer.tool_name, "arguments": answer.tool_arguments})
    return items


async def answer(request: web.Request, name: str, body: dict[str, Any], rule: dict[str, Any],
                 headers: dict[str, str], ids: collections.deque[str]) -> web.StreamResponse:
    if not isinstance(body.get("input"), (str, list)):
        return _error(400, "Missing required parameter: 'input'.", "missing_required_parameter", "input")
    previous = body.get("previous_response_id")
    if previous is not None and previous not in ids:
        return _error(400, f"Previous response with id '{previous}' not found.", "previous_response_not_found",
                      "previous_response_id")
    ans = Answer.scripted(name, body, rule, _prompt(body))
    resp_id = f"resp_fake_{uuid.uuid4().hex[:12]}"
    if body.get("store", True):
        ids.append(resp_id)
    status = "incomplete" if ans.finish in ("length", "content_filter") else "completed"
    final = response(ans, body, resp_id, status, _items(ans))
    if not body.get("stream"):
        data = json.dumps(final).encode()
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
    seq = iter(range(1 << 30))

    async def send(data: dict[str, Any]) -> None:
        data["sequence_number"] = next(seq)
        await resp.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())

    pending = response(ans, body, resp_id, "in_progress", [])
    await send({"type": "response.created", "response": pending})
    await send({"type": "response.in_progress", "response": pending})
    msg = _items(ans)[0]
    await send({"type": "response.output_item.added", "output_index": 0,
                "item": {**msg, "status": "in_progress", "content": []}})
    await send({"type": "response.content_part.added", "item_id": msg["id"], "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}})
    chunk_delay, cut_after = float(rule.get("chunk_delay", 0)), rule.get("cut_after_chunks")
    for i, piece in enumerate(split(ans.content, int(rule.get("chunks", 3)))):
        if chunk_delay:
            await asyncio.sleep(chunk_delay)
        if cut_after is not None and i >= int(cut_after):
            return abort(request)
        await send({"type": "response.output_text.delta", "item_id": msg["id"], "output_index": 0,
                    "content_index": 0, "delta": piece, "logprobs": []})
    if cut_after is not None and int(cut_after) <= 0:
        return abort(request)
    await send({"type": "response.output_text.done", "item_id": msg["id"], "output_index": 0, "content_index": 0,
                "text": ans.content, "logprobs": []})
    await send({"type": "response.content_part.done", "item_id": msg["id"], "output_index": 0, "content_index": 0,
                "part": msg["content"][0]})
    await send({"type": "response.output_item.done", "output_index": 0, "item": msg})
    if ans.tool_name:
        call = _items(ans)[1]
        await send({"type": "response.output_item.added", "output_index": 1,
                    "item": {**call, "status": "in_progress", "arguments": ""}})
        for piece in split(ans.tool_arguments, 2):
            await send({"type": "response.function_call_arguments.delta", "item_id": call["id"], "output_index": 1,
                        "delta": piece})
        await send({"type": "response.function_call_arguments.done", "item_id": call["id"], "output_index": 1,
                    "arguments": ans.tool_arguments})
        await send({"type": "response.output_item.done", "output_index": 1, "item": call})
    await send({"type": "response.incomplete" if status == "incomplete" else "response.completed",
                "response": final})
    await resp.write_eof()
    return resp
