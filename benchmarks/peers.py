"""Peer feature-flag SDKs configured for the same 25% rollout, for hot_path.py.

``benchmarks/hot_path.py`` compares the per-call cost of crossfade's ``decide``
(``bucket = mmh3_32("{salt}:{key}") % 10000``, candidate iff ``bucket < 2500``)
with the same sticky 25% percentage rollout evaluated by other libraries.
Every peer here is configured from a static, in-process document and evaluated
by that library's own local evaluation engine, with the call's key as the
identity / user id:

* ``growthbook``  -- ``growthbook.GrowthBook`` built from an inline features
  payload: one force rule with ``coverage: 0.25`` hashed on the ``id``
  attribute.  No ``api_host``/``client_key``, so nothing is fetched and no
  refresh thread starts; no tracking or feature-usage callbacks.
* ``unleash``     -- ``UnleashClient`` bootstrapped from a static toggles
  payload (one ``flexibleRollout`` strategy, rollout 25, stickiness
  ``userId``) evaluated by its Yggdrasil engine.  ``disable_metrics`` and
  ``disable_registration`` are set and ``initialize_client()`` is never
  called, so no registration, no polling, no metrics and no scheduler thread.
* ``openfeature`` -- the OpenFeature SDK (``openfeature.api`` client,
  ``get_boolean_value`` with ``targeting_key=key``).  Provider: GrowthBook's
  ``growthbook-openfeature-provider`` (real provider package, local
  evaluation) loaded with the same GrowthBook payload instead of fetching it;
  if that package is missing, the SDK's ``InMemoryProvider`` with a context
  evaluator doing a 25% hash split.  ``PEER_NOTES["openfeature"]`` says which.
* ``flagsmith``   -- ``flagsmith.Flagsmith`` in ``offline_mode`` with an
  offline handler serving an environment document: the flag is off by
  default and a segment with a ``PERCENTAGE_SPLIT`` 25 condition turns it on.
  Analytics and events are off; offline mode starts no polling thread.

``laboratory_run()`` measures the Scientist-style overhead of running a
``laboratory.Experiment`` (control + candidate, both trivial) per call, the
thing comparable to crossfade's ``run``.

All of these are optional: a factory returns ``None`` when its library is not
installed (``pip install crossfade[bench]``).  Run this module directly to
check that every available peer lands ~25% of 20,000 keys in treatment and to
print a quick ns/call timing::

    python benchmarks/peers.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable

FLAG = "crossfade-rollout"
"""Flag / toggle / feature name used by every peer."""
SEED = "crossfade-bench"
"""Hash seed / group id, where the library lets us set one."""
ROLLOUT_PERCENT = 25
ROLLOUT_FRACTION = ROLLOUT_PERCENT / 100

CHECK_KEYS = 20_000
CHECK_TOLERANCE = 0.02
_WARMUP_KEYS = 200

Evaluate = Callable[[str], bool]

PEER_NOTES: dict[str, str] = {}
"""Filled in by each factory when it builds its peer: what exactly is measured."""


def _warm(evaluate: Evaluate) -> Evaluate:
    """Run a few calls so lazy imports, caches and first-call paths are done."""
    for i in range(_WARMUP_KEYS):
        evaluate(f"warmup-{i}")
    return evaluate


# --------------------------------------------------------------------------
# GrowthBook
# --------------------------------------------------------------------------

def _growthbook_features() -> dict:
    """A GrowthBook SDK features payload: off by default, on for 25% by ``id``."""
    return {
        FLAG: {
            "defaultValue": False,
            "rules": [
                {
                    "id": "rollout-25",
                    "force": True,
                    "coverage": ROLLOUT_FRACTION,
                    "hashAttribute": "id",
                    "seed": SEED,
                    "hashVersion": 2,
                }
            ],
        }
    }


def growthbook() -> Evaluate | None:
    try:
        from growthbook import GrowthBook
    except ImportError:
        return None

    # No api_host/client_key: set_features() is the whole configuration, the
    # instance never fetches, never starts auto-refresh/SSE, and has no
    # tracking/feature-usage callbacks.  One long-lived instance whose
    # attributes are switched per call (the GrowthBook sync SDK's user-scoped
    # API) is the cheapest correct way to evaluate many users with it.
    gb = GrowthBook(attributes={}, features=_growthbook_features())
    set_attributes = gb.set_attributes
    is_on = gb.is_on

    def evaluate(key: str) -> bool:
        set_attributes({"id": key})
        return is_on(FLAG)

    PEER_NOTES["growthbook"] = "growthbook.GrowthBook: set_attributes({'id': key}) + is_on()"
    return _warm(evaluate)


# --------------------------------------------------------------------------
# Unleash
# --------------------------------------------------------------------------

def _unleash_toggles() -> dict:
    """An Unleash client-features payload with a 25% flexibleRollout on userId."""
    return {
        "version": 2,
        "features": [
            {
                "name": FLAG,
                "type": "release",
                "enabled": True,
                "impressionData": False,
                "strategies": [
                    {
                        "name": "flexibleRollout",
                        "parameters": {
                            "rollout": str(ROLLOUT_PERCENT),
                            "stickiness": "userId",
                            "groupId": SEED,
                        },
                        "constraints": [],
                    }
                ],
                "variants": [],
            }
        ],
    }


def unleash() -> Evaluate | None:
    try:
        from UnleashClient import UnleashClient
        from UnleashClient.cache import FileCache
        from UnleashClient.utils import InstanceAllowType
    except ImportError:
        return None

    # Bootstrap a FileCache in a throw-away directory (the SDK's documented
    # bootstrap path) instead of touching the user's cache dir.
    cache_dir = tempfile.mkdtemp(prefix="crossfade-peers-unleash-")
    cache = FileCache("crossfade-bench", directory=cache_dir)
    cache.bootstrap_from_dict(_unleash_toggles())

    client = UnleashClient(
        # Never contacted (see below); port 9 is "discard" on loopback anyway.
        url="http://127.0.0.1:9/api",
        app_name="crossfade-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    # The bootstrapped toggles are loaded into the engine by the constructor.
    # initialize_client() is deliberately NOT called: it is what registers the
    # app, starts the polling connector (or, with fetch_toggles=False, the
    # offline cache-reload job) and the APScheduler thread.  Without it there
    # is no network and no background thread; is_enabled() evaluates locally.
    if FLAG not in client.feature_definitions():
        raise RuntimeError("Unleash bootstrap did not load the toggle")

    weakref.finalize(client, shutil.rmtree, cache_dir, True)
    is_enabled = client.is_enabled

    def evaluate(key: str) -> bool:
        return is_enabled(FLAG, {"userId": key})

    PEER_NOTES["unleash"] = "UnleashClient (bootstrapped, not initialised): is_enabled(flag, {'userId': key})"
    return _warm(evaluate)


# --------------------------------------------------------------------------
# OpenFeature
# --------------------------------------------------------------------------

_OPENFEATURE_DOMAIN = "crossfade-bench"


def _growthbook_openfeature_provider():
    """GrowthBook's OpenFeature provider, fed the static payload instead of a CDN.

    Returns None when ``growthbook-openfeature-provider`` is not installed.
    Only the lifecycle is adapted: the package's own ``initialize()`` fetches
    features from ``api_host`` (and takes no evaluation context, unlike the
    OpenFeature provider interface).  Flag resolution is the package's own
    ``resolve_boolean_details`` -> ``GrowthBookClient.eval_feature``.
    """
    try:
        from growthbook.growthbook_client import GrowthBookClient
        from growthbook_openfeature_provider import (
            GrowthBookProvider,
            GrowthBookProviderOptions,
        )
        from growthbook_openfeature_provider.provider import run_async_legacy
    except ImportError:
        return None

    class OfflineGrowthBookProvider(GrowthBookProvider):
        def initialize(self, evaluation_context=None) -> None:
            # refresh_strategy=None: no SSE / background refresh task.
            self.gb_options.refresh_strategy = None
            client = GrowthBookClient(options=self.gb_options)
            run_async_legacy(client.set_features(_growthbook_features()))
            self.client = client
            self.initialized = True

    return OfflineGrowthBookProvider(
        GrowthBookProviderOptions(api_host="http://127.0.0.1:9", client_key="offline")
    )


def _in_memory_provider():
    """Fallback: OpenFeature's InMemoryProvider with a 25% hash-split evaluator."""
    import mmh3
    from openfeature.flag_evaluation import FlagResolutionDetails, Reason
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    threshold = ROLLOUT_PERCENT * 100  # out of 10,000 buckets

    def split(flag, ctx):
        bucket = mmh3.hash(f"{SEED}:{ctx.targeting_key}", signed=False) % 10_000
        variant = "on" if bucket < threshold else "off"
        return FlagResolutionDetails(
            value=flag.variants[variant], variant=variant, reason=Reason.SPLIT
        )

    return InMemoryProvider(
        {
            FLAG: InMemoryFlag(
                default_variant="off",
                variants={"on": True, "off": False},
                context_evaluator=split,
            )
        }
    )


def openfeature() -> Evaluate | None:
    try:
        from openfeature import api
        from openfeature.evaluation_context import EvaluationContext
    except ImportError:
        return None

    provider = _growthbook_openfeature_provider()
    if provider is not None:
        PEER_NOTES["openfeature"] = (
            "openfeature-sdk client + growthbook-openfeature-provider "
            "(GrowthBookProvider, static payload, local evaluation)"
        )
    else:
        provider = _in_memory_provider()
        PEER_NOTES["openfeature"] = (
            "openfeature-sdk client + InMemoryProvider with a 25% mmh3 "
            "context evaluator (growthbook-openfeature-provider not installed)"
        )

    # A named domain, so the process-wide default provider is left alone.
    # openfeature-sdk >= 0.9 initialises providers on a background thread in
    # set_provider(); set_provider_and_wait() blocks until READY.  Older SDKs
    # only have set_provider(), which initialises synchronously.
    set_provider = getattr(api, "set_provider_and_wait", api.set_provider)
    set_provider(provider, _OPENFEATURE_DOMAIN)
    client = api.get_client(_OPENFEATURE_DOMAIN)
    # OpenFeature never raises on evaluation: a broken provider just yields
    # the default.  Fail loudly here instead of timing the error path.
    details = client.get_boolean_details(FLAG, False, EvaluationContext(targeting_key="probe"))
    if details.error_code is not None:
        raise RuntimeError(
            f"OpenFeature provider not usable: {details.error_code} {details.error_message or ''}"
        )
    get_boolean_value = client.get_boolean_value

    def evaluate(key: str) -> bool:
        return get_boolean_value(FLAG, False, EvaluationContext(targeting_key=key))

    return _warm(evaluate)


# --------------------------------------------------------------------------
# Flagsmith
# --------------------------------------------------------------------------

def _flagsmith_environment_document() -> dict:
    """A Flagsmith environment document: flag off, a 25% split segment turns it on."""
    feature = {"id": 1, "name": FLAG}
    return {
        "api_key": "crossfade-bench-env",
        "name": "crossfade-bench",
        "feature_states": [
            {
                "feature": feature,
                "enabled": False,
                "feature_state_value": None,
                "featurestate_uuid": "00000000-0000-4000-8000-000000000001",
                "multivariate_feature_state_values": [],
            }
        ],
        "identity_overrides": [],
        "project": {
            "segments": [
                {
                    "id": 1,
                    "name": "rollout-25",
                    "rules": [
                        {
                            "type": "ALL",
                            "conditions": [],
                            "rules": [
                                {
                                    "type": "ANY",
                                    "conditions": [
                                        {
                                            # Blank property: the split hashes
                                            # the identity (as the UI's "% Split").
                                            "operator": "PERCENTAGE_SPLIT",
                                            "property_": "",
                                            "value": str(ROLLOUT_PERCENT),
                                        }
                                    ],
                                    "rules": [],
                                }
                            ],
                        }
                    ],
                    "feature_states": [
                        {
                            "feature": feature,
                            "enabled": True,
                            "feature_state_value": None,
                            "featurestate_uuid": "00000000-0000-4000-8000-000000000002",
                            "feature_segment": {"priority": 0},
                            "multivariate_feature_state_values": [],
                        }
                    ],
                }
            ]
        },
    }


class _StaticEnvironment:
    """Flagsmith offline handler serving an in-memory environment document."""

    def __init__(self, document: dict) -> None:
        self._document = document

    def get_environment(self) -> dict:
        return self._document


def flagsmith() -> Evaluate | None:
    try:
        from flagsmith import Flagsmith
    except ImportError:
        return None

    # offline_mode: no environment key, no HTTP session, no polling or SSE
    # thread; every call is evaluated by flag_engine against the document.
    client = Flagsmith(
        offline_mode=True,
        offline_handler=_StaticEnvironment(_flagsmith_environment_document()),
        enable_analytics=False,
    )
    get_identity_flags = client.get_identity_flags

    def evaluate(key: str) -> bool:
        return get_identity_flags(key).is_feature_enabled(FLAG)

    PEER_NOTES["flagsmith"] = "flagsmith.Flagsmith(offline_mode): get_identity_flags(key).is_feature_enabled()"
    return _warm(evaluate)


PEERS: dict[str, Callable[[], Evaluate | None]] = {
    "growthbook": growthbook,
    "unleash": unleash,
    "openfeature": openfeature,
    "flagsmith": flagsmith,
}


# --------------------------------------------------------------------------
# laboratory (Scientist-style experiment), comparable to crossfade's run
# --------------------------------------------------------------------------

def laboratory_run() -> Callable[[str], object] | None:
    """``call(key)``: run a laboratory Experiment (control + candidate) per call."""
    try:
        from laboratory import Experiment
    except ImportError:
        return None

    def control(key: str) -> str:
        return key

    def candidate(key: str) -> str:
        return key

    def call(key: str) -> object:
        experiment = Experiment(name=FLAG)
        experiment.control(control, args=[key])
        experiment.candidate(candidate, args=[key])
        return experiment.conduct()

    for i in range(_WARMUP_KEYS):
        if call(f"warmup-{i}") != f"warmup-{i}":
            raise RuntimeError("laboratory experiment did not return the control value")
    PEER_NOTES["laboratory"] = "laboratory.Experiment: control + candidate + conduct() per call"
    return call


# --------------------------------------------------------------------------
# Self-check and quick timing
# --------------------------------------------------------------------------

def check(n: int = CHECK_KEYS) -> dict[str, float]:
    """Fraction of ``n`` distinct keys each available peer puts in treatment.

    Raises AssertionError if a peer is not within 0.25 +/- 0.02, i.e. is not
    really configured as a 25% rollout (or silently returns its default).
    """
    fractions: dict[str, float] = {}
    for name, factory in PEERS.items():
        evaluate = factory()
        if evaluate is None:
            continue
        hits = sum(1 for i in range(n) if evaluate(f"user-{i}") is True)
        fractions[name] = hits / n
    bad = {
        name: f for name, f in fractions.items()
        if abs(f - ROLLOUT_FRACTION) > CHECK_TOLERANCE
    }
    assert not bad, f"peers not at {ROLLOUT_FRACTION:.0%} +/- {CHECK_TOLERANCE}: {bad}"
    return fractions


def _ns_per_call(fn: Callable[[str], object], calls: int = 50_000, repeats: int = 3) -> float:
    keys = [f"user-{i}" for i in range(calls)]
    best = None
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for key in keys:
            fn(key)
        elapsed = time.perf_counter_ns() - start
        best = elapsed if best is None else min(best, elapsed)
    return best / calls


def _main() -> None:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    dists = {
        "growthbook": "growthbook",
        "unleash": "UnleashClient",
        "openfeature": "openfeature-sdk",
        "flagsmith": "flagsmith",
        "laboratory": "laboratory",
    }
    print("versions:", json.dumps({k: version(v) for k, v in dists.items()}))
    print(f"fraction in treatment over {CHECK_KEYS:,} keys (want {ROLLOUT_FRACTION} +/- {CHECK_TOLERANCE}):")
    for name, fraction in check().items():
        print(f"  {name:<12} {fraction:.4f}")

    print("ns per call (best of 3 x 50,000 calls):")
    runners: dict[str, Callable[[str], object] | None] = {
        name: factory() for name, factory in PEERS.items()
    }
    runners["laboratory"] = laboratory_run()
    for name, fn in runners.items():
        if fn is None:
            print(f"  {name:<12} not installed")
            continue
        print(f"  {name:<12} {_ns_per_call(fn):>10,.0f}   {PEER_NOTES.get(name, '')}")


if __name__ == "__main__":
    _main()
