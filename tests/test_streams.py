"""Streaming call sites through the SDK on a real SQLite backend: timing, errors, fallback and shadow."""

from __future__ import annotations

import asyncio

import pytest
from conftest import wait_until

import crossfade
from crossfade.judge import judge
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.streams import StreamMisuse, assembled
from crossfade.telemetry import merge_windows


@pytest.fixture
def cf(tmp_path):
    client = crossfade.connect(f"sqlite:///{tmp_path / 'cf.db'}", refresh=0.05)
    yield client
    client.close()


def migration(cf, stage, **spec):
    cf.apply({"name": "m", "stages": [stage, {"traffic": "100%"}],
              "gates": {"latency": {"quantile": "p50", "max_ratio": 2}, "latency_first_chunk": {"quantile": "p50"}},
              **spec})
    mig = cf.migration("m")
    mig.start(actor="test")
    return mig


def cells(cf):
    cf.flush(everything=True)
    return merge_windows(cf.backend().windows("m"))


def legacy_tokens(question):
    yield from ["Paris", " is", " the", " capital"]


def dying_tokens(question):
    yield from ["Paris", " is", " the"]
    raise ConnectionError("model server went away")


def test_a_stream_that_dies_after_three_chunks_is_an_error_and_the_caller_sees_it(cf):
    mig = migration(cf, {"traffic": "10%"}, allow=["user-1"])
    seen = []
    with pytest.raises(ConnectionError, match="went away"):
        for chunk in mig.stream("user-1", legacy_tokens, dying_tokens, "capital of France?"):
            seen.append(chunk)
    assert seen == ["Paris", " is", " the"]
    # A healthy legacy stream, for the other arm's cell.
    assert "".join(mig.stream("user-2", legacy_tokens, dying_tokens, "q")) == "Paris is the capital"
    c = cells(cf)
    assert (c[CANDIDATE].calls, c[CANDIDATE].errors, c[CANDIDATE].fallbacks) == (1, 1, 0)
    assert c[CANDIDATE].first_chunk.count == 1 and c[CANDIDATE].latency.count == 1
    assert (c[LEGACY].calls, c[LEGACY].errors, c[LEGACY].first_chunk.count) == (1, 0, 1)
    # Both latencies are there to judge: to the end, and to the first chunk.
    gates = {g.gate: g for g in judge(mig.spec(), c, look=1, traffic=0.1).gates}
    assert gates["latency_first_chunk"].candidate_samples == 1
    assert gates["latency"].candidate_samples == 1


def test_a_candidate_failing_before_its_first_chunk_falls_back_to_legacy(cf):
    mig = migration(cf, {"traffic": "10%"}, allow=["user-1"])

    def broken(question):
        raise RuntimeError("no model loaded")
        yield  # a generator function all the same

    assert list(mig.stream("user-1", legacy_tokens, broken, "q")) == ["Paris", " is", " the", " capital"]
    c = cells(cf)
    assert (c[CANDIDATE].calls, c[CANDIDATE].errors, c[CANDIDATE].fallbacks) == (1, 1, 1)


def test_async_streams_die_mid_stream_and_fall_back_before_the_first_chunk(cf):
    mig = migration(cf, {"traffic": "10%"}, allow=["user-1"])

    async def legacy(question):
        for token in ["Paris", " is", " the", " capital"]:
            await asyncio.sleep(0)
            yield token

    async def dying(question):
        for token in ["Paris", " is", " the"]:
            yield token
        raise ConnectionError("model server went away")

    async def broken(question):
        raise RuntimeError("no model loaded")
        yield

    async def main():
        seen = []
        with pytest.raises(ConnectionError):
            async for chunk in mig.astream("user-1", legacy, dying, "q"):
                seen.append(chunk)
        assert seen == ["Paris", " is", " the"]
        assert [c async for c in mig.astream("user-1", legacy, broken, "q")] == ["Paris", " is", " the", " capital"]
        assert [c async for c in mig.astream("user-2", legacy, dying, "q")] == ["Paris", " is", " the", " capital"]

    asyncio.run(main())
    c = cells(cf)
    assert (c[CANDIDATE].calls, c[CANDIDATE].errors, c[CANDIDATE].fallbacks) == (2, 2, 1)
    assert c[CANDIDATE].first_chunk.count == 1  # the one that fell back never gave a chunk
    assert (c[LEGACY].calls, c[LEGACY].errors) == (1, 0)


def test_shadow_of_a_stream_compares_the_assembled_output(cf):
    mig = migration(cf, {"traffic": "0%", "shadow": "100%"})

    def chunked_alike(question):
        yield from ["Paris is", " the capital"]  # other chunks, same text: not a mismatch

    def wrong(question):
        yield from ["Lyon", " is", " the", " capital"]

    assert "".join(mig.stream("a", legacy_tokens, chunked_alike, "q")) == "Paris is the capital"
    assert "".join(mig.stream("b", legacy_tokens, wrong, "q")) == "Paris is the capital"
    wait_until(lambda: cf.stats()["shadow_compared"] == 2)
    assert cf.stats()["shadow_mismatches"] == 1
    cf.flush(everything=True)
    (example,) = cf.backend().examples("m")
    assert example.detail["legacy"] == "Paris is the capital" and example.detail["candidate"] == "Lyon is the capital"
    c = cells(cf)
    assert (c[CANDIDATE].compared, c[CANDIDATE].mismatches, c[CANDIDATE].calls) == (2, 1, 2)


def test_shadow_of_an_async_stream_compares_the_assembled_output(cf):
    mig = migration(cf, {"traffic": "0%", "shadow": "100%"})

    async def legacy(question):
        yield {"delta": "Paris"}
        yield {"delta": " is"}

    async def candidate(question):
        yield {"delta": "Paris"}
        yield {"delta": " was"}

    async def main():
        assert [c async for c in mig.astream("a", legacy, candidate, "q")] == [{"delta": "Paris"}, {"delta": " is"}]
        while cf.stats()["shadow_pending"]:
            await asyncio.sleep(0.001)

    asyncio.run(main())
    assert (cf.stats()["shadow_compared"], cf.stats()["shadow_mismatches"]) == (1, 1)
    cf.flush(everything=True)
    assert {r.path for r in cf.backend().comparisons("m") if r["differing"]} == {"", "$[*].delta"}


def test_run_and_arun_given_a_stream_say_to_use_stream_and_astream(cf):
    mig = migration(cf, {"traffic": "10%"})
    with pytest.raises(StreamMisuse, match=r"mig\.stream\(key, legacy_gen_fn"):
        mig.run("k", legacy_tokens, legacy_tokens, "q")

    async def agen(question):
        yield "x"

    with pytest.raises(StreamMisuse, match=r"mig\.astream\("):
        asyncio.run(mig.arun("k", agen, agen, "q"))
    assert cells(cf) == {}  # nothing recorded for a misuse


def test_route_detects_generator_functions(cf):
    mig = migration(cf, {"traffic": "10%"}, allow=["user-1"])

    def new_tokens(question, user):
        yield from ["Paris", "!"]

    @mig.route(candidate=new_tokens, key="user")
    def tokens(question, user):
        yield from ["Paris", "."]

    async def anew(question, user):
        yield "A"

    @mig.route(candidate=anew, key="user")
    async def atokens(question, user):
        yield "L"

    assert list(tokens("q", "user-1")) == ["Paris", "!"]
    assert list(tokens("q", "user-2")) == ["Paris", "."]

    async def collect():
        return [c async for c in atokens("q", "user-1")]

    assert asyncio.run(collect()) == ["A"]
    c = cells(cf)
    assert (c[CANDIDATE].calls, c[LEGACY].calls, c[CANDIDATE].first_chunk.count) == (2, 1, 2)


def test_assembled_output():
    assert assembled(["a", "b"]) == "ab"
    assert assembled([b"a", b"b"]) == b"ab"
    assert assembled([{"d": 1}, "x"]) == [{"d": 1}, "x"]
    assert assembled([]) == []


def test_cost_and_metrics_of_a_stream_read_its_assembled_output_where_it_is_not_shadowed(cf):
    migration(cf, {"traffic": "10%"}, allow=["user-1"], deny=["user-2"])
    priced = cf.migration("m", cost=lambda text: len(text.split()), metrics=lambda text: {"words": len(text.split())})
    for user in ("user-1", "user-2"):  # the candidate serves user-1, legacy user-2; neither is shadowed
        assert "".join(priced.stream(user, legacy_tokens, legacy_tokens, "capital of France?")) == "Paris is the capital"
    got = cells(cf)
    for arm in (CANDIDATE, LEGACY):
        assert (got[arm].costed, got[arm].cost_sum) == (1, 4.0)
        assert (got[arm].metrics["words"].count, got[arm].metrics["words"].total) == (1, 4.0)
    assert cf.stats()["recording_errors"] == 0


def test_a_caller_that_stops_reading_counts_one_call_timed_to_its_first_chunk(cf):
    mig = migration(cf, {"traffic": "10%"}, allow=["user-1"])
    closed = []

    def endless(question):
        try:
            while True:
                yield "token"
        finally:
            closed.append(True)

    chunks = mig.stream("user-1", legacy_tokens, endless, "q")
    assert next(chunks) == "token"
    chunks.close()
    assert closed == [True]
    c = cells(cf)
    assert (c[CANDIDATE].calls, c[CANDIDATE].errors, c[CANDIDATE].first_chunk.count, c[CANDIDATE].latency.count) \
        == (1, 0, 1, 0)
