"""Virtual time: simulated epoch seconds that pass only when the simulation moves them."""

from __future__ import annotations

import threading
from typing import Final

# A fixed, day-aligned epoch (2026-01-01 UTC): windows and looks line up, and runs are reproducible.
EPOCH: Final = 1_767_225_600.0


class VirtualClock:
    """Simulated time in epoch seconds, read by the SDK, its recorder and the controller alike.

    `set` moves to a call's arrival or a tick; `advance` lets an arm function spend its latency; `sleep`
    (the controller loop's Clock protocol) passes the time at once.
    """

    def __init__(self, start: float = EPOCH) -> None:
        self._base = start
        self._offset = 0.0

    def now(self) -> float:
        """The virtual time."""
        return self._base + self._offset

    def set(self, t: float) -> None:
        """Move to `t`."""
        self._base = t
        self._offset = 0.0

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self._offset += seconds

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        """Wait `seconds` of virtual time, which passes at once."""
        self.advance(seconds)
