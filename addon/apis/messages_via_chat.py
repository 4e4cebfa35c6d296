"""An Anthropic Messages caller served by a chat provider: the request goes out as
OpenAI chat, the answer (and any error) comes back as Anthropic's.

    system (string or text blocks)      -> a first `system` message
    user text / image (base64, url)     -> user content parts (`image_url`, data URL for base64)
    user tool_result blocks             -> `tool` messages, placed before the user's other content
    assistant text / tool_use           -> assistant content / `tool_calls` (input as JSON arguments)
    thinking blocks                     -> dropped (a chat model cannot take them back)
    tools, tool_choice                  -> function tools; auto/any/tool/none -> auto/required/function/none
    disable_parallel_tool_use           -> parallel_tool_calls: false
    max_tokens, stop_sequences, temperature, top_p, stream, metadata.user_id
                                        -> max_tokens, stop, temperature, top_p, stream (+usage), user
    finish_reason stop/length/tool_calls/content_filter -> end_turn/max_tokens/tool_use/refusal

What cannot be translated is listed by `MessagesShape.native_only` (server tools,
documents, ...); meeting it here anyway is a BadRequest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest
from .base import count, error_message, first_choice, obj
from .messages import error_object

CHAT_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}


def stop_reason(finish_reason: Any) -> str:
    """Anthropic's stop_reason for a chat finish_reason (a stop sequence reads as end_turn:
    chat does not say whether one matched)."""
    return CHAT_TO_STOP.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def _text(blocks: Any, where: str) -> str:
    """The text of a string or a list of text blocks."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequest(f"{where}: expected a string or a list of text blocks")
    texts = []
    for i, b in enumerate(blocks):
        if not isinstance(b, Mapping) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise BadRequest(f"{where}[{i}]: only text blocks can be sent to this model")
        texts.append(b["text"])
    return "\n".join(texts)


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif isinstance(source, Mapping) and source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise BadRequest(f"{where}.source: only base64 and url images can be sent to this model")
    return {"type": "image_url", "image_url": {"url": url}}


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: expected a string or a list of content blocks")
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            tools.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
                          "content": _text(block.get("content", ""), f"{at}.content")})
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadRequest(f"{at}: content block type {kind!r} cannot be sent to this model")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return tools + [{"role": "user", "content": parts[0]["text"]}]
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: expected a string or a list of content blocks")
    texts, calls = [], []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id", "")), "type": "function",
                          "function": {"name": str(block.get("name", "")),
                                       "arguments": json.dumps(block.get("input") or {})}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadRequest(f"{where}.content[{i}]: content block type {kind!r} cannot be sent to this model")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_choice(choice: Mapping[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind), "auto")


def to_chat(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The chat request for a Messages request (BadRequest on what chat cannot carry)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: expected a list of messages")
    out: list[dict[str, Any]] = []
    if body.get("system"):
        out.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else None
        if role == "user":
            out += _user(m.get("content"), f"messages[{i}]")
        elif role == "assistant":
            out.append(_assistant(m.get("content"), f"messages[{i}]"))
        else:
            raise BadRequest(f"messages[{i}].role: expected 'user' or 'assistant', got {role!r}")
    req: dict[str, Any] = {"model": model, "messages": out}
    if (mt := count(body.get("max_tokens"))) is not None:
        req["max_tokens"] = mt
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            req[key] = body[key]
    if body.get("stop_sequences"):
        req["stop"] = list(body["stop_sequences"])
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        req["tools"] = [{"type": "function", "function": {
            "name": t.get("name"), **({"description": t["description"]} if t.get("description") else {}),
            "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}}
            for t in tools if isinstance(t, Mapping)]
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        req["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use") and "tools" in req:
            req["parallel_tool_calls"] = False
    if body.get("stream") is True:
        req["stream"] = True
        req["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        req["user"] = metadata["user_id"]
    return req


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's JSON arguments as Anthropic's `input` object; arguments that are not a
    JSON object are kept as text under `_raw_arguments` rather than lost."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def usage_to_messages(usage: Any) -> dict[str, int]:
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = count(usage.get("prompt_tokens")) or 0
    details = usage.get("prompt_tokens_details")
    cached = (count(details.get("cached_tokens")) if isinstance(details, Mapping) else None) or 0
    return {"input_tokens": prompt - cached, "output_tokens": count(usage.get("completion_tokens")) or 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def message_id(chat_id: Any) -> str:
    return "msg_" + (str(chat_id).removeprefix("chatcmpl-") if chat_id else "routecar")


def to_message(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A chat completion as an Anthropic message (the first choice)."""
    choice = first_choice(answer)
    msg = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    reason = stop_reason(choice.get("finish_reason"))
    for key in ("content", "refusal"):
        if isinstance(msg.get(key), str) and msg[key]:
            content.append({"type": "text", "text": msg[key]})
            reason = "refusal" if key == "refusal" else reason
    for call in msg.get("tool_calls") or ():
        if not isinstance(call, Mapping):
            continue
        fn = obj(call.get("function"))
        content.append({"type": "tool_use", "id": str(call.get("id", "")), "name": str(fn.get("name", "")),
                        "input": tool_input(fn.get("arguments"))})
    return {"id": message_id(answer.get("id")), "type": "message", "role": "assistant",
            "model": str(answer.get("model", "")), "content": content, "stop_reason": reason,
            "stop_sequence": None, "usage": usage_to_messages(answer.get("usage"))}


def to_messages_error(status: int, body: bytes) -> dict[str, Any]:
    """A chat provider's error as Anthropic's error object."""
    return error_object(status, error_message(body))
