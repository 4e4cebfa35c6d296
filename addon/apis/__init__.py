"""API shapes: one module per wire format apps speak, behind one small protocol (base.py).

    chat.py        OpenAI Chat Completions   POST …/chat/completions
    responses.py   OpenAI Responses          POST …/responses
    messages.py    Anthropic Messages        POST …/messages
    translate.py   the table of translations between them (request, answer, error, stream)

    >>> from routecar.apis import shape_for
    >>> shape_for("/v1/messages").profile({"model": "m", "max_tokens": 64, "messages": []}).max_tokens
    64
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import API_NAMES, ApiName, ApiShape, StreamEnd, UsageReader
from .chat import CHAT
from .messages import MESSAGES
from .responses import RESPONSES
from .stream import Reshape, StreamTranslator
from .translate import TRANSLATIONS, Translation, api_for, translation

SHAPES: Mapping[ApiName, ApiShape] = {"chat": CHAT, "responses": RESPONSES, "messages": MESSAGES}


def shape_for(path: str) -> ApiShape | None:
    """The shape whose path this is (exact suffix), or None."""
    return next((s for s in SHAPES.values() if s.matches(path)), None)


__all__ = ["API_NAMES", "SHAPES", "TRANSLATIONS", "ApiName", "ApiShape", "Reshape", "StreamEnd", "StreamTranslator",
           "Translation", "UsageReader", "api_for", "shape_for", "translation"]
