"""Wall-clock seconds per stage of a run (`StageClock`)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class StageClock:
    """Seconds spent per stage. Sections nest: an inner section's time is not counted in the outer one, so the
    stages add up to the time measured."""

    _END = object()

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open section: seconds spent in sections nested in it

    @contextmanager
    def section(self, stage: str):
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[stage] += elapsed - self._inner.pop()
            if self._inner:
                self._inner[-1] += elapsed

    def iterate(self, items: Iterable, stage: str) -> Iterator:
        """``items``, with the time spent producing each one counted for ``stage``."""
        iterator = iter(items)
        while True:
            with self.section(stage):
                item = next(iterator, self._END)
            if item is self._END:
                return
            yield item

