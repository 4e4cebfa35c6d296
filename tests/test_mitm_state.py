"""What a finished governed call's trace and observers say (mitm/state.py): its outcome and
disposition, and its usage, for whole answers and for streams however they ended."""

from __future__ import annotations

import json

import pytest

from routecar.apis import StreamEnd
from routecar.governance import Disposition
from routecar.mitm.state import Routed, answer_facts, outcome
from routecar.relay import StreamStats
from routecar.upstream import Result
from routecar.usage import TokenUsage


def routed(status: int = 200, body: bytes = b"") -> Routed:
    state = Routed("rt_1", 0.0, "regular")
    state.result = Result(status, [], [], "e/1", body=body, stream_ms=1.0)
    return state


@pytest.mark.parametrize("stats,expected", [
    (None, ("ok", Disposition.ROUTED)),
    (StreamStats(end=StreamEnd.COMPLETE), ("ok", Disposition.ROUTED)),
    (StreamStats(end=StreamEnd.TRUNCATED), ("stream_truncated", Disposition.FAILED)),
    (StreamStats(end=StreamEnd.ERROR), ("stream_broken", Disposition.FAILED)),
    (StreamStats(error="upstream stream broke: X"), ("stream_broken", Disposition.FAILED)),
    (StreamStats(client_gone=True), ("client_gone", Disposition.ROUTED)),
    (StreamStats(interrupted=True), ("shutting_down", Disposition.FAILED)),
    # what happened to the stream first decides: a cut, then routecar's shutdown, then its end
    (StreamStats(error="upstream stream timed out", end=StreamEnd.TRUNCATED), ("stream_broken", Disposition.FAILED)),
    (StreamStats(interrupted=True, end=StreamEnd.TRUNCATED), ("shutting_down", Disposition.FAILED)),
])
def test_outcome_of_a_stream(stats, expected):
    assert outcome(routed(), stats) == expected


def test_a_streams_usage_is_what_its_reader_saw_over_the_whole_stream():
    """The relay's tail (its last 8 KiB) lost message_start and its input tokens; the shape's
    reader kept them: the trace and the price take the reader's."""
    tail = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7500}}\n\n'
    reader = TokenUsage(input=1000, output=7500)
    facts = answer_facts(routed(), StreamStats(tail=bytearray(tail), usage=reader))
    assert facts.usage == reader and facts.finish_reasons == ()
    # without the reader's usage, what the tail says (a whole answer relayed under no_log: no SSE)
    answer = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    facts = answer_facts(routed(), StreamStats(tail=bytearray(answer)))
    assert facts.usage == TokenUsage(input=3, output=2) and facts.model == "m"
