"""An OpenAI Responses caller served by a chat provider (stateless requests only).

    instructions                          -> a first `system` message
    input: a string                       -> one user message
    input items: message (user/system/developer/assistant; input_text, output_text, input_image)
                                          -> chat messages (developer -> system; image_url parts)
    function_call items                   -> assistant `tool_calls` (consecutive calls grouped)
    function_call_output items            -> `tool` messages
    reasoning items                       -> dropped (opaque to a chat model)
    tools (function), tool_choice, parallel_tool_calls, max_output_tokens, temperature, top_p,
    text.format, reasoning.effort, stream, user, safety_identifier, prompt_cache_key, top_logprobs
                                          -> their chat equivalents (max_output_tokens -> max_tokens,
                                             text.format -> response_format, effort -> reasoning_effort)
    the chat answer                       -> a `response` object: a message item with output_text,
                                             function_call items, usage; finish length/content_filter
                                             -> status incomplete with the reason

Nothing is stored: the answer says `store: false` and its id cannot be used as a
`previous_response_id`. What needs OpenAI's server state or built-in tools is
listed by `ResponsesShape.native_only`; meeting it here is a BadRequest.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import BadRequest
from .base import EMPTY, count, first_choice, int_field, obj
from .responses import input_items

IdMaker = Callable[[str], str]


def random_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _parts(content: Any, role: str, where: str) -> Any:
    """Responses content as chat content: a string, or text/image_url parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}: expected a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"], **({"detail": part["detail"]} if part.get("detail") else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise BadRequest(f"{where}[{i}]: content part type {kind!r} cannot be sent to this model")
    if any(p["type"] != "text" for p in parts):
        if role != "user":
            raise BadRequest(f"{where}: only the user's messages can carry images for this model")
        return parts
    return ("" if role == "assistant" else "\n").join(p["text"] for p in parts)


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        out.append({"role": "system", "content": body["instructions"]})
    for i, item in enumerate(input_items(body)):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequest(f"{where}.role: {role!r} cannot be sent to this model")
            chat_role = "system" if role == "developer" else str(role)
            out.append({"role": chat_role, "content": _parts(item.get("content"), chat_role, f"{where}.content")})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id", "")), "type": "function",
                    "function": {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", ""))}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":   # text and calls of one turn
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _parts(output, "tool", f"{where}.output")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": text})
        elif kind != "reasoning":
            raise BadRequest(f"{where}: input item type {kind!r} cannot be sent to this model")
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if choice in ("auto", "none", "required"):
        return choice
    raise BadRequest(f"tool_choice: {choice!r} cannot be sent to this model")


def to_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The chat request for a stateless Responses request."""
    req: dict[str, Any] = {"model": model, "messages": _messages(body)}
    if (mt := count(body.get("max_output_tokens"))) is not None:
        req["max_tokens"] = mt
    for key in ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "prompt_cache_key",
                "service_tier"):
        if body.get(key) is not None:
            req[key] = body[key]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        req["tools"] = []
        for j, t in enumerate(tools):
            if not isinstance(t, Mapping) or t.get("type") != "function":
                raise BadRequest(f"tools[{j}]: only function tools can be sent to this model")
            fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
            req["tools"].append({"type": "function", "function": fn})
    if body.get("tool_choice") is not None:
        req["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        req["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}}
    elif isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        req["response_format"] = {"type": "json_object"}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort"):
        req["reasoning_effort"] = reasoning["effort"]
    if count(body.get("top_logprobs")):
        req["logprobs"], req["top_logprobs"] = True, body["top_logprobs"]
    if body.get("stream") is True:
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    return req


def usage_to_responses(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = int_field(usage, "prompt_tokens"), int_field(usage, "completion_tokens")
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int_field(usage.get("prompt_tokens_details"), "cached_tokens"),
                                     "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int_field(usage.get("completion_tokens_details"),
                                                                     "reasoning_tokens")},
            "total_tokens": prompt + completion}


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(request: Mapping[str, Any], resp_id: str, model: str, created: int, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    incomplete: str | None = None) -> dict[str, Any]:
    """A `response` object echoing the request's settings, as the Responses API returns it."""
    text = request.get("text") if isinstance(request.get("text"), Mapping) else {"format": {"type": "text"}}
    return {"id": resp_id, "object": "response", "created_at": created, "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
            "model": model, "output": output,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": request.get("reasoning"), "store": False,
            "temperature": request.get("temperature"), "text": text,
            "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
            "top_p": request.get("top_p"), "truncation": "disabled", "usage": usage,
            "user": request.get("user"), "metadata": request.get("metadata") or {}}


def message_item(item_id: str, text: str, status: str = "completed", refusal: bool = False) -> dict[str, Any]:
    part = ({"type": "refusal", "refusal": text} if refusal
            else {"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def to_response(answer: Mapping[str, Any], request: Mapping[str, Any], created: int,
                new_id: IdMaker = random_id) -> dict[str, Any]:
    """A chat completion as a `response` object (the first choice)."""
    choice = first_choice(answer)
    msg = obj(choice.get("message"))
    output: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        output.append(message_item(new_id("msg"), msg["content"]))
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        output.append(message_item(new_id("msg"), msg["refusal"], refusal=True))
    for call in msg.get("tool_calls") or ():
        fn = obj(call.get("function")) if isinstance(call, Mapping) else EMPTY
        output.append(call_item(new_id("fc"), str(call.get("id", "")), str(fn.get("name", "")),
                                str(fn.get("arguments", ""))))
    incomplete = INCOMPLETE.get(str(choice.get("finish_reason")))
    return response_object(request, new_id("resp"), str(answer.get("model", "")), created,
                           "incomplete" if incomplete else "completed", output,
                           usage_to_responses(answer.get("usage")), incomplete)
