"""The in-process SDK router, the default: the routing table the SDK reads is its data plane.

Apps holding a `Migration` handle refresh the routing table from the backend, so a routing change reaches
them by itself; there is nothing to push, and nothing this loop can read back from every app process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crossfade.registry import ConfigProblem, ProviderConfigError
from crossfade.routers import VERIFIED, Target, Verification


class SdkRouter:
    """The SDK's own routing: synced by the backend write itself."""

    name = "sdk"

    def sync(self, target: Target) -> None:
        """Nothing to do: the routing change is already in the backend the SDK reads."""

    def verify(self, target: Target) -> Verification:
        """Verified: the stored state is the routing table."""
        return Verification(VERIFIED, "the SDK reads the routing table from the backend")

    def remove(self, migration: str) -> None:
        """Nothing was added."""


def create(config: Mapping[str, Any], path: str) -> SdkRouter:
    """The SDK router; it takes no settings."""
    if config:
        raise ProviderConfigError([ConfigProblem(f"{path}.{key}", "unknown setting; the sdk router takes none")
                                   for key in config])
    return SdkRouter()
