"""Injected clocks for rate-limit tests: the waits a limiter asks for are recorded, nobody waits for real, and the
result does not depend on how busy the machine is."""
from __future__ import annotations

import threading


class FrozenClock:
    """The limiter's clock stands still and its sleep returns at once, recording each wait: the waits are then
    exactly the slots the limiter handed out."""

    def __init__(self):
        self.waits = []
        self._lock = threading.Lock()

    def now(self):
        return 0.0

    def sleep(self, seconds):
        with self._lock:
            self.waits.append(seconds)


class SteppingClock:
    """A clock that moves only when the limiter sleeps (one thread): the simulated time of each request is then
    exactly when the limiter let it go."""

    def __init__(self, start=100.0):
        self.t = start
        self.waits = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.t += seconds
