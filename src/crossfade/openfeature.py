"""An OpenFeature provider over crossfade's routing: the flag key is the migration's name, the targeting key
the sticky key, so a call site that asks OpenFeature gets exactly the arm `mig.decide(key)` would.

    from openfeature import api
    from crossfade.openfeature import CrossfadeProvider

    api.set_provider(CrossfadeProvider(crossfade.connect()))
    flags = api.get_client()
    ctx = EvaluationContext(targeting_key=user_id)
    if flags.get_boolean_value("agent-engine", False, ctx): ...        # True: the candidate serves
    arm = flags.get_string_value("agent-engine", "legacy", ctx)        # "candidate" or "legacy"
    api.get_client().track("agent-engine", ctx, TrackingEventDetails(value=0.002).add("latency", 0.84))

Resolution never does I/O (the routing table is in memory) and never raises: an unknown migration is
FLAG_NOT_FOUND, a missing targeting key TARGETING_KEY_MISSING, a number or object flag TYPE_MISMATCH, each
with the caller's default. Needs the `openfeature` extra (`pip install 'crossfade[openfeature]'`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from crossfade.routing import CANDIDATE, Decision

if TYPE_CHECKING:
    from crossfade.client import Client

log = logging.getLogger("crossfade.openfeature")

NAME: Final = "crossfade"
_SPLIT = frozenset({"bucket below traffic threshold", "bucket above traffic threshold"})
_TARGETED = frozenset({"allow list", "deny list"})
_UNKNOWN: Final = "unknown migration"


def reason(decision: Decision) -> str:
    """OpenFeature's reason for a crossfade decision: SPLIT by bucket, TARGETING_MATCH by allow or deny list,
    STALE when the routing table is too old, ERROR for crossfade's own failure, DISABLED when the migration
    serves no candidate (draft, paused, rolled back, ...)."""
    if decision.reason in _SPLIT:
        return Reason.SPLIT
    if decision.reason in _TARGETED:
        return Reason.TARGETING_MATCH
    if decision.reason == "routing table stale":
        return Reason.STALE
    if decision.reason == "crossfade internal error":
        return Reason.ERROR
    return Reason.DISABLED


class CrossfadeProvider(AbstractProvider):
    """Resolves boolean (is the candidate serving?) and string (which arm?) flags from a crossfade client."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client

    def get_metadata(self) -> Metadata:
        """The provider's name, as OpenFeature shows it."""
        return Metadata(name=NAME)

    def _decide(self, flag_key: str, context: EvaluationContext | None) -> Decision | ErrorCode:
        key = context.targeting_key if context is not None else None
        if key is None or key == "":
            return ErrorCode.TARGETING_KEY_MISSING
        decision = self.client.migration(flag_key).decide(key)
        return ErrorCode.FLAG_NOT_FOUND if decision.reason == _UNKNOWN else decision

    def _details(self, flag_key: str, default: Any, context: EvaluationContext | None,
                 value: Any) -> FlagResolutionDetails[Any]:
        found = self._decide(flag_key, context)
        if isinstance(found, ErrorCode):
            why = ("no migration by that name (the flag key is the migration's name)"
                   if found == ErrorCode.FLAG_NOT_FOUND else "the targeting key is the sticky key; set it")
            return FlagResolutionDetails(default, error_code=found, error_message=f"{flag_key}: {why}",
                                         reason=Reason.ERROR)
        return FlagResolutionDetails(
            value(found), reason=reason(found), variant=found.arm,
            flag_metadata={"stage": found.stage, "bucket": found.bucket, "shadow": found.shadow,
                           "decision": found.reason},
        )

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[bool]:
        """True when the candidate serves this targeting key."""
        return self._details(flag_key, default_value, evaluation_context, lambda d: d.arm == CANDIDATE)

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[str]:
        """The arm that serves this targeting key: "candidate" or "legacy"."""
        return self._details(flag_key, default_value, evaluation_context, lambda d: d.arm)

    def _mismatch(self, flag_key: str, default: Any) -> FlagResolutionDetails[Any]:
        return FlagResolutionDetails(default, error_code=ErrorCode.TYPE_MISMATCH, reason=Reason.ERROR,
                                     error_message=f"{flag_key}: a crossfade migration resolves as a boolean "
                                                   "(candidate?) or a string (the arm), not a number or object")

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[int]:
        """Not a crossfade flag type: TYPE_MISMATCH with the default."""
        return self._mismatch(flag_key, default_value)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[float]:
        """Not a crossfade flag type: TYPE_MISMATCH with the default."""
        return self._mismatch(flag_key, default_value)

    def resolve_object_details(self, flag_key: str, default_value: Any,
                               evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[Any]:
        """Not a crossfade flag type: TYPE_MISMATCH with the default."""
        return self._mismatch(flag_key, default_value)

    def track(self, tracking_event_name: str, evaluation_context: EvaluationContext | None = None,
              tracking_event_details: TrackingEventDetails | None = None) -> None:
        """Record one call's outcome into the migration's telemetry, on the arm the targeting key is routed to.

        The event name is the migration's name. `value` is the call's cost; the attributes `latency` (seconds),
        `error` and `timeout` (true/false) the rest. Bad input is logged and dropped, never raised.
        """
        found = self._decide(tracking_event_name, evaluation_context)
        if isinstance(found, ErrorCode):
            log.warning("track(%r): %s; outcome dropped", tracking_event_name, found.value)
            return
        details = tracking_event_details or TrackingEventDetails()
        attributes = details.attributes
        latency = attributes.get("latency", 0.0)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            log.warning("track(%r): latency %r is not seconds; outcome dropped", tracking_event_name, latency)
            return
        migration = self.client.migration(tracking_event_name)
        # The handle's recorder, as `observe` uses it, with the latency the caller measured.
        migration._record(found, int(latency * 1e9), error=attributes.get("error") is True,
                          timeout=attributes.get("timeout") is True, cost=details.value)
