"""The OpenFeature provider on the real openfeature-sdk: the same arm as `decide`, reasons and stage in the
details, errors as codes with the caller's default (never raised), async twins, and `track` into telemetry."""

from __future__ import annotations

import asyncio

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from openfeature.track import TrackingEventDetails

import crossfade
from crossfade.openfeature import CrossfadeProvider
from crossfade.telemetry import merge_windows

SPEC = {"name": "engine", "stages": [{"name": "half", "traffic": "50%"}, {"traffic": "100%"}],
        "allow": ["vip"]}


@pytest.fixture
def flags(sqlite_url):
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("engine").start()
        cf.refresh()
        api.set_provider(CrossfadeProvider(cf))
        try:
            yield cf, api.get_client()
        finally:
            api.shutdown()


def test_resolution_matches_decide_with_reason_variant_and_stage(flags):
    cf, client = flags
    mig = cf.migration("engine")
    assert api.get_provider_metadata().name == "crossfade"
    assert client.get_provider_status() == ProviderStatus.READY
    served = 0
    for i in range(200):
        ctx = EvaluationContext(targeting_key=f"user-{i}")
        decision = mig.decide(f"user-{i}")
        details = client.get_boolean_details("engine", False, ctx)
        assert details.value is decision.candidate and details.variant == decision.arm
        assert details.reason == Reason.SPLIT and details.error_code is None
        assert details.flag_metadata["stage"] == "half" and details.flag_metadata["bucket"] == decision.bucket
        assert client.get_string_value("engine", "legacy", ctx) == decision.arm
        served += details.value
    assert 60 < served < 140  # half the keys, give or take
    vip = client.get_boolean_details("engine", False, EvaluationContext(targeting_key="vip"))
    assert vip.value is True and vip.reason == Reason.TARGETING_MATCH


def test_a_paused_migration_is_disabled_and_serves_legacy(flags):
    cf, client = flags
    cf.migration("engine").pause("incident")
    cf.refresh()
    details = client.get_string_details("engine", "candidate", EvaluationContext(targeting_key="vip"))
    assert details.value == "legacy" and details.reason == Reason.DISABLED


def test_errors_come_back_as_codes_with_the_default(flags):
    _, client = flags
    ctx = EvaluationContext(targeting_key="user-1")
    unknown = client.get_boolean_details("no-such-migration", True, ctx)
    assert unknown.value is True and unknown.error_code == ErrorCode.FLAG_NOT_FOUND
    assert "the flag key is the migration's name" in unknown.error_message
    keyless = client.get_string_details("engine", "legacy", EvaluationContext())
    assert keyless.value == "legacy" and keyless.error_code == ErrorCode.TARGETING_KEY_MISSING
    number = client.get_integer_details("engine", 7, ctx)
    assert number.value == 7 and number.error_code == ErrorCode.TYPE_MISMATCH
    assert client.get_object_details("engine", {"a": 1}, ctx).error_code == ErrorCode.TYPE_MISMATCH


def test_async_resolution_answers_as_sync(flags):
    cf, client = flags
    ctx = EvaluationContext(targeting_key="user-3")
    details = asyncio.run(client.get_boolean_details_async("engine", False, ctx))
    assert details.value is cf.migration("engine").decide("user-3").candidate


def test_track_records_outcomes_on_the_routed_arm(flags):
    cf, client = flags
    mig = cf.migration("engine")
    keys = [f"user-{i}" for i in range(40)]
    for key in keys:
        ctx = EvaluationContext(targeting_key=key)
        client.track("engine", ctx, TrackingEventDetails(value=0.5).add("latency", 0.02).add("error", key.endswith("7")))
    client.track("engine", EvaluationContext(targeting_key="user-1"), TrackingEventDetails().add("latency", "slow"))
    client.track("nope", EvaluationContext(targeting_key="user-1"), TrackingEventDetails(value=1.0))
    cf.flush(everything=True)
    cells = merge_windows(mig.windows())
    on_candidate = sum(mig.decide(k).candidate for k in keys)
    assert cells["candidate"].calls == on_candidate and cells["legacy"].calls == len(keys) - on_candidate
    assert sum(c.errors for c in cells.values()) == sum(k.endswith("7") for k in keys)
    assert sum(c.cost_sum for c in cells.values()) == pytest.approx(0.5 * len(keys))
    assert cells["candidate"].latency.quantile(0.5) == pytest.approx(0.02, rel=0.02)
