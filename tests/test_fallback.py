from __future__ import annotations

import email.utils
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routecar.fallback import (
    Action,
    Attempt,
    ErrorClass,
    FallbackConfig,
    Outcome,
    Verdict,
    classify,
    next_attempt,
    retry_after_delay,
)

NOW = 1_700_000_000.0   # wall clock for HTTP-date Retry-After


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@dataclass(frozen=True)
class Entry:
    id: str
    provider: str
    context_window: int = 128_000


A1 = Entry("openai/a1", "openai", 128_000)
A2 = Entry("openai/a2", "openai", 200_000)
B1 = Entry("anthropic/b1", "anthropic", 200_000)
C1 = Entry("mistral/c1", "mistral", 32_000)
C2 = Entry("mistral/c2", "mistral", 1_000_000)
PLAN = (A1, A2, B1, C1, C2)

RETRY = Verdict(Action.RETRY, ErrorClass.SERVER_ERROR)
OK = Verdict(Action.OK, ErrorClass.OK)


# --- classify -----------------------------------------------------------------

CLASSIFY_CASES = [
    # (outcome, expected verdict)
    (Outcome(200), Verdict(Action.OK, ErrorClass.OK)),
    (Outcome(201), Verdict(Action.OK, ErrorClass.OK)),
    (Outcome(429), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after="1"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 1.0)),
    (Outcome(429, retry_after=" 2 "), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 2.0)),
    (Outcome(429, retry_after="0.5"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.5)),
    (Outcome(429, retry_after="3"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after="120"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after=http_date(NOW + 1)),
     Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 1.0)),
    (Outcome(429, retry_after=http_date(NOW + 600)),
     Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after=http_date(NOW - 5)),
     Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after="soon"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after="-1"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after="inf"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after="nan"), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, retry_after=""), Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)),
    (Outcome(429, body=b'{"error":{"code":"insufficient_quota"}}'),
     Verdict(Action.SKIP_PROVIDER, ErrorClass.QUOTA)),
    (Outcome(402), Verdict(Action.SKIP_PROVIDER, ErrorClass.QUOTA)),
    (Outcome(401), Verdict(Action.SKIP_PROVIDER, ErrorClass.AUTH)),
    (Outcome(403), Verdict(Action.SKIP_PROVIDER, ErrorClass.AUTH)),
    (Outcome(400, body=b'{"error":{"code":"context_length_exceeded"}}'),
     Verdict(Action.BIGGER_CONTEXT, ErrorClass.CONTEXT_LENGTH)),
    (Outcome(400, body=b'{"error":{"message":"prompt is too long: 210000 tokens"}}'),
     Verdict(Action.BIGGER_CONTEXT, ErrorClass.CONTEXT_LENGTH)),
    (Outcome(400, body=b'{"error":{"code":"content_filter"}}'),
     Verdict(Action.RETURN, ErrorClass.CLIENT_ERROR)),
    (Outcome(400), Verdict(Action.RETURN, ErrorClass.CLIENT_ERROR)),
    (Outcome(404), Verdict(Action.RETURN, ErrorClass.CLIENT_ERROR)),
    (Outcome(422), Verdict(Action.RETURN, ErrorClass.CLIENT_ERROR)),
    (Outcome(408), Verdict(Action.RETRY, ErrorClass.TIMEOUT)),
    (Outcome(500), Verdict(Action.RETRY, ErrorClass.SERVER_ERROR)),
    (Outcome(502), Verdict(Action.RETRY, ErrorClass.SERVER_ERROR)),
    (Outcome(503), Verdict(Action.RETRY, ErrorClass.SERVER_ERROR)),
    (Outcome(503, retry_after="1"), Verdict(Action.RETRY, ErrorClass.SERVER_ERROR, 1.0)),
    (Outcome(504), Verdict(Action.RETRY, ErrorClass.SERVER_ERROR)),
    (Outcome(529), Verdict(Action.RETRY, ErrorClass.OVERLOADED)),
    (Outcome(302), Verdict(Action.RETURN, ErrorClass.UNEXPECTED_STATUS)),
    (Outcome(None, "connect"), Verdict(Action.RETRY, ErrorClass.CONNECT_ERROR)),
    (Outcome(None, "reset"), Verdict(Action.RETRY, ErrorClass.CONNECTION_RESET)),
    (Outcome(None, "timeout_connect"), Verdict(Action.RETRY, ErrorClass.TIMEOUT)),
    (Outcome(None, "timeout_first_byte"), Verdict(Action.RETRY, ErrorClass.TIMEOUT)),
    (Outcome(None, "timeout"), Verdict(Action.RETRY, ErrorClass.TIMEOUT)),
    # A failure after the headers arrived still counts as a failure.
    (Outcome(200, "timeout"), Verdict(Action.RETRY, ErrorClass.TIMEOUT)),
]


@pytest.mark.parametrize(("outcome", "expected"), CLASSIFY_CASES,
                         ids=[f"{o.status}-{o.error}-{o.retry_after}-{o.body[:24]!r}"
                              for o, _ in CLASSIFY_CASES])
def test_classify(outcome: Outcome, expected: Verdict) -> None:
    assert classify(outcome, now=NOW) == expected


def test_classify_http_date_without_clock_moves_on() -> None:
    verdict = classify(Outcome(429, retry_after=http_date(NOW + 1)))
    assert verdict == Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 0.0)


def test_classify_max_retry_after_is_configurable() -> None:
    config = FallbackConfig(max_retry_after_s=10.0)
    assert classify(Outcome(429, retry_after="5"), config=config).delay_s == 5.0
    assert classify(Outcome(429, retry_after="11"), config=config).delay_s == 0.0


def test_classify_markers_are_case_insensitive() -> None:
    verdict = classify(Outcome(400, body=b"Context_Length_Exceeded"))
    assert verdict.action is Action.BIGGER_CONTEXT


def test_verdict_values_are_plain_strings() -> None:
    verdict = classify(Outcome(529))
    assert (verdict.action, verdict.error_class) == ("retry", "overloaded")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"status": None}, "Outcome needs a status or an error"),
    ({"status": None, "error": "dns"}, "'dns' is not a valid AttemptError"),
])
def test_outcome_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Outcome(**kwargs)  # type: ignore[arg-type]


def test_retry_after_delay_boundary() -> None:
    assert retry_after_delay("2", now=None, max_s=2.0) == 2.0
    assert retry_after_delay("0", now=None, max_s=2.0) == 0.0
    assert retry_after_delay("Wed, 99 Foo 2024 xx", now=NOW, max_s=2.0) == 0.0


# --- next_attempt -------------------------------------------------------------

def walk(history: list[tuple[Entry, Verdict]], *, plan: tuple[Entry, ...] = PLAN,
         now: float = 0.0, deadline: float | None = 100.0,
         max_attempts: int = 10) -> Attempt[Entry] | None:
    return next_attempt(plan, history, now=now, deadline=deadline, max_attempts=max_attempts)


def test_first_attempt_is_the_top_of_the_plan() -> None:
    assert walk([]) == Attempt(A1, 0, 0.0)


def test_retry_walks_the_plan_in_order() -> None:
    assert walk([(A1, RETRY)]) == Attempt(A2, 1, 0.0)
    assert walk([(A1, RETRY), (A2, RETRY)]) == Attempt(B1, 2, 0.0)


@pytest.mark.parametrize("verdict", [OK, Verdict(Action.RETURN, ErrorClass.CLIENT_ERROR)])
def test_ok_and_return_stop(verdict: Verdict) -> None:
    assert walk([(A1, verdict)]) is None


def test_empty_plan_and_exhausted_plan() -> None:
    assert walk([], plan=()) is None
    assert walk([(e, RETRY) for e in PLAN]) is None


def test_skip_provider_skips_every_entry_of_that_provider() -> None:
    auth = Verdict(Action.SKIP_PROVIDER, ErrorClass.AUTH)
    assert walk([(A1, auth)]) == Attempt(B1, 2, 0.0)
    quota = Verdict(Action.SKIP_PROVIDER, ErrorClass.QUOTA)
    assert walk([(A1, auth), (B1, quota)]) == Attempt(C1, 3, 0.0)


def test_bigger_context_only_takes_larger_windows() -> None:
    too_long = Verdict(Action.BIGGER_CONTEXT, ErrorClass.CONTEXT_LENGTH)
    assert walk([(A1, too_long)]) == Attempt(A2, 1, 0.0)
    # Cumulative: after a 200k window failed, only the 1M one is left.
    assert walk([(A1, too_long), (A2, too_long)]) == Attempt(C2, 4, 0.0)
    # An equal window is not bigger.
    assert walk([(A2, too_long)]) == Attempt(C2, 4, 0.0)


def test_filters_combine() -> None:
    too_long = Verdict(Action.BIGGER_CONTEXT, ErrorClass.CONTEXT_LENGTH)
    auth = Verdict(Action.SKIP_PROVIDER, ErrorClass.AUTH)
    assert walk([(A1, too_long), (A2, RETRY), (B1, RETRY), (C2, auth)]) is None


def test_retry_after_delay_applies_to_the_same_provider_only() -> None:
    limited = Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 1.5)
    assert walk([(A1, limited)]) == Attempt(A2, 1, 1.5)
    assert walk([(A1, RETRY), (A2, limited)]) == Attempt(B1, 2, 0.0)


def test_deadline() -> None:
    assert walk([], now=100.0, deadline=100.0) is None
    assert walk([(A1, RETRY)], now=101.0, deadline=100.0) is None
    assert walk([(A1, RETRY)], now=99.0, deadline=100.0) == Attempt(A2, 1, 0.0)
    assert walk([(A1, RETRY)], now=0.0, deadline=None) == Attempt(A2, 1, 0.0)


def test_no_time_left_for_the_delay() -> None:
    limited = Verdict(Action.RETRY, ErrorClass.RATE_LIMITED, 2.0)
    assert walk([(A1, limited)], now=98.0, deadline=100.0) is None
    assert walk([(A1, limited)], now=97.0, deadline=100.0) == Attempt(A2, 1, 2.0)


def test_max_attempts() -> None:
    assert walk([], max_attempts=0) is None
    assert walk([(A1, RETRY)], max_attempts=1) is None
    assert walk([(A1, RETRY), (A2, RETRY)], max_attempts=3) == Attempt(B1, 2, 0.0)
    assert walk([(A1, RETRY), (A2, RETRY), (B1, RETRY)], max_attempts=3) is None


def test_duplicate_ids_in_the_plan_are_tried_once() -> None:
    plan = (A1, A1, B1)
    assert walk([(A1, RETRY)], plan=plan) == Attempt(B1, 2, 0.0)


# --- property: fallback never leaves the plan, never repeats, always ends ---------

entries = st.builds(
    Entry,
    id=st.sampled_from([f"m{i}" for i in range(8)]),
    provider=st.sampled_from(["openai", "anthropic", "mistral"]),
    context_window=st.sampled_from([8_000, 32_000, 128_000, 200_000]),
)
verdicts = st.builds(
    Verdict,
    action=st.sampled_from([Action.RETRY, Action.SKIP_PROVIDER, Action.BIGGER_CONTEXT,
                            Action.RETRY, Action.OK, Action.RETURN]),
    error_class=st.just(ErrorClass.SERVER_ERROR),
    delay_s=st.sampled_from([0.0, 0.5, 2.0]),
)


@given(plan=st.lists(entries, max_size=10), outcomes=st.lists(verdicts, min_size=11, max_size=11),
       max_attempts=st.integers(min_value=0, max_value=12),
       deadline=st.none() | st.floats(min_value=0.0, max_value=5.0))
def test_next_attempt_stays_in_plan_and_terminates(
    plan: list[Entry], outcomes: list[Verdict], max_attempts: int, deadline: float | None,
) -> None:
    history: list[tuple[Entry, Verdict]] = []
    now = 0.0
    for step in range(len(plan) + 1):
        attempt = next_attempt(plan, history, now=now, deadline=deadline,
                               max_attempts=max_attempts)
        if attempt is None:
            break
        assert step < len(plan)
        assert plan[attempt.index] is attempt.entry
        assert attempt.entry.id not in {e.id for e, _ in history}
        assert len(history) < max_attempts
        if deadline is not None:
            assert now + attempt.delay_s < deadline
        now += attempt.delay_s + 0.1
        history.append((attempt.entry, outcomes[step]))
    else:
        pytest.fail("next_attempt did not stop within len(plan) steps")
