"""Telemetry: per-thread cells flushed in aligned windows, exact under threads, merged by addition."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossfade.sketch import Sketch
from crossfade.telemetry import MAX_METRICS, Cell, CellError, Recorder, Window, cell_key, check_cell, merge_windows

KEY = cell_key("m", "s", "legacy")


class FakeClock:
    """A settable clock (seconds, answered in ns) serving as both wall and monotonic time."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> int:
        return round(self.now * 1e9)


def test_windows_are_aligned_and_flushed_only_after_they_close():
    clock = FakeClock(1003.0)
    recorder = Recorder(10.0, grace=1.0, clock=clock, monotonic=clock)
    recorder.cell(clock(), KEY).calls += 1
    recorder.done()
    assert recorder.collect() == []
    clock.now = 1010.5  # closed, but within the grace
    assert recorder.collect() == []
    clock.now = 1011.0
    (window,) = recorder.collect()
    assert (window.migration, window.stage, window.arm, window.start, window.length) == ("m", "s", "legacy", 1000.0,
                                                                                          10.0)
    assert window.cell.calls == 1
    assert recorder.collect() == []


def record_while_flushing(recorder, worker, *, writers: int, calls: int, flushers: int) -> list[Window]:
    """Run `writers` threads of `worker(calls)` while `flushers` threads collect the recorder's closed windows
    every 10 ms; every window collected, the open ones last."""
    collected: list[Window] = []
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            collected.extend(recorder.collect())
            stop.wait(0.01)

    flushing = [threading.Thread(target=flusher) for _ in range(flushers)]
    for f in flushing:
        f.start()
    threads = [threading.Thread(target=worker, args=(calls,)) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for f in flushing:
        f.join()
    collected.extend(recorder.collect(everything=True))
    return collected


def test_threads_record_without_locks_and_totals_are_exact():
    recorder = Recorder(0.05, grace=0.01)

    def worker(n):
        for i in range(n):
            cell = recorder.cell(recorder.now(), cell_key("m", "s", "candidate" if i % 3 == 0 else "legacy"))
            cell.calls += 1
            cell.latency.add(0.001 * (i % 50 + 1))
            if i % 7 == 0:
                cell.errors += 1
            recorder.done()

    # Two flushers, as when the application calls cf.flush() while the background thread flushes too.
    collected = record_while_flushing(recorder, worker, writers=4, calls=20_000, flushers=2)
    totals = merge_windows(collected)
    per_thread_candidate = len(range(0, 20_000, 3))
    assert totals["candidate"].calls == 4 * per_thread_candidate
    assert totals["legacy"].calls == 4 * (20_000 - per_thread_candidate)
    assert totals["candidate"].latency.count + totals["legacy"].latency.count == 80_000
    assert sum(c.errors for c in totals.values()) == 4 * len(range(0, 20_000, 7))


def test_a_thread_descheduled_mid_write_for_longer_than_the_grace_loses_nothing():
    # The writer takes its cell, then stops (as a thread the OS deschedules) while the flusher runs past the
    # window's close and grace, many times; then it writes. Its count must reach a flush, exactly once.
    clock = FakeClock(1003.0)
    recorder = Recorder(10.0, grace=1.0, clock=clock, monotonic=clock)
    holding, resume = threading.Event(), threading.Event()

    def stalled_writer() -> None:
        cell = recorder.cell(clock(), KEY)
        holding.set()
        resume.wait()
        cell.calls += 1
        cell.latency.add(0.01)
        recorder.done()

    writer = threading.Thread(target=stalled_writer)
    writer.start()
    holding.wait()
    collected: list[Window] = []
    for minutes in range(1, 30):
        clock.now = 1003.0 + 60 * minutes
        collected.extend(recorder.collect())
    resume.set()
    writer.join()
    collected.extend(recorder.collect())
    assert [w.cell.calls for w in collected] == [1]
    assert collected[0].start == 1000.0 and collected[0].cell.latency.count == 1


def test_a_thread_that_keeps_writing_never_holds_back_a_closed_window():
    clock = FakeClock(1003.0)
    recorder = Recorder(10.0, grace=1.0, clock=clock, monotonic=clock)
    recorder.cell(clock(), KEY).calls += 1
    recorder.done()
    clock.now = 1015.0
    recorder.cell(clock(), KEY).calls += 1  # caught mid-write by the flush below
    assert recorder.collect() == []  # the closed window waits: the write under way might be holding it
    recorder.done()
    recorder.cell(clock(), KEY).calls += 1  # mid-write again, but a later write than the one seen
    (window,) = recorder.collect()
    recorder.done()
    assert (window.start, window.cell.calls) == (1000.0, 1)
    (window,) = recorder.collect(everything=True)
    assert (window.start, window.cell.calls) == (1010.0, 2)


def test_calls_counted_by_add_call_are_exact_beside_other_writers_under_threads_and_flushes():
    # `add_call` counts a call in its cell's list of counts by bucket; the flush moves them into `calls` and
    # `latency`, beside what `cell` writers counted there directly.
    recorder = Recorder(0.05, grace=0.01)

    def worker(n):
        for i in range(n):
            if i % 4 == 0:  # a failed call, counted through `cell` as `run` does, in the same cell
                cell = recorder.cell(recorder.now(), KEY)
                cell.calls += 1
                cell.errors += 1
                cell.latency.add(0.002)
                recorder.done()
            else:
                now = recorder.seconds()
                recorder.add_call(KEY, now - 0.001 * (i % 50), now)

    collected = record_while_flushing(recorder, worker, writers=4, calls=10_000, flushers=1)
    total = merge_windows(collected)["legacy"]
    assert (total.calls, total.errors, total.latency.count) == (40_000, 10_000, 40_000)
    assert total.latency.zeros == 4 * len(range(0, 10_000, 50)) - 4 * len(range(0, 10_000, 100))
    assert check_cell(total.to_dict()) == total


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-10, 1e-8), st.floats(1e-8, 3600.0)), max_size=300))
def test_add_call_buckets_each_duration_as_sketch_add_does(durations):
    clock = FakeClock(1003.0)
    recorder = Recorder(10.0, grace=1.0, clock=clock, monotonic=clock)
    expected = Sketch()
    for seconds in durations:
        start, end = 1003.0, 1003.0 + seconds
        recorder.add_call(KEY, start, end)
        expected.add(end - start)
    cell = merge_windows(recorder.collect(everything=True)).get("legacy", Cell())  # calls end in several windows
    assert cell.calls == len(durations)
    assert (cell.latency.bins, cell.latency.zeros, cell.latency.count) == (expected.bins, expected.zeros,
                                                                           expected.count)
    assert math.isclose(cell.latency.total, expected.total, rel_tol=1e-12, abs_tol=1e-12)


def test_a_call_after_its_window_was_taken_starts_that_window_afresh():
    clock = FakeClock(1003.0)
    recorder = Recorder(10.0, grace=1.0, clock=clock, monotonic=clock)
    recorder.add_call(KEY, recorder.seconds() - 0.005, recorder.seconds())
    (first,) = recorder.collect(everything=True)
    clock.now = 1004.0  # the same window, already taken
    recorder.add_call(KEY, recorder.seconds() - 0.005, recorder.seconds())
    (second,) = recorder.collect(everything=True)
    assert (first.start, second.start) == (1000.0, 1000.0)
    assert (first.cell.calls, second.cell.calls, second.cell.latency.count) == (1, 1, 1)


def test_windows_from_many_threads_merge_into_one_per_arm():
    clock = FakeClock(500.0)
    recorder = Recorder(10.0, clock=clock, monotonic=clock)
    def record() -> None:
        recorder.cell(clock(), KEY).calls += 5
        recorder.done()

    threads = [threading.Thread(target=record) for _ in range(3)]
    for t in threads:
        t.start()
        t.join()
    (window,) = recorder.collect(everything=True)
    assert window.cell.calls == 15


def test_a_cell_round_trips_and_merges_by_addition():
    a, b = Cell(), Cell()
    a.calls, a.errors = 10, 2
    a.add_cost(0.5)
    a.latency.add(0.02)
    b.calls, b.fallbacks, b.timeouts = 4, 1, 1
    b.add_cost(1.5)
    b.latency.add(0.04)
    assert Cell.from_dict(a.to_dict()) == a
    a.merge(b)
    assert (a.calls, a.errors, a.fallbacks, a.timeouts, a.costed, a.cost_sum, a.cost_sq) == (14, 2, 1, 1, 2, 2.0, 2.5)
    assert a.latency.count == 2 and a.cost_mean == 1.0


def test_windows_follow_the_wall_clock_through_the_monotonic_offset():
    wall, mono = FakeClock(2_000_000.0), FakeClock(50.0)
    recorder = Recorder(10.0, clock=wall, monotonic=mono)
    recorder.cell(mono(), KEY).calls += 1
    recorder.done()
    wall.now += 30
    (window,) = recorder.collect()
    assert window.start == 2_000_000.0


def test_finished_threads_are_forgotten_once_flushed():
    recorder = Recorder(10.0)
    t = threading.Thread(target=lambda: (recorder.cell(recorder.now(), KEY), recorder.done()))
    t.start()
    t.join()
    recorder.collect(everything=True)
    recorder.collect(everything=True)
    assert recorder._buffers == []


def test_a_cell_merging_a_sketch_with_fixed_buckets_keeps_the_buckets_and_every_count():
    from crossfade.sketch import Buckets, Sketch

    sdk, posted = Cell(), Cell()
    for v in (0.0015, 0.003):
        sdk.latency.add(v)
    posted.latency = Buckets((0.001, 0.002, 0.004), [0, 1, 1, 1], 0.01)
    merged = Cell()
    merged.merge(sdk)
    merged.merge(posted)
    assert isinstance(merged.latency, Buckets)
    assert merged.latency.counts == [0, 2, 2, 1] and merged.latency.count == 5
    again = Cell.from_dict(merged.to_dict())
    assert again == merged and isinstance(Cell().latency, Sketch)


def test_a_call_at_the_top_of_its_latency_bucket_is_read_back():
    # A bucket holds values up to 1.0101x its representative value; a window of one such call (low traffic)
    # was refused as inconsistent on read, and its call lost.
    for k in range(2000):
        cell = Cell()
        cell.calls = 1
        cell.latency.add(0.5 * 1.00005**k)
        assert check_cell(cell.to_dict()) == cell


# --- custom metrics -----------------------------------------------------------------------------------------

_values = st.lists(st.tuples(st.sampled_from(["lost", "tokens", "similarity"]),
                             st.floats(min_value=0, max_value=1e6, allow_nan=False)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(_values, _values)
def test_custom_metrics_merge_exactly_by_addition_and_survive_the_checked_round_trip(first, second):
    whole, a, b = Cell(), Cell(), Cell()
    for part, values in ((a, first), (b, second)):
        for name, value in values:
            part.metric(name, value, name == "similarity")
            whole.metric(name, value, name == "similarity")
    merged = check_cell(a.to_dict())
    merged.merge(check_cell(b.to_dict()))
    assert set(merged.metrics) == set(whole.metrics)
    for name, tally in whole.metrics.items():
        got = merged.metrics[name]
        assert got.count == tally.count
        assert math.isclose(got.total, tally.total, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(got.squares, tally.squares, rel_tol=1e-9, abs_tol=1e-9)
        assert got.sketch == tally.sketch


def test_a_cell_without_custom_metrics_is_stored_as_before():
    cell = Cell()
    cell.calls = 3
    assert "metrics" not in cell.to_dict()


def _with_metrics(metrics):
    return {"calls": 1, "metrics": metrics}


@pytest.mark.parametrize("metrics, says", [
    ("lost", "mapping of at most"),
    ({f"m{i}": {"count": 1, "sum": 1, "sum_squares": 1} for i in range(MAX_METRICS + 1)}, "mapping of at most"),
    ({"Lost": {"count": 1}}, "not a metric name"),
    ({"x" * 64: {"count": 1}}, "not a metric name"),
    ({"lost": [1, 2]}, "is a mapping of count"),
    ({"lost": {"count": 1, "sum": 1, "sum_squares": 1, "evil": 1}}, "unknown field(s) evil"),
    ({"lost": {"count": -1}}, "between 0 and 2^53"),
    ({"lost": {"count": 2**60}}, "between 0 and 2^53"),
    ({"lost": {"count": 1.5}}, "whole number"),
    ({"lost": {"count": True}}, "whole number"),
    ({"lost": {"count": 1, "sum": float("inf"), "sum_squares": 1}}, "finite number"),
    ({"lost": {"count": 1, "sum": "1", "sum_squares": 1}}, "finite number"),
    ({"lost": {"count": 0, "sum": 3, "sum_squares": 9}}, "both sums 0 when count is 0"),
    ({"lost": {"count": 2, "sum": 10, "sum_squares": 1}}, "cannot both hold"),
    ({"lost": {"count": 1, "sum": 1, "sum_squares": -1}}, "sum_squares must be 0 or more"),
    ({"s": {"count": 1, "sum": 1, "sum_squares": 1, "sketch": {"bins": {"9999": 1}, "count": 1, "total": 1}}},
     "outside"),
    ({"s": {"count": 1, "sum": 1, "sum_squares": 1, "sketch": {"bins": {"0": 5}, "count": 5, "total": 5}}},
     "exceeds count"),
    ({"s": {"count": 1, "sum": 1, "sum_squares": 1, "sketch": {"bins": {"0": 1}, "count": 2, "total": 1}}},
     "zeros plus the bins"),
    ({"s": {"count": 1, "sum": 1, "sum_squares": 1, "sketch": {"bins": {"x": 1}, "count": 1, "total": 1}}},
     "not all bucket indexes"),
    ({"s": {"count": 1, "sum": 1, "sum_squares": 1, "sketch": {"bins": {}, "count": 0, "total": 0, "x": 1}}},
     "unknown field(s) x"),
])
def test_hostile_custom_metrics_are_refused_with_a_reason(metrics, says):
    with pytest.raises(CellError) as caught:
        check_cell(_with_metrics(metrics))
    assert says in str(caught.value)


def test_a_cell_holds_at_most_max_metrics_names():
    cell = Cell()
    for i in range(MAX_METRICS):
        cell.metric(f"m{i}", 1.0)
    with pytest.raises(ValueError):
        cell.metric("one_more", 1.0)
    cell.metric("m0", 2.0)  # a known name still records
    assert cell.metrics["m0"].count == 2
