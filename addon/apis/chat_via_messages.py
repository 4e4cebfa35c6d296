"""An OpenAI chat caller served by an Anthropic Messages provider: the request goes out
as Messages, the answer (and any error) comes back as a chat completion.

    system / developer messages         -> `system` text blocks (moved to the front)
    user text / image_url (data or http URL) -> text / image blocks (base64 or url source)
    assistant content / tool_calls      -> text / tool_use blocks (JSON arguments parsed)
    tool messages                       -> tool_result blocks in a user message
    consecutive messages of one role    -> merged (Messages alternates user/assistant)
    max_completion_tokens|max_tokens    -> max_tokens (required by Messages: default 4096)
    stop, temperature (capped at 1), top_p, tools, tool_choice, parallel_tool_calls: false,
    response_format json_schema, stream, user
                                        -> stop_sequences, temperature, top_p, tools (input_schema),
                                           tool_choice auto/any/tool/none, disable_parallel_tool_use,
                                           output_config.format, stream, metadata.user_id
    stop_reason end_turn/stop_sequence/max_tokens/tool_use/refusal
                                        -> finish_reason stop/stop/length/tool_calls/content_filter

Dropped (they change no routing guarantee): seed, frequency/presence penalties,
logit_bias, reasoning_effort, thinking blocks in the answer. What cannot be
translated is listed by `ChatShape.native_only`; meeting it here is a BadRequest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import BadRequest
from .base import count, error_message, int_field

DEFAULT_MAX_TOKENS = 4096
STOP_TO_CHAT = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}


def finish_reason(stop: Any) -> str:
    return STOP_TO_CHAT.get(stop, "stop") if isinstance(stop, str) else "stop"


def _image(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise BadRequest(f"{where}.image_url.url: expected a string")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise BadRequest(f"{where}.image_url.url: a data URL must be base64 (data:image/png;base64,...)")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content (a string or parts) as Messages blocks; empty text is left out (Messages refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}: expected a string or a list of content parts")
    out = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "refusal"):
            text = part.get(kind if kind == "refusal" else "text")
            if isinstance(text, str) and text:
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            img = part.get("image_url")
            out.append(_image(img.get("url") if isinstance(img, Mapping) else img, f"{where}[{i}]"))
        else:
            raise BadRequest(f"{where}[{i}]: content part type {kind!r} cannot be sent to this model")
    return out


def _text(content: Any, where: str) -> str:
    return "\n".join(b["text"] for b in _blocks(content, where) if b["type"] == "text")


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping):
        raise BadRequest(f"{where}: expected a function tool call")
    args = fn.get("arguments") or "{}"
    try:
        value = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadRequest(f"{where}.function.arguments: must be a JSON object to be sent to this model")
    return {"type": "tool_use", "id": str(call.get("id", "")), "name": str(fn.get("name", "")), "input": value}


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"type": "tool", "name": choice["function"].get("name")}
    return {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}.get(str(choice))


def to_messages(body: Mapping[str, Any], model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """The Messages request for a chat request (BadRequest on what Messages cannot carry)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: expected a list of messages")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})

    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, Mapping) else None
        if role in ("system", "developer"):
            text = _text(m.get("content"), f"{where}.content")
            if text:
                system.append({"type": "text", "text": text})
        elif role == "user":
            add("user", _blocks(m.get("content"), f"{where}.content"))
        elif role == "assistant":
            calls = m.get("tool_calls") or []
            add("assistant", _blocks(m.get("content"), f"{where}.content")
                + [_tool_use(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)])
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": str(m.get("tool_call_id", "")),
                          "content": _text(m.get("content"), f"{where}.content")}])
        else:
            raise BadRequest(f"{where}.role: {role!r} cannot be sent to this model")
    req: dict[str, Any] = {"model": model, "messages": out,
                           "max_tokens": count(body.get("max_completion_tokens", body.get("max_tokens")))
                           or default_max_tokens}
    if system:
        req["system"] = system
    if isinstance(body.get("temperature"), (int, float)):
        req["temperature"] = min(float(body["temperature"]), 1.0)   # chat allows up to 2
    if body.get("top_p") is not None:
        req["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        req["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        req["tools"] = []
        for j, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, Mapping) and t.get("type") == "function" else None
            if not isinstance(fn, Mapping):
                raise BadRequest(f"tools[{j}]: only function tools can be sent to this model")
            req["tools"].append({"name": fn.get("name"), **({"description": fn["description"]}
                                                             if fn.get("description") else {}),
                                 "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}})
        choice = _tool_choice(body.get("tool_choice", "auto")) or {"type": "auto"}
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        req["tool_choice"] = choice
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, Mapping):
            req["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if body.get("stream") is True:
        req["stream"] = True
    if isinstance(body.get("user"), str):
        req["metadata"] = {"user_id": body["user"]}
    return req


def usage_to_chat(usage: Any) -> dict[str, Any]:
    prompt = int_field(usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    completion = int_field(usage, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int_field(usage, "cache_read_input_tokens")}}


def completion_id(message_id: Any) -> str:
    return "chatcmpl-" + (str(message_id).removeprefix("msg_") if message_id else "routecar")


def tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": str(block.get("id", "")), "type": "function",
            "function": {"name": str(block.get("name", "")), "arguments": json.dumps(block.get("input") or {})}}


def to_chat_completion(answer: Mapping[str, Any], now: Callable[[], float] = time.time) -> dict[str, Any]:
    """An Anthropic message as a chat completion."""
    blocks = answer["content"] if isinstance(answer.get("content"), list) else []
    texts = [str(b.get("text", "")) for b in blocks if isinstance(b, Mapping) and b.get("type") == "text"]
    calls = [tool_call(b) for b in blocks if isinstance(b, Mapping) and b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {"id": completion_id(answer.get("id")), "object": "chat.completion", "created": int(now()),
            "model": str(answer.get("model", "")),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(answer.get("stop_reason")),
                         "logprobs": None}],
            "usage": usage_to_chat(answer.get("usage"))}


def anthropic_error_type(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    err = data.get("error") if isinstance(data, Mapping) else None
    return err.get("type") if isinstance(err, Mapping) and isinstance(err.get("type"), str) else None


def to_chat_error(status: int, body: bytes) -> dict[str, Any]:
    """An Anthropic error as OpenAI's error object (Anthropic's type kept as type and code)."""
    kind = anthropic_error_type(body) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": error_message(body), "type": kind, "code": kind, "param": None}}
