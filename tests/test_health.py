from __future__ import annotations

import threading

import pytest

from routecar.health import HealthTracker


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> HealthTracker:
    return HealthTracker(clock, window=10, min_samples=4, error_rate_threshold=0.5,
                         consecutive_failures=3, cooldown_s=30.0)


def fail(tracker: HealthTracker, entry_id: str, times: int) -> None:
    for _ in range(times):
        tracker.record(entry_id, False, None)


def test_unknown_entries_are_healthy(tracker: HealthTracker) -> None:
    assert tracker.is_healthy("nope")
    assert tracker.latency_ms("nope") is None
    assert tracker.live_fields("nope") == {"healthy": True, "latency_ms": None}
    assert tracker.snapshot() == {}
    assert tracker.version == 0


def test_cooldown_after_consecutive_failures(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, "a", 2)
    assert tracker.is_healthy("a")
    fail(tracker, "a", 1)
    assert not tracker.is_healthy("a")
    assert tracker.live_fields("a") == {"healthy": False, "latency_ms": None}
    assert tracker.snapshot()["a"] == {
        "healthy": False, "state": "open", "error_rate": 1.0, "samples": 3,
        "consecutive_failures": 3, "cooled_until": 1030.0, "latency_ms": None,
    }
    clock.advance(29.9)
    assert not tracker.is_healthy("a")


def test_a_success_breaks_the_run_of_failures(tracker: HealthTracker) -> None:
    for _ in range(5):
        tracker.record("a", True, 100.0)
    fail(tracker, "a", 2)
    tracker.record("a", True, 100.0)
    fail(tracker, "a", 2)
    assert tracker.is_healthy("a")          # 4/10 failed, never 3 in a row


def test_half_open_after_cooldown_then_one_success_restores(
    tracker: HealthTracker, clock: FakeClock,
) -> None:
    fail(tracker, "a", 3)
    clock.advance(30.0)
    assert tracker.is_healthy("a")
    assert tracker.snapshot()["a"]["state"] == "half_open"
    tracker.record("a", True, 80.0)
    snap = tracker.snapshot()["a"]
    assert snap["state"] == "closed"
    # The failures that opened it are forgotten: one more failure does not re-open it.
    assert snap["samples"] == 1 and snap["error_rate"] == 0.0
    fail(tracker, "a", 1)
    assert tracker.is_healthy("a")


def test_half_open_failure_reopens_at_once(tracker: HealthTracker, clock: FakeClock) -> None:
    fail(tracker, "a", 3)
    clock.advance(31.0)
    assert tracker.is_healthy("a")
    fail(tracker, "a", 1)
    assert not tracker.is_healthy("a")
    assert tracker.snapshot()["a"]["cooled_until"] == 1061.0


def test_rolling_error_rate(tracker: HealthTracker) -> None:
    # Alternating never reaches 3 in a row; the rate decides.
    for ok in (True, False, True, False):
        tracker.record("a", ok, 50.0 if ok else None)
    assert tracker.is_healthy("a")          # 0.5 is not above the threshold
    fail(tracker, "a", 1)                   # 3/5 failed
    assert not tracker.is_healthy("a")
    assert tracker.snapshot()["a"]["error_rate"] == pytest.approx(0.6)


def test_error_rate_needs_min_samples(clock: FakeClock) -> None:
    tracker = HealthTracker(clock, min_samples=5, consecutive_failures=10)
    tracker.record("a", True, 10.0)
    fail(tracker, "a", 3)                   # 3/4 failed, but only 4 samples
    assert tracker.is_healthy("a")
    fail(tracker, "a", 1)
    assert not tracker.is_healthy("a")


def test_window_rolls_old_samples_out(clock: FakeClock) -> None:
    tracker = HealthTracker(clock, window=4, min_samples=4, consecutive_failures=10)
    fail(tracker, "a", 2)
    for _ in range(4):
        tracker.record("a", True, 10.0)
    snap = tracker.snapshot()["a"]
    assert (snap["samples"], snap["error_rate"]) == (4, 0.0)


def test_latency_is_the_median_of_successes(tracker: HealthTracker) -> None:
    for latency in (100.0, 300.0, 200.0):
        tracker.record("a", True, latency)
    tracker.record("a", False, 9999.0)      # failures do not count
    assert tracker.latency_ms("a") == 200.0
    assert tracker.live_fields("a") == {"healthy": True, "latency_ms": 200.0}


def test_version_bumps_on_every_flip(tracker: HealthTracker, clock: FakeClock) -> None:
    assert tracker.version == 0
    tracker.record("a", True, 10.0)
    fail(tracker, "b", 2)
    assert tracker.version == 0             # nothing flipped yet
    fail(tracker, "b", 1)
    assert tracker.version == 1             # b: healthy -> unhealthy
    fail(tracker, "b", 5)
    assert tracker.version == 1             # still unhealthy, no flip
    clock.advance(30.0)
    assert tracker.version == 2             # cooldown ran out: unhealthy -> healthy
    tracker.record("b", True, 10.0)
    assert tracker.version == 2             # half-open -> closed is healthy either way
    fail(tracker, "b", 3)
    assert tracker.version == 3


def test_entries_are_independent(tracker: HealthTracker) -> None:
    fail(tracker, "a", 3)
    assert not tracker.is_healthy("a")
    assert tracker.is_healthy("b")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 0}, "window must be >= 1, got 0"),
    ({"min_samples": 21}, r"min_samples must be in 1..window \(20\), got 21"),
    ({"error_rate_threshold": 1.5}, "error_rate_threshold must be in 0..1, got 1.5"),
    ({"consecutive_failures": 0}, "consecutive_failures must be >= 1, got 0"),
    ({"cooldown_s": -1.0}, "cooldown_s must be >= 0, got -1.0"),
])
def test_bad_config_fails_at_construction(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthTracker(FakeClock(), **kwargs)  # type: ignore[arg-type]


def test_snapshot_is_a_copy_safe_to_read_from_another_thread(
    tracker: HealthTracker,
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for entry in tracker.snapshot().values():
                    assert entry["samples"] <= 10
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(5000):
            tracker.record(f"e{i % 7}", i % 3 != 0, float(i))
    finally:
        stop.set()
        thread.join()
    assert errors == []
    snap = tracker.snapshot()
    snap["e0"]["samples"] = -1
    assert tracker.snapshot()["e0"]["samples"] == 10
