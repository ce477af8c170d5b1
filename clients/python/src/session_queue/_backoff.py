"""Exponential backoff with jitter: each failure doubles the wait (from ``base`` up to
``cap``), a success resets it, and every wait is drawn between half and all of its
nominal length, so many clients refused at once do not come back in step."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float, cap: float) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0

    def nominal(self) -> float:
        """The nominal wait after the failures so far (before jitter)."""
        return float(min(self.cap, self.base * (2 ** min(self.failures, 30))))

    def fail(self) -> float:
        """Records one more failure; returns how many seconds to wait."""
        nominal = self.nominal()
        self.failures += 1
        return random.uniform(nominal / 2, nominal)

    def reset(self) -> None:
        self.failures = 0
