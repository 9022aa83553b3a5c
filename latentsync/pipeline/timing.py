"""Seconds per stage of a run (`StageClock`), optionally waiting for the device at both ends of each stage."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch


def device_sync(device: torch.device | str) -> Callable[[], None] | None:
    """What waits for the work queued on ``device`` (CUDA); None where calls return when the work is done (CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


class StageClock:
    """Wall-clock and process-CPU seconds per stage. Sections nest: an inner section's time is not counted in the
    outer one, so the stages add up to the time measured.

    Args:
        sync: called at both ends of every section (`device_sync`), so work queued on an accelerator counts for
            the stage that queued it; None does not wait (the stage that next reads a result pays for it).

    Attributes:
        seconds: wall-clock seconds per stage.
        cpu_seconds: process CPU seconds per stage (all threads of the process, also those of other stages).
    """

    _END = object()

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self._inner: list[list[float]] = []  # per open section: [wall, cpu] seconds of sections nested in it

    @contextmanager
    def section(self, stage: str):
        if self.sync is not None:
            self.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        self._inner.append([0.0, 0.0])
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            inner, inner_cpu = self._inner.pop()
            self.seconds[stage] += elapsed - inner
            self.cpu_seconds[stage] += elapsed_cpu - inner_cpu
            if self._inner:
                self._inner[-1][0] += elapsed
                self._inner[-1][1] += elapsed_cpu

    def iterate(self, items: Iterable, stage: str) -> Iterator:
        """``items``, with the time spent producing each one counted for ``stage``."""
        iterator = iter(items)
        while True:
            with self.section(stage):
                item = next(iterator, self._END)
            if item is self._END:
                return
            yield item
