"""Traffic routers: make a data plane (a mesh, a gateway, a proxy) match a migration's routing state.

A router is one module here (`istio.py`, `gateway_api.py`, `nginx.py`, ...) defining `create(config, path)`
that returns an object with the `Router` methods. The controller loop owns the clock, the retries and the
threads: a router only gets a `Target` (what the data plane should do now) and returns values, and every
method may be called again at any point (after a crash, on every tick) with the same result. When a spec
names no router, the in-process SDK is the router (`sdk.py`): the routing table the SDK reads is its data
plane, so there is nothing to push.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from crossfade.registry import ConfigProblem, ProviderConfigError, Registry
from crossfade.routing import SERVING_STATUSES

if TYPE_CHECKING:
    from crossfade.events import State
    from crossfade.spec import Spec

# A router's answer to "does the data plane do what the target says?" (Argo Rollouts' VerifyWeight).
VERIFIED: Final = "verified"
NOT_VERIFIED: Final = "not_verified"
NOT_IMPLEMENTED: Final = "not_implemented"

class RouterError(Exception):
    """A router could not talk to its data plane or apply a change; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Target:
    """What one migration's data plane should do now: the routing state a router makes real. Immutable.

    `candidate` is the share of keys served by the candidate (sticky by bucket, as the SDK routes);
    `mirror` the share of legacy-served requests also copied to the candidate, its response dropped;
    `allow` keys always go to the candidate, `deny` keys always to legacy; `rollback` is true when the
    migration is (or is going) back to legacy, the one change that must reach the data plane whatever it costs.
    """

    migration: str
    stage: str
    candidate: float
    mirror: float
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    rollback: bool = False
    salt: str = ""

    @classmethod
    def for_stage(cls, spec: Spec, stage: str) -> Target:
        """The target of one of the spec's stages, as entering it would set it."""
        s = spec.stages[spec.stage_index(stage)]
        return cls(spec.name, s.name, s.traffic, s.shadow, tuple(spec.allow), tuple(spec.deny), salt=spec.salt)

    @classmethod
    def from_state(cls, state: State, spec: Spec) -> Target:
        """The target a migration's folded state and its spec call for (legacy only when it may not serve)."""
        serving = state.status in SERVING_STATUSES
        return cls(
            migration=state.name,
            stage=state.stage or "",
            candidate=state.traffic if serving else 0.0,
            mirror=state.shadow if serving else 0.0,
            allow=tuple(spec.allow) if serving else (),
            deny=tuple(spec.deny),
            rollback=state.status in ("rolling_back", "rolled_back", "aborted"),
            salt=spec.salt,
        )

    def weights(self) -> tuple[int, int]:
        """Whole-percent (candidate, legacy) weights for a weighted split, summing to 100."""
        candidate = round(self.candidate * 100)
        return candidate, 100 - candidate

    def describe(self) -> str:
        """One line for logs and events: stage, candidate share, mirror share."""
        text = f"{self.candidate:.2%} candidate"
        if self.mirror:
            text += f", {self.mirror:.2%} mirrored"
        return f"{text} (stage {self.stage or '-'})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form for event payloads."""
        return {"stage": self.stage, "candidate": self.candidate, "mirror": self.mirror,
                "allow": len(self.allow), "deny": len(self.deny), "rollback": self.rollback}


@dataclass(frozen=True, slots=True)
class Verification:
    """A router's answer to verify: one of VERIFIED / NOT_VERIFIED / NOT_IMPLEMENTED, and what it saw."""

    status: str
    detail: str = ""

    @property
    def verified(self) -> bool:
        """True when the data plane was seen doing what the target says."""
        return self.status == VERIFIED


class Router(Protocol):
    """Makes one data plane match a migration's target; every method is idempotent."""

    name: str

    def sync(self, target: Target) -> None:
        """Make the data plane do what `target` says; raises RouterError when it cannot."""

    def verify(self, target: Target) -> Verification:
        """Whether the data plane does what `target` says now (reading it back, not trusting `sync`)."""

    def remove(self, migration: str) -> None:
        """Take away everything this router added for the migration; a no-op when nothing is there."""


@runtime_checkable
class Renders(Protocol):
    """A router whose data plane is declared in files (manifests, a config): they can be printed for GitOps."""

    def render(self, target: Target) -> str:
        """What `sync` would apply for `target`, as text."""


ROUTERS: Final[Registry[Router]] = Registry("router", __name__)


def routers_for(spec: Spec) -> list[Router]:
    """The routers a spec names (`routers: [{istio: {...}}, ...]`), or the in-process SDK when it names none."""
    if not spec.routers:
        return [ROUTERS.create("sdk", {}, "routers")]
    return [create(entry, f"routers[{index}]") for index, entry in enumerate(spec.routers)]


def create(entry: object, path: str) -> Router:
    """One router from its spec entry, a mapping with one key: the router's name, and its settings."""
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise ProviderConfigError([ConfigProblem(
            path, f"expected one router as {{name: {{settings}}}}, e.g. {{nginx: {{conf: /etc/nginx/crossfade.conf}}}}; "
                  f"known routers: {', '.join(ROUTERS.names())}")])
    (name, config), = entry.items()
    if config is not None and not isinstance(config, Mapping):
        raise ProviderConfigError([ConfigProblem(f"{path}.{name}", "expected a mapping of settings")])
    return ROUTERS.create(str(name), config, f"{path}.{name}")


def check(entries: Sequence[object]) -> list[ConfigProblem]:
    """Every problem with a spec's `routers` list, each with its path; empty when all are valid."""
    problems: list[ConfigProblem] = []
    for index, entry in enumerate(entries):
        try:
            create(entry, f"routers[{index}]")
        except ProviderConfigError as exc:
            problems.extend(exc.problems)
    return problems
