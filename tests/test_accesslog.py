"""The access log: one line per governed call, identifiers only."""

from __future__ import annotations

import logging
import time

import pytest

from routecar.accesslog import AccessLog, access_line
from routecar.outcome import CallOutcome
from routecar.pricing import Cost


def outcome(**kw) -> CallOutcome:
    base = dict(trace_id="rt_19a3f2c4d5e6", start=time.time(), duration_s=0.4123, status=200, outcome="ok",
                tenant="acme-free", fingerprint="pol_8f41c2", entry="openai/gpt-5.5-mini", provider="openai",
                model="gpt-5.5-mini", attempts=({},), cost=Cost(0.000231, "genai-prices"))
    base.update(kw)
    return CallOutcome(**base)


def test_line():
    assert access_line(outcome()) == ("routecar: rt_19a3f2c4d5e6 tenant=acme-free pol_8f41c2 "
                                      "openai/gpt-5.5-mini@openai 200 ok attempts=1 412ms $0.000231")


def test_failed_call_without_entry_or_cost():
    line = access_line(outcome(status=502, outcome="upstream_failed", entry=None, provider=None, cost=None,
                               attempts=({}, {}, {})))
    assert line.endswith("pol_8f41c2 - 502 upstream_failed attempts=3 412ms $-")


@pytest.mark.parametrize("claimed, shown", [
    ("evil\nroutecar: rt_fake ok", "?evil\\x0aroutecar:\\x20rt_fake\\x20ok"),
    ("sk-proj-abcdefghijklmnop1234", "?[redacted]"),
    ("x" * 200, "?" + "x" * 64 + "..."),
])
def test_unknown_tenant_is_escaped_and_scrubbed(claimed, shown):
    line = access_line(outcome(tenant=None, claimed_tenant=claimed, status=403, outcome="unknown_tenant",
                               entry=None, cost=None))
    assert f"tenant={shown} " in line and "\n" not in line


def test_logged_at_info_and_quiet_when_disabled(caplog):
    logger = logging.getLogger("routecar.access.test")
    with caplog.at_level(logging.INFO, logger="routecar.access.test"):
        AccessLog(logger).observe(outcome())
    assert [r.getMessage() for r in caplog.records] == [access_line(outcome())]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="routecar.access.test"):
        AccessLog(logger).observe(outcome())
    assert caplog.records == []
